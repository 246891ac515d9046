//! The relay: bytes both ways at once in the one worker thread that owns the connection, either
//! side plain or TLS (TCP mode, TCP over TLS, and HTTP upgrades after the `101`), half-close
//! passed on, an idle timeout shared by both directions, and byte counts.
//!
//! The classic thread-pool proxy loop: both sockets are made non-blocking and the worker blocks
//! in `poll(2)` on the two of them, then moves whatever is ready. Bytes read are sent on at once;
//! what the destination cannot take yet waits in that direction's own buffer, and the direction
//! stops asking for input and waits for `POLLOUT` instead, so a slow reader on one side holds
//! back only the bytes headed its way, never the other direction. When one side's input ends,
//! the other side is told (`close_notify` for a TLS side, then `shutdown(Write)`) and the other
//! direction carries on; the relay ends when both directions are done, on the first error
//! (naming the side it happened on), or when neither direction moved a byte for the idle
//! timeout (the `poll` timeout). Asked to ([`resume`] with a [`ParkWhen`]), a relay that moved
//! nothing for a while returns its [`Progress`] instead, so its connection can wait in the
//! parker without a worker: after `PARK_AFTER`, or after [`PRESSED_AFTER`] while connections
//! wait for a worker. What it holds for a destination with no room (a client that reads slowly,
//! a backend that stopped reading) goes with it, and the parker waits for that room (such a
//! relay parks after [`HELD_PRESSED_AFTER`] while workers are wanted). The bytes sent are told
//! to the caller's tally as they go (every [`TALLY_BYTES`] or [`TALLY_EVERY`], and when the turn
//! ends), so a long relay shows in the counters while it lasts, as HAProxy's do.
//!
//! Bytes first go through a small user-space buffer (see [`Buffers`]: idle and chatty
//! connections keep about one resident page). Between two plain sides, once a read fills it (a
//! bulk flow), that direction switches to `splice(2)` through a pipe of its own: socket -> pipe
//! -> socket in the kernel, no copy to user space, driven by the same `poll`
//! (`SPLICE_F_NONBLOCK`). Pipes are made only then, so idle and chatty connections keep costing
//! two descriptors; if a pipe cannot be made (descriptor limit), copying goes on. A TLS side
//! holds what `poll` cannot see, records not yet sent and plaintext not yet read: records are
//! flushed every turn and waited on with `POLLOUT`, and a direction cut short by the round limit
//! is tried again at once, without waiting. Quiet for [`TRIM_AFTER`], any relay gives its buffer
//! and its deep stack pages back.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use rustls::Connection;

use self::flow::{Flow, Wait};
use self::progress::Told;
pub use self::progress::{Backlog, Interest, Progress, RelayOutcome, Relayed};
use self::side::Side;
use crate::config::as_limit;
use crate::error::{Cause, Failure, Party, Phase};
use crate::threads::stack::TRIM_AFTER;

/// User-space relay buffer per direction; a read that fills it switches to splicing.
pub const BUFFER_SIZE: usize = 4 * 1024;

/// The read buffer of a response body's relay ([`Progress::body`]): a body is bulk from its
/// first byte, and most fit in one read, as they did through the HTTP buffer.
pub const BODY_READ: usize = 64 * 1024;

/// Bytes moved (both ways) after which a relay tells its tally, whatever the time.
pub const TALLY_BYTES: u64 = 1 << 20;

/// Time after which a relay that moved bytes tells its tally, however few.
pub const TALLY_EVERY: Duration = Duration::from_secs(1);

/// How long a relay may be quiet before it goes to park while a worker is wanted elsewhere
/// (connections wait for one), as a new connection's first read waits then.
pub const PRESSED_AFTER: Duration = Duration::from_millis(1);

/// The same for a relay that holds bytes for a destination with no room: a bulk flow waits a
/// millisecond on its reader often, and each park would cost it a hand-over; 10 ms is the
/// gate's own mark for a wait on a peer (a slow reader is one).
pub const HELD_PRESSED_AFTER: Duration = Duration::from_millis(10);

/// When a relay that moved nothing returns to park ([`resume`]).
#[derive(Clone, Copy)]
pub struct ParkWhen<'a> {
    /// Quiet this long: the connection waits better in the parker than in a worker.
    pub after: Duration,
    /// Whether a worker is wanted elsewhere, asked each time the relay would wait: then it
    /// parks once quiet for [`PRESSED_AFTER`] ([`HELD_PRESSED_AFTER`] holding bytes).
    pub wanted: &'a dyn Fn() -> bool,
}

/// Where a relay tells the bytes it sent, as `(up, down)` counts since it last told.
pub type Tally<'a> = &'a dyn Fn(u64, u64);

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

/// One end of a relay: its socket, its TLS session if it speaks TLS, and bytes already read
/// from it (into an HTTP buffer) that must go to the other end first.
pub struct End<'a> {
    pub sock: &'a TcpStream,
    pub tls: Option<&'a mut Connection>,
    pub early: &'a [u8],
}

impl<'a> End<'a> {
    /// A plain socket with nothing read from it yet.
    pub fn plain(sock: &'a TcpStream) -> End<'a> {
        End { sock, tls: None, early: &[] }
    }
}

/// Relays between `client` and `backend` until both directions end, in the calling thread.
/// `idle` of zero means no idle limit. Both sockets are left non-blocking.
pub fn relay(client: End<'_>, backend: End<'_>, idle: Duration, bufs: &mut Buffers) -> RelayOutcome {
    resume(client, backend, idle, bufs, Progress::start(), None, &|_, _| {}).into_outcome()
}

/// Relays from `from` as [`relay`] does; with `park`, it returns [`Relayed::Quiet`] once
/// nothing moved for as long as that asks and no plaintext waits in rustls to be read, rather
/// than wait on in this thread; bytes and TLS records its destinations have no room for go
/// with it ([`Progress::held`]). The bytes this turn sends are told to `tally`, each once.
pub fn resume(
    client: End<'_>,
    backend: End<'_>,
    idle: Duration,
    bufs: &mut Buffers,
    from: Progress,
    park: Option<ParkWhen<'_>>,
    tally: Tally<'_>,
) -> Relayed {
    for (s, side) in [(client.sock, Party::Client), (backend.sock, Party::Backend)] {
        if let Err(e) = s.set_nonblocking(true) {
            return Relayed::Ended(RelayOutcome {
                up: from.up,
                down: from.down,
                error: Some(failure(side, e)),
            });
        }
    }
    let Buffers { read, up, down } = bufs;
    let held = from.held.map(|b| *b).unwrap_or_default();
    // An ended input was passed on: its EOF read, the other side told.
    let told = (from.down_done, held.client_fin);
    let mut c = Side::new(client.sock, client.tls, Party::Client, from.up_done, told);
    let told = (from.up_done, held.backend_fin);
    let mut b = Side::new(backend.sock, backend.tls, Party::Backend, from.down_done, told);
    read.clear();
    read.reserve_exact(match from.limit {
        Some(_) => BODY_READ,
        None if c.is_plain() && b.is_plain() => BUFFER_SIZE,
        None => side::TLS_CHUNK,
    });
    // Bytes already read from one side travel the other way first, then what a quiet relay
    // held for its destination.
    let mut up = Flow::new(up, client.early, &held.up, from.up, from.up_done);
    let mut down = Flow::new(down, backend.early, &held.down, from.down, from.down_done);
    // A body: what is still to read from the backend, after what was sent and what is held.
    down.left =
        from.limit.map(|l| l.saturating_sub(from.down + (backend.early.len() + held.down.len()) as u64));
    let backend_idle = from.backend_idle.map(as_limit);
    let turn = Turn { idle: as_limit(idle), backend_idle, park, last_moved: from.last_moved };
    let mut told = Told { tally, up: from.up, down: from.down, at: Instant::now() };
    let ended = run(&mut c, &mut b, turn, read, (&mut up, &mut down), &mut told);
    told.tell(&up, &down, Instant::now(), true);
    let (up_total, down_total) = (up.total, down.total);
    match ended {
        Ok(Some(last_moved)) => match backlog(&c, &b, &mut up, &mut down) {
            Ok(held) => Relayed::Quiet(Progress {
                up: up_total,
                down: down_total,
                up_done: up.done,
                down_done: down.done,
                last_moved,
                held,
                limit: from.limit,
                backend_idle: from.backend_idle,
            }),
            // Reading back its own pipe failed: nobody's fault but ours; the client is closed.
            Err(e) => Relayed::Ended(RelayOutcome {
                up: up_total,
                down: down_total,
                error: Some(failure(Party::Client, e)),
            }),
        },
        Ok(None) => Relayed::Ended(RelayOutcome { up: up_total, down: down_total, error: None }),
        Err((side, e)) => {
            Relayed::Ended(RelayOutcome { up: up_total, down: down_total, error: Some(failure(side, e)) })
        }
    }
}

/// What a relay going quiet holds for its destinations, if anything: bytes either direction
/// could not send yet, TLS records, a FIN behind them.
fn backlog(c: &Side, b: &Side, up: &mut Flow, down: &mut Flow) -> io::Result<Option<Box<Backlog>>> {
    if !holding(c, b, up, down) {
        return Ok(None);
    }
    Ok(Some(Box::new(Backlog {
        up: up.hold()?,
        down: down.hold()?,
        client_out: c.wants_out(),
        backend_out: b.wants_out(),
        client_fin: c.fin_owed(),
        backend_fin: b.fin_owed(),
    })))
}

/// Whether the relay holds anything for a destination with no room: bytes either way, or TLS
/// records.
fn holding(c: &Side, b: &Side, up: &Flow, down: &Flow) -> bool {
    up.holds() || down.holds() || c.wants_out() || b.wants_out()
}

/// A relay's end by an error on `side`'s socket, as a [`Failure`].
fn failure(side: Party, e: io::Error) -> Failure {
    let cause = if e.kind() == io::ErrorKind::TimedOut { Cause::Timeout } else { Cause::Io(e) };
    Failure::new(side, Phase::Relay, cause)
}

/// A relay turn's clock: the idle limit, when to go quiet, and the last byte moved.
struct Turn<'a> {
    idle: Option<Duration>,
    /// A body's limit while it waits on the backend alone ([`Progress::backend_idle`]).
    backend_idle: Option<Option<Duration>>,
    park: Option<ParkWhen<'a>>,
    last_moved: Instant,
}

/// The poll loop: waits for what each direction and each side needs, then lets it move what it
/// can. `Ok(Some)` when it went quiet (since that instant), `Ok(None)` when both directions
/// ended.
fn run(
    c: &mut Side,
    b: &mut Side,
    turn: Turn<'_>,
    read: &mut Vec<u8>,
    (up, down): (&mut Flow, &mut Flow),
    told: &mut Told,
) -> Result<Option<Instant>, (Party, io::Error)> {
    let Turn { idle, backend_idle, park, mut last_moved } = turn;
    // Quiet for `TRIM_AFTER`, the worker gives back its buffer and deep stack pages, so
    // thousands of idle connections stay cheap; the next bytes bring them back.
    let mut trimmed = false;
    // A resumed relay was woken by bytes: it goes quiet again counting from now.
    let woke = Instant::now();
    // A TLS side may hold plaintext already (read with the handshake, or before a park): the
    // first turn tries it without waiting.
    // So may a body's backend: its bytes are most likely there already.
    let (mut cut_up, mut cut_down) = (!c.is_plain(), !b.is_plain() || down.left.is_some());
    // Whether a side nothing waits on is still polled for a reset (see below).
    let (mut watch_client, mut watch_backend) = (true, true);
    // Whether this call polled yet: a relay woken by bytes reads them before it may park, however
    // late its worker ran.
    let mut polled = false;
    loop {
        let (up_wait, down_wait) = (up.wait(), down.wait());
        // One clock read for the turn's timers; another after its poll.
        let turn = Instant::now();
        let quiet = turn.duration_since(last_moved);
        let records = c.wants_out() || b.wants_out();
        if up_wait == Wait::Done && down_wait == Wait::Done && !records {
            return Ok(None);
        }
        // Bytes held for a destination with no room (a slow reader) go with a quiet relay into
        // the parker, which waits for that room; input a TLS side holds must be read first.
        let settled = !cut_up && !cut_down;
        // Counted from the last byte moved or the wake-up.
        let parks_in = park.map(|p| {
            let pressed = if holding(c, b, up, down) { HELD_PRESSED_AFTER } else { PRESSED_AFTER };
            let after = if settled && (p.wanted)() { pressed } else { p.after };
            after.saturating_sub(turn.duration_since(last_moved.max(woke)))
        });
        if settled && polled && parks_in.is_some_and(|left| left.is_zero()) {
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
        if c.wants_out() {
            on_client |= PollFlags::OUT;
        }
        if b.wants_out() {
            on_backend |= PollFlags::OUT;
        }
        let mut timeout: Option<Duration> = None;
        let mut sooner = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
        if cut_up || cut_down {
            sooner(Duration::ZERO);
        }
        let limit = match backend_idle {
            Some(limit) if up_wait == Wait::Done && down_wait == Wait::Read && !records => limit,
            _ => idle,
        };
        if let Some(idle) = limit {
            let left = idle.saturating_sub(quiet);
            if left.is_zero() {
                // POLLOUT waits for a third of the send buffer to be free, which a client that
                // reads slowly may take longer than this to free while it does read: what a
                // write takes now is progress (nginx's send_timeout counts any).
                let mut moved = false;
                if up_wait == Wait::Write {
                    moved |= up.advance(c, b, read)?.moved;
                }
                if down_wait == Wait::Write {
                    moved |= down.advance(b, c, read)?.moved;
                }
                if !moved {
                    return Err(idle_timeout(up_wait, down_wait));
                }
                last_moved = Instant::now();
                continue;
            }
            sooner(left);
        }
        if !trimmed {
            sooner(TRIM_AFTER.saturating_sub(quiet));
        }
        if let Some(left) = parks_in.filter(|_| settled) {
            sooner(left.max(Duration::from_millis(1)));
        }
        // A relay that cannot park still tells what it moved within a second.
        if let Some(left) = told.due_in(up, down, turn) {
            sooner(left);
        }
        let timeout = timeout.map(crate::net::timespec);
        // While a direction flows, a side nothing waits on now is still watched for a reset
        // (POLLERR and POLLHUP come unasked): a client resetting while its upload waits on a
        // backend that stopped reading held its worker until `idle_ms`.
        let live = up_wait != Wait::Done || down_wait != Wait::Done;
        let watch = (live && watch_client, live && watch_backend);
        let (client_ready, backend_ready) =
            match poll_two(c.sock, on_client, b.sock, on_backend, watch, timeout.as_ref()) {
                // Nothing to wait on: both directions ended (a cut one has input to wait on).
                None => return Ok(None),
                // poll itself failing (ENOMEM) is nobody's fault but ours; the client is closed.
                Some(result) => result.map_err(|e| (Party::Client, e))?,
            };
        polled = true;
        for (sock, on, ready, party, watched) in [
            (c.sock, on_client, client_ready, Party::Client, &mut watch_client),
            (b.sock, on_backend, backend_ready, Party::Backend, &mut watch_backend),
        ] {
            if on.is_empty() && ready {
                match sock.take_error() {
                    Ok(Some(e)) => return Err((party, e)),
                    // Shut both ways cleanly (the peer's FIN after ours): nothing to watch for.
                    _ => *watched = false,
                }
            }
        }
        let ready = |wait, from_ready, to_ready| match wait {
            Wait::Read => from_ready,
            Wait::Write => to_ready,
            Wait::Done => false,
        };
        let mut moved = false;
        if cut_up || ready(up_wait, client_ready, backend_ready) {
            let a = up.advance(c, b, read)?;
            (moved, cut_up) = (moved | a.moved, a.cut);
        }
        if cut_down || ready(down_wait, backend_ready, client_ready) {
            let a = down.advance(b, c, read)?;
            (moved, cut_down) = (moved | a.moved, a.cut);
        }
        // Records a read produced (or a close) go out now; what the socket won't take waits
        // for POLLOUT.
        c.flush().map_err(|e| (Party::Client, e))?;
        b.flush().map_err(|e| (Party::Backend, e))?;
        let now = Instant::now();
        told.tell(up, down, now, false);
        if moved {
            last_moved = now;
            trimmed = false;
        } else if !trimmed && now.duration_since(last_moved) >= TRIM_AFTER {
            *read = Vec::new();
            crate::threads::stack::give_back();
            trimmed = true;
        }
    }
}

/// The idle timeout error. A direction stuck on a destination that stopped reading names that
/// destination, as does one waiting on a backend whose client is done (a response body's
/// rest); a connection where both sides are merely quiet is put down to the client.
fn idle_timeout(up: Wait, down: Wait) -> (Party, io::Error) {
    let side = match (up, down) {
        (Wait::Write, _) | (Wait::Done, Wait::Read) => Party::Backend,
        _ => Party::Client,
    };
    (side, io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
}

/// Waits until `a` or `b` is ready for what is asked of it (`on_a`, `on_b`) or `timeout`
/// passes; returns which of them reported an event (POLLERR and POLLHUP included: the next
/// call on it will not block), nothing on a signal. A socket nothing waits on is polled for
/// those two alone when `watch` says so (`(a, b)`); else it is left out: with both halves
/// shut it reports POLLHUP for ever, which would spin the caller's loop. `None` when neither
/// is polled.
fn poll_two(
    a: &TcpStream,
    on_a: PollFlags,
    b: &TcpStream,
    on_b: PollFlags,
    watch: (bool, bool),
    timeout: Option<&Timespec>,
) -> Option<io::Result<(bool, bool)>> {
    let mut fds = [PollFd::new(a, on_a), PollFd::new(b, on_b)];
    let range = match (on_a.is_empty() && !watch.0, on_b.is_empty() && !watch.1) {
        (true, true) => return None,
        (false, true) => 0..1,
        (true, false) => 1..2,
        (false, false) => 0..2,
    };
    Some(match crate::threads::gate::waiting(|| poll(&mut fds[range.clone()], timeout)) {
        Ok(_) => Ok((
            range.start == 0 && !fds[0].revents().is_empty(),
            range.end == 2 && !fds[1].revents().is_empty(),
        )),
        Err(Errno::INTR) => Ok((false, false)),
        Err(e) => Err(e.into()),
    })
}

mod flow;
mod progress;
mod side;

#[cfg(test)]
mod tests;
