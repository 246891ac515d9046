//! The TCP relay: bytes both ways at once in the one worker thread that owns the connection,
//! half-close passed on, an idle timeout shared by both directions, and byte counts.
//!
//! The classic thread-pool proxy loop: both sockets are made non-blocking and the worker blocks
//! in `poll(2)` on the two of them, then moves whatever is ready. Bytes read are sent on at once;
//! what the destination cannot take yet waits in that direction's own buffer, and the direction
//! stops asking for input and waits for `POLLOUT` instead, so a slow reader on one side holds
//! back only the bytes headed its way, never the other direction. When one side sends EOF,
//! `shutdown(Write)` passes it to the other side and the other direction carries on; the relay
//! ends when both directions are done, on the first error (naming the side it happened on), or
//! when neither direction moved a byte for the idle timeout (the `poll` timeout).
//!
//! Bytes first go through a small user-space buffer (see [`Buffers`]: idle and chatty
//! connections keep about one resident page). Once a read fills it (a bulk flow), that
//! direction switches to `splice(2)` through a pipe of its own: socket -> pipe -> socket in the
//! kernel, no copy to user space, driven by the same `poll` (`SPLICE_F_NONBLOCK`). Bytes left in
//! the pipe because the destination was full are sent before anything more is read. Pipes are
//! made only then, so idle and chatty connections keep costing two descriptors; if a pipe cannot
//! be made (descriptor limit), copying goes on.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};

use crate::config::as_limit;
use crate::error::Party;
use crate::stack::TRIM_AFTER;

/// User-space relay buffer per direction; a read that fills it switches to splicing.
pub const BUFFER_SIZE: usize = 4 * 1024;

/// Pipe capacity asked for when splicing (the kernel may give less).
const PIPE_SIZE: usize = 256 * 1024;

/// Reads (or splices) per direction per wakeup: a bulk flow one way takes turns with the other.
const ROUNDS: usize = 8;

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

/// Relays between `client` and `backend` until both directions end, in the calling thread.
/// `idle` of zero means no idle limit. Both sockets are left non-blocking.
pub fn relay(client: &TcpStream, backend: &TcpStream, idle: Duration, bufs: &mut Buffers) -> RelayOutcome {
    for (s, side) in [(client, Party::Client), (backend, Party::Backend)] {
        if let Err(e) = s.set_nonblocking(true) {
            return RelayOutcome { up: 0, down: 0, error: Some((side, e)) };
        }
    }
    let Buffers { read, up, down } = bufs;
    read.clear();
    read.reserve_exact(BUFFER_SIZE);
    let mut up = Flow::new(client, backend, Party::Client, up);
    let mut down = Flow::new(backend, client, Party::Backend, down);
    let error = run(client, backend, as_limit(idle), read, &mut up, &mut down).err();
    RelayOutcome { up: up.total, down: down.total, error }
}

/// The poll loop: waits for what each direction needs, then lets it move what it can.
fn run(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Option<Duration>,
    read: &mut Vec<u8>,
    up: &mut Flow,
    down: &mut Flow,
) -> Result<(), (Party, io::Error)> {
    let mut last_moved = Instant::now();
    // Quiet for `TRIM_AFTER`, the worker gives back its buffer and deep stack pages, so
    // thousands of idle connections stay cheap; the next bytes bring them back.
    let mut trimmed = false;
    loop {
        let (up_wait, down_wait) = (up.wait(), down.wait());
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
        let left = match idle {
            None => None,
            Some(idle) => {
                let left = idle.saturating_sub(last_moved.elapsed());
                if left.is_zero() {
                    return Err(idle_timeout(up_wait, down_wait));
                }
                Some(left)
            }
        };
        let trim_in = TRIM_AFTER.saturating_sub(last_moved.elapsed());
        let timeout = match (trimmed, left) {
            (true, left) => left,
            (false, None) => Some(trim_in),
            (false, Some(left)) => Some(left.min(trim_in)),
        }
        .map(timespec);
        let Some(polled) = poll_two(client, on_client, backend, on_backend, timeout.as_ref()) else {
            return Ok(());
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
            crate::stack::give_back();
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

/// What a direction needs next from `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing pending: input from the source.
    Read,
    /// Bytes pending (in the buffer or the pipe): room in the destination.
    Write,
    /// EOF passed on; nothing more to do.
    Done,
}

/// One direction of the relay.
struct Flow<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    from_side: Party,
    /// `pending[start..]` was read but the destination could not take it yet.
    pending: &'a mut Vec<u8>,
    start: usize,
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written.
    piped: usize,
    splice_failed: bool,
    done: bool,
    /// Bytes written to the destination.
    total: u64,
}

impl<'a> Flow<'a> {
    fn new(from: &'a TcpStream, to: &'a TcpStream, from_side: Party, pending: &'a mut Vec<u8>) -> Flow<'a> {
        pending.clear();
        Flow {
            from,
            to,
            from_side,
            pending,
            start: 0,
            pipe: None,
            piped: 0,
            splice_failed: false,
            done: false,
            total: 0,
        }
    }

    fn to_side(&self) -> Party {
        if self.from_side == Party::Client {
            Party::Backend
        } else {
            Party::Client
        }
    }

    fn wait(&self) -> Wait {
        if self.done {
            Wait::Done
        } else if self.start < self.pending.len() || self.piped > 0 {
            Wait::Write
        } else {
            Wait::Read
        }
    }

    /// Moves what can be moved without blocking, in at most [`ROUNDS`] reads. Returns whether
    /// any byte moved.
    fn advance(&mut self, read: &mut Vec<u8>) -> Result<bool, (Party, io::Error)> {
        let mut moved = false;
        for _ in 0..ROUNDS {
            // Pending bytes go first, and nothing more is read until they are gone.
            if !self.flush(&mut moved)? || !self.fill(read, &mut moved)? {
                break;
            }
        }
        Ok(moved)
    }

    /// Writes the pending bytes. `Ok(false)` when the destination is full.
    fn flush(&mut self, moved: &mut bool) -> Result<bool, (Party, io::Error)> {
        if self.start < self.pending.len() {
            let sent = send(self.to, self.to_side(), &self.pending[self.start..])?;
            self.start += sent;
            self.total += sent as u64;
            *moved |= sent > 0;
            if self.start < self.pending.len() {
                return Ok(false);
            }
            self.pending.clear();
            self.start = 0;
        }
        let Some(pipe) = &self.pipe else { return Ok(true) };
        while self.piped > 0 {
            match splice(&pipe.read, None, self.to, None, self.piped, FLAGS) {
                Ok(0) => return Err((self.to_side(), io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.piped -= n;
                    self.total += n as u64;
                    *moved = true;
                }
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err((self.to_side(), e.into())),
            }
        }
        Ok(true)
    }

    /// Reads what the source has (nothing is pending) and sends it on as far as the
    /// destination takes it; the rest becomes pending. `Ok(false)` when the source has nothing
    /// now, at EOF (passed on to the destination at once), or when the destination is full.
    fn fill(&mut self, read: &mut Vec<u8>, moved: &mut bool) -> Result<bool, (Party, io::Error)> {
        // The pipe is empty here: EAGAIN means the socket has nothing.
        read.clear();
        if read.capacity() == 0 {
            // Given back while the connection idled.
            read.reserve_exact(BUFFER_SIZE);
        }
        let got = match &self.pipe {
            Some(pipe) => splice(self.from, None, &pipe.write, None, PIPE_SIZE, FLAGS),
            None => rustix::io::read(self.from, spare_capacity(read)),
        };
        let n = match got {
            Ok(0) => {
                // The peer may already be gone (ENOTCONN); the other direction finds out.
                let _ = self.to.shutdown(Shutdown::Write);
                self.done = true;
                return Ok(false);
            }
            Ok(n) => n,
            Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => return Ok(true),
            Err(e) => return Err((self.from_side, e.into())),
        };
        *moved = true;
        log::trace!("relay: read {n} bytes from {:?}", self.from_side);
        if self.pipe.is_some() {
            self.piped = n;
            return Ok(true);
        }
        let sent = send(self.to, self.to_side(), &read[..n])?;
        self.total += sent as u64;
        if sent < n {
            // Kept at most a buffer's worth: nothing more is read until it is gone.
            self.pending.reserve_exact(BUFFER_SIZE);
            self.pending.extend_from_slice(&read[sent..n]);
        }
        if n == read.capacity() && !self.splice_failed {
            match Pipe::new() {
                Ok(p) => self.pipe = Some(p),
                Err(e) => {
                    log::debug!("relay: no pipe for splicing ({e}); copying instead");
                    self.splice_failed = true;
                }
            }
        }
        Ok(sent == n)
    }
}

/// Writes as much of `bytes` to `to` as it takes without blocking; returns how much that was.
fn send(mut to: &TcpStream, to_side: Party, bytes: &[u8]) -> Result<usize, (Party, io::Error)> {
    let mut sent = 0;
    while sent < bytes.len() {
        match to.write(&bytes[sent..]) {
            Ok(0) => return Err((to_side, io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((to_side, e)),
        }
    }
    Ok(sent)
}

/// Splice flags: move pages rather than copy where the kernel can, and never block (the pipe
/// side; the socket side is non-blocking already), since `poll` does the waiting.
const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// A pipe for splicing one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // A larger pipe moves more per call; the default (64 KiB) works too.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Pipe { read, write })
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
