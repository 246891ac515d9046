//! The TCP relay: bytes both ways at once in the one worker thread that owns the connection,
//! half-close passed on, an idle timeout shared by both directions, and byte counts. With TLS
//! on either side the relay is [`tunnel`].
//!
//! The classic thread-pool proxy loop: both sockets are made non-blocking and the worker blocks
//! in `poll(2)` on the two of them, then moves whatever is ready. Bytes read are sent on at once;
//! what the destination cannot take yet waits in that direction's own buffer, and the direction
//! stops asking for input and waits for `POLLOUT` instead, so a slow reader on one side holds
//! back only the bytes headed its way, never the other direction. When one side sends EOF,
//! `shutdown(Write)` passes it to the other side and the other direction carries on; the relay
//! ends when both directions are done, on the first error (naming the side it happened on), or
//! when neither direction moved a byte for the idle timeout (the `poll` timeout). Asked to
//! ([`resume`] with `park_after`), a relay that moved nothing for that long with nothing pending
//! returns its [`Progress`] instead, so its connection can wait in the parker without a worker.
//!
//! Bytes first go through a small user-space buffer (see [`Buffers`]: idle and chatty
//! connections keep about one resident page). Once a read fills it (a bulk flow), that
//! direction switches to `splice(2)` through a pipe of its own: socket -> pipe -> socket in the
//! kernel, no copy to user space, driven by the same `poll` (`SPLICE_F_NONBLOCK`). Bytes left in
//! the pipe because the destination was full are sent before anything more is read. Pipes are
//! made only then, so idle and chatty connections keep costing two descriptors; if a pipe cannot
//! be made (descriptor limit), copying goes on.

pub mod tunnel;

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use self::flow::{Flow, Wait};
use crate::config::as_limit;
use crate::error::Party;
use crate::threads::stack::TRIM_AFTER;

/// User-space relay buffer per direction; a read that fills it switches to splicing.
pub const BUFFER_SIZE: usize = 4 * 1024;

/// A worker's reusable relay buffers, kept across connections: one both directions read into,
/// and one per direction for bytes its destination could not take yet. Reads go into spare
/// capacity, never zeroed, and a direction's own buffer is filled only when its destination
/// pushes back, so a connection that moves lines keeps about one resident page, not three.
#[derive(Debug, Default)]
pub struct Buffers {
    read: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
}

/// How one relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// The first error in either direction, with whose socket it was on.
    pub error: Option<(Party, io::Error)>,
}

/// How far a relay (or a tunnel) got: its counts, which directions have ended, and when a byte
/// last moved. One that went quiet hands this back and, once its connection has waited in the
/// parker, resumes from it.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// The client's input ended (its EOF passed on to the backend).
    pub up_done: bool,
    /// The backend's input ended (passed on to the client).
    pub down_done: bool,
    /// When a byte last moved either way: the idle limit counts from it.
    pub last_moved: Instant,
}

impl Progress {
    /// A relay about to start.
    pub fn start() -> Progress {
        Progress { up: 0, down: 0, up_done: false, down_done: false, last_moved: Instant::now() }
    }

    /// When `idle` (zero: none) without a byte ends the relay.
    pub fn deadline(&self, idle: Duration) -> Option<Instant> {
        as_limit(idle).map(|idle| self.last_moved + idle)
    }
}

/// How a turn of a relay (or tunnel) ended.
#[derive(Debug)]
pub enum Relayed {
    /// Both directions ended, an error, or the idle limit.
    Ended(RelayOutcome),
    /// No byte moved for the `park_after` asked and none waits to be written: the connection
    /// can wait in the parker and resume from here.
    Quiet(Progress),
}

impl Relayed {
    /// The outcome of a relay run without `park_after`, which never goes quiet (a quiet one
    /// would read as ended without error).
    pub fn into_outcome(self) -> RelayOutcome {
        match self {
            Relayed::Ended(out) => out,
            Relayed::Quiet(p) => RelayOutcome { up: p.up, down: p.down, error: None },
        }
    }
}

/// Relays between `client` and `backend` until both directions end, in the calling thread.
/// `idle` of zero means no idle limit. Both sockets are left non-blocking.
pub fn relay(client: &TcpStream, backend: &TcpStream, idle: Duration, bufs: &mut Buffers) -> RelayOutcome {
    resume(client, backend, idle, bufs, Progress::start(), None).into_outcome()
}

/// Relays from `from` as [`relay`] does; with `park_after`, it returns [`Relayed::Quiet`] once
/// nothing moved for that long and nothing is pending, rather than wait on in this thread.
pub fn resume(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    bufs: &mut Buffers,
    from: Progress,
    park_after: Option<Duration>,
) -> Relayed {
    for (s, side) in [(client, Party::Client), (backend, Party::Backend)] {
        if let Err(e) = s.set_nonblocking(true) {
            return Relayed::Ended(RelayOutcome { up: from.up, down: from.down, error: Some((side, e)) });
        }
    }
    let Buffers { read, up, down } = bufs;
    read.clear();
    read.reserve_exact(BUFFER_SIZE);
    let mut up = Flow::new(client, backend, Party::Client, up);
    let mut down = Flow::new(backend, client, Party::Backend, down);
    (up.total, up.done, down.total, down.done) = (from.up, from.up_done, from.down, from.down_done);
    let turn = Turn { idle: as_limit(idle), park_after, last_moved: from.last_moved };
    let ended = run(client, backend, turn, read, &mut up, &mut down);
    let (up_total, down_total) = (up.total, down.total);
    match ended {
        Ok(Some(last_moved)) => Relayed::Quiet(Progress {
            up: up_total,
            down: down_total,
            up_done: up.done,
            down_done: down.done,
            last_moved,
        }),
        Ok(None) => Relayed::Ended(RelayOutcome { up: up_total, down: down_total, error: None }),
        Err(e) => Relayed::Ended(RelayOutcome { up: up_total, down: down_total, error: Some(e) }),
    }
}

/// A relay turn's clock: the idle limit, when to go quiet, and the last byte moved.
struct Turn {
    idle: Option<Duration>,
    park_after: Option<Duration>,
    last_moved: Instant,
}

/// The poll loop: waits for what each direction needs, then lets it move what it can. `Ok(Some)`
/// when it went quiet (since that instant), `Ok(None)` when both directions ended.
fn run(
    client: &TcpStream,
    backend: &TcpStream,
    turn: Turn,
    read: &mut Vec<u8>,
    up: &mut Flow,
    down: &mut Flow,
) -> Result<Option<Instant>, (Party, io::Error)> {
    let Turn { idle, park_after, mut last_moved } = turn;
    // Quiet for `TRIM_AFTER`, the worker gives back its buffer and deep stack pages, so
    // thousands of idle connections stay cheap; the next bytes bring them back.
    let mut trimmed = false;
    // A resumed relay was woken by bytes: it goes quiet again counting from now.
    let woke = Instant::now();
    loop {
        let (up_wait, down_wait) = (up.wait(), down.wait());
        let quiet = last_moved.elapsed();
        let parks_in = park_after.map(|after| after.saturating_sub(last_moved.max(woke).elapsed()));
        let pending = up_wait == Wait::Write || down_wait == Wait::Write;
        let both_done = up_wait == Wait::Done && down_wait == Wait::Done;
        if parks_in.is_some_and(|left| left.is_zero()) && !pending && !both_done {
            return Ok(Some(last_moved));
        }
        // up reads the client and writes the backend; down the other way round.
        let mut on_client = PollFlags::empty();
        let mut on_backend = PollFlags::empty();
        match up_wait {
            Wait::Read => on_client |= PollFlags::IN,
            Wait::Write => on_backend |= PollFlags::OUT,
            Wait::Done => {}
        }
        match down_wait {
            Wait::Read => on_backend |= PollFlags::IN,
            Wait::Write => on_client |= PollFlags::OUT,
            Wait::Done => {}
        }
        let mut timeout: Option<Duration> = None;
        let mut sooner = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
        if let Some(idle) = idle {
            let left = idle.saturating_sub(quiet);
            if left.is_zero() {
                return Err(idle_timeout(up_wait, down_wait));
            }
            sooner(left);
        }
        if !trimmed {
            sooner(TRIM_AFTER.saturating_sub(quiet));
        }
        if let Some(left) = parks_in.filter(|_| !pending) {
            sooner(left.max(Duration::from_millis(1)));
        }
        let timeout = timeout.map(timespec);
        let Some(polled) = poll_two(client, on_client, backend, on_backend, timeout.as_ref()) else {
            return Ok(None);
        };
        // poll itself failing (ENOMEM) is nobody's fault but ours; the client is closed.
        let (client_ready, backend_ready) = polled.map_err(|e| (Party::Client, e))?;
        let ready = |wait, from_ready, to_ready| match wait {
            Wait::Read => from_ready,
            Wait::Write => to_ready,
            Wait::Done => false,
        };
        let mut moved = false;
        if ready(up_wait, client_ready, backend_ready) {
            moved |= up.advance(read)?;
        }
        if ready(down_wait, backend_ready, client_ready) {
            moved |= down.advance(read)?;
        }
        if moved {
            last_moved = Instant::now();
            trimmed = false;
        } else if !trimmed && last_moved.elapsed() >= TRIM_AFTER {
            *read = Vec::new();
            crate::threads::stack::give_back();
            trimmed = true;
        }
    }
}

/// The idle timeout error. A direction stuck on a destination that stopped reading names that
/// destination; a connection where both sides are merely quiet is put down to the client.
fn idle_timeout(up: Wait, down: Wait) -> (Party, io::Error) {
    let side = match (up, down) {
        (Wait::Write, _) => Party::Backend,
        _ => Party::Client,
    };
    (side, io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
}

/// `d` as poll's timeout.
pub(crate) fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: d.subsec_nanos().into() }
}

/// Waits until `a` or `b` is ready for what is asked of it (`on_a`, `on_b`) or `timeout`
/// passes; returns which of them reported an event (POLLERR and POLLHUP included: the next
/// call on it will not block), nothing on a signal. A socket nothing waits on is left out:
/// with both halves shut it reports POLLHUP for ever, which would spin the caller's loop.
/// `None` when neither is waited on.
pub(crate) fn poll_two(
    a: &TcpStream,
    on_a: PollFlags,
    b: &TcpStream,
    on_b: PollFlags,
    timeout: Option<&Timespec>,
) -> Option<io::Result<(bool, bool)>> {
    let mut fds = [PollFd::new(a, on_a), PollFd::new(b, on_b)];
    let range = match (on_a.is_empty(), on_b.is_empty()) {
        (true, true) => return None,
        (false, true) => 0..1,
        (true, false) => 1..2,
        (false, false) => 0..2,
    };
    Some(match poll(&mut fds[range.clone()], timeout) {
        Ok(_) => Ok((
            range.start == 0 && !fds[0].revents().is_empty(),
            range.end == 2 && !fds[1].revents().is_empty(),
        )),
        Err(Errno::INTR) => Ok((false, false)),
        Err(e) => Err(e.into()),
    })
}

mod flow;

#[cfg(test)]
mod tests;
