//! The TCP relay: bytes both ways at once with blocking reads and writes, half-close passed on,
//! an idle timeout shared by both directions, and byte counts.
//!
//! Blocking I/O cannot wait on two sockets in one thread, so each connection uses two threads:
//! the worker that owns it pumps client -> backend, and a thread from the paired helper pool
//! pumps backend -> client. When one side sends EOF, `shutdown(Write)` passes it to the other
//! side and the other direction carries on; the relay ends when both directions are done.
//! When a direction fails (reset, timeout) both sockets are shut down so the other wakes at once.
//!
//! Bytes first go through a small user-space buffer. Once a read fills it (a bulk flow), that
//! direction switches to `splice(2)` through a pipe of its own: socket -> pipe -> socket in the
//! kernel, no copy to user space. Pipes are made only then, so idle and chatty connections keep
//! costing two descriptors; if a pipe cannot be made (descriptor limit), copying goes on.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::as_limit;

/// User-space relay buffer per direction; a read that fills it switches to splicing.
pub const BUFFER_SIZE: usize = 4 * 1024;

/// Pipe capacity asked for when splicing (the kernel may give less).
const PIPE_SIZE: usize = 256 * 1024;

/// A job for the helper pool: runs one backend -> client pump.
pub type HelperJob = Box<dyn FnOnce(&mut Vec<u8>) + Send>;

/// How one relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// The first error in either direction, with which side it was on.
    pub error: Option<(Side, io::Error)>,
}

/// Which socket an error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// The time of the last byte moved in either direction, shared by both pumps.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Relays between `client` and `backend` until both directions end. The backend -> client
/// direction runs on a helper thread received through `helpers`; `buf` is the calling worker's
/// reusable buffer.
pub fn relay(
    client: &Arc<TcpStream>,
    backend: &Arc<TcpStream>,
    idle: Duration,
    helpers: &Sender<HelperJob>,
    buf: &mut Vec<u8>,
) -> RelayOutcome {
    let activity = Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) });
    // Shared, not `try_clone`d: a relayed connection costs two descriptors, not four.
    let (client2, backend2) = (client.clone(), backend.clone());
    for s in [client, backend] {
        let _ = s.set_read_timeout(as_limit(idle));
        let _ = s.set_write_timeout(as_limit(idle));
    }
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let down_activity = activity.clone();
    let job: HelperJob = Box::new(move |buf: &mut Vec<u8>| {
        let result = pump(&backend2, &client2, Side::Backend, &down_activity, idle, buf);
        drop((backend2, client2));
        let _ = done_tx.send(result);
    });
    if let Err(e) = helpers.send(job) {
        drop(e);
        let err = io::Error::other("relay helper pool is shut down");
        return RelayOutcome { up: 0, down: 0, error: Some((Side::Client, err)) };
    }
    let up = pump(client, backend, Side::Client, &activity, idle, buf);
    let down = done_rx
        .recv()
        .unwrap_or_else(|_| Err((0, Side::Backend, io::Error::other("relay helper ended without a result"))));
    let mut error = None;
    let mut count = |r: Result<u64, (u64, Side, io::Error)>| match r {
        Ok(n) => n,
        Err((n, side, e)) => {
            error.get_or_insert((side, e));
            n
        }
    };
    let up = count(up);
    let down = count(down);
    RelayOutcome { up, down, error }
}

/// Copies `from` -> `to` until EOF (then half-closes `to`) or an error (then shuts both down).
/// Returns the bytes copied, and on error also which side failed.
fn pump(
    from: &TcpStream,
    to: &TcpStream,
    from_side: Side,
    activity: &Activity,
    idle: Duration,
    buf: &mut Vec<u8>,
) -> Result<u64, (u64, Side, io::Error)> {
    let to_side = if from_side == Side::Client { Side::Backend } else { Side::Client };
    if buf.len() < BUFFER_SIZE {
        buf.resize(BUFFER_SIZE, 0);
    }
    let mut total = 0u64;
    let mut shortened = false;
    let mut pipe: Option<Pipe> = None;
    let mut splice_failed = false;
    let fail = |total, side, e: io::Error| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        Err((total, side, e))
    };
    loop {
        if let Some(p) = &pipe {
            match p.splice(from, to, activity) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return Ok(total);
                }
                Ok(n) => {
                    total += n as u64;
                    restore(from, idle, &mut shortened);
                    continue;
                }
                Err(SpliceError::Read(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(SpliceError::Read(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if let Err(e) = timed_out(from, activity, idle, &mut shortened) {
                        return fail(total, from_side, e);
                    }
                    continue;
                }
                Err(SpliceError::Read(e)) => return fail(total, from_side, e),
                Err(SpliceError::Write(e)) => return fail(total, to_side, e),
            }
        }
        let n = match (&mut &*from).read(buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if let Err(e) = timed_out(from, activity, idle, &mut shortened) {
                    return fail(total, from_side, e);
                }
                continue;
            }
            Err(e) => return fail(total, from_side, e),
        };
        restore(from, idle, &mut shortened);
        activity.touch();
        if let Err(e) = (&mut &*to).write_all(&buf[..n]) {
            return fail(total, to_side, e);
        }
        total += n as u64;
        log::trace!("relayed {n} bytes from {from_side:?}");
        if n == buf.len() && pipe.is_none() && !splice_failed {
            match Pipe::new() {
                Ok(p) => pipe = Some(p),
                Err(e) => {
                    log::debug!("relay: no pipe for splicing ({e}); copying instead");
                    splice_failed = true;
                }
            }
        }
    }
}

/// A read on `from` timed out. The timeout is per socket, so the connection is idle only if the
/// other direction was quiet too: then this is the idle timeout (an error). Otherwise the read
/// waits again for what is left of `idle`.
fn timed_out(from: &TcpStream, activity: &Activity, idle: Duration, shortened: &mut bool) -> io::Result<()> {
    let quiet = activity.idle_for();
    if quiet >= idle {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
    }
    let _ = from.set_read_timeout(Some(idle - quiet));
    *shortened = true;
    Ok(())
}

/// Puts the full idle timeout back after [`timed_out`] shortened it.
fn restore(from: &TcpStream, idle: Duration, shortened: &mut bool) {
    if *shortened {
        let _ = from.set_read_timeout(as_limit(idle));
        *shortened = false;
    }
}

/// A pipe for splicing one direction.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

enum SpliceError {
    Read(io::Error),
    Write(io::Error),
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // A larger pipe moves more per call; the default (64 KiB) works too.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Pipe { read, write })
    }

    /// Moves what is available from `from` into the pipe and all of it on to `to`. `Ok(0)` at
    /// end of stream. Honours the sockets' timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
    fn splice(&self, from: &TcpStream, to: &TcpStream, activity: &Activity) -> Result<usize, SpliceError> {
        use rustix::pipe::{splice, SpliceFlags};
        let n = splice(from, None, &self.write, None, PIPE_SIZE, SpliceFlags::MOVE)
            .map_err(|e| SpliceError::Read(e.into()))?;
        if n > 0 {
            activity.touch();
        }
        let mut left = n;
        while left > 0 {
            match splice(&self.read, None, to, None, left, SpliceFlags::MOVE) {
                Ok(0) => return Err(SpliceError::Write(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(m) => left -= m,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(SpliceError::Write(e.into())),
            }
        }
        Ok(n)
    }
}
