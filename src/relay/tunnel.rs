//! A two-way byte tunnel where either side may be TLS: TCP mode over TLS, and HTTP upgrades
//! (WebSocket) after the `101`. Plain on both sides with nothing buffered goes to
//! [`crate::relay`] (splice); otherwise this loop, in the worker that owns the connection.
//!
//! Both sockets are non-blocking and the loop blocks in `poll(2)`. rustls may hold decrypted
//! plaintext, or records not yet written, that `poll` cannot see: each turn drains a TLS
//! side's plaintext until its socket has nothing, and flushes its records, before polling;
//! a turn cut short by the round limit polls with a zero timeout. Half-close passes on
//! (`close_notify` then FIN towards a TLS side), and `idle` bounds a quiet tunnel.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustls::Connection;

use crate::config::as_limit;
use crate::error::Party;
use crate::relay::{self, Buffers, Progress, RelayOutcome, Relayed};

/// One end of a tunnel: its socket, its TLS state if any, and bytes already read from it (into
/// an HTTP buffer) that must go to the other end first.
pub struct End<'a> {
    pub sock: &'a TcpStream,
    pub tls: Option<&'a mut Connection>,
    pub early: &'a [u8],
}

/// Reads per direction per turn before the other direction gets its turn.
const ROUNDS: usize = 8;
const CHUNK: usize = 16 * 1024;

/// Tunnels between `client` and `backend` until both directions end, an error, or `idle`
/// (zero: none) with no byte moved.
pub fn tunnel(client: End<'_>, backend: End<'_>, idle: Duration, bufs: &mut Buffers) -> RelayOutcome {
    resume(client, backend, idle, bufs, Progress::start(), None).into_outcome()
}

/// Tunnels from `from` as [`tunnel`] does; with `park_after`, it returns [`Relayed::Quiet`]
/// once nothing moved for that long and nothing waits (no pending bytes, no TLS records to
/// send, no plaintext held by rustls), rather than wait on in this thread.
pub fn resume(
    client: End<'_>,
    backend: End<'_>,
    idle: Duration,
    bufs: &mut Buffers,
    from: Progress,
    park_after: Option<Duration>,
) -> Relayed {
    if client.tls.is_none() && backend.tls.is_none() && client.early.is_empty() && backend.early.is_empty() {
        return relay::resume(client.sock, backend.sock, idle, bufs, from, park_after);
    }
    for (s, side) in [(client.sock, Party::Client), (backend.sock, Party::Backend)] {
        if let Err(e) = s.set_nonblocking(true) {
            return Relayed::Ended(RelayOutcome { up: from.up, down: from.down, error: Some((side, e)) });
        }
    }
    // Bytes already read from one side travel the other way first.
    let mut up = Pending::new(client.early.to_vec());
    let mut down = Pending::new(backend.early.to_vec());
    (up.total, down.total) = (from.up, from.down);
    let mut c = Side::new(client, Party::Client);
    let mut b = Side::new(backend, Party::Backend);
    // An ended input was passed on: its EOF read, the other side closed.
    (c.eof, b.closing, b.closed) = (from.up_done, from.up_done, from.up_done);
    (b.eof, c.closing, c.closed) = (from.down_done, from.down_done, from.down_done);
    let clock = Clock { idle: as_limit(idle), park_after, last_moved: from.last_moved };
    match run(&mut c, &mut b, &mut up, &mut down, clock) {
        Ok(Some(last_moved)) => Relayed::Quiet(Progress {
            up: up.total,
            down: down.total,
            up_done: c.eof,
            down_done: b.eof,
            last_moved,
        }),
        Ok(None) => Relayed::Ended(RelayOutcome { up: up.total, down: down.total, error: None }),
        Err(e) => Relayed::Ended(RelayOutcome { up: up.total, down: down.total, error: Some(e) }),
    }
}

/// A tunnel turn's clock: the idle limit, when to go quiet, and the last byte moved.
struct Clock {
    idle: Option<Duration>,
    park_after: Option<Duration>,
    last_moved: Instant,
}

struct Pending {
    buf: Vec<u8>,
    start: usize,
    total: u64,
}

impl Pending {
    fn new(buf: Vec<u8>) -> Pending {
        Pending { buf, start: 0, total: 0 }
    }
    fn is_empty(&self) -> bool {
        self.start >= self.buf.len()
    }
}

struct Side<'a> {
    sock: &'a TcpStream,
    tls: Option<&'a mut Connection>,
    party: Party,
    /// Its input ended (EOF or `close_notify`).
    eof: bool,
    /// EOF was passed on to it: `close_notify` queued, FIN once the records are out.
    closing: bool,
    closed: bool,
}

impl<'a> Side<'a> {
    fn new(end: End<'a>, party: Party) -> Side<'a> {
        Side { sock: end.sock, tls: end.tls, party, eof: false, closing: false, closed: false }
    }

    /// Plaintext from this side: `Some(0)` at its end, `None` when nothing is there now.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut sock = self.sock;
        let Some(tls) = &mut self.tls else {
            return match sock.read(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if would_block(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut sock) {
                // rustls now reports the end through `reader()` on the next turn.
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes what this side takes now; 0 when it is full.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut sock = self.sock;
        match &mut self.tls {
            None => match sock.write(data) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) if would_block(&e) => Ok(0),
                Err(e) => Err(e),
            },
            Some(tls) => {
                if tls.wants_write() && !self.flush()? {
                    return Ok(0);
                }
                let Some(tls) = &mut self.tls else { return Ok(0) };
                let n = tls.writer().write(&data[..data.len().min(CHUNK)])?;
                self.flush()?;
                Ok(n)
            }
        }
    }

    /// Sends queued TLS records; `Ok(true)` when none is left. Finishes a pending close.
    fn flush(&mut self) -> io::Result<bool> {
        let mut sock = self.sock;
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut sock) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
        if self.closing && !self.closed {
            self.closed = true;
            // The peer may be gone already; the other direction finds out.
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(true)
    }

    fn wants_out(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Passes the other side's EOF on.
    fn close(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
        self.closing = true;
        self.flush().map(|_| ())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Moves `from` -> `to` until `from` has nothing, `to` is full, or the round limit; returns
/// (moved, cut short by the limit).
fn pump(
    from: &mut Side,
    to: &mut Side,
    p: &mut Pending,
    buf: &mut [u8],
) -> Result<(bool, bool), (Party, io::Error)> {
    let mut moved = false;
    for _ in 0..ROUNDS {
        while !p.is_empty() {
            let n = to.write(&p.buf[p.start..]).map_err(|e| (to.party, e))?;
            if n == 0 {
                return Ok((moved, false));
            }
            p.start += n;
            p.total += n as u64;
            moved = true;
        }
        if from.eof {
            return Ok((moved, false));
        }
        match from.read(buf).map_err(|e| (from.party, e))? {
            None => return Ok((moved, false)),
            Some(0) => {
                from.eof = true;
                to.close().map_err(|e| (to.party, e))?;
                return Ok((true, false));
            }
            Some(n) => {
                p.buf.clear();
                p.buf.extend_from_slice(&buf[..n]);
                p.start = 0;
                moved = true;
            }
        }
    }
    Ok((moved, true))
}

/// The loop: `Ok(Some)` when it went quiet (since that instant), `Ok(None)` when both
/// directions ended.
fn run(
    c: &mut Side,
    b: &mut Side,
    up: &mut Pending,
    down: &mut Pending,
    clock: Clock,
) -> Result<Option<Instant>, (Party, io::Error)> {
    let Clock { idle, park_after, mut last_moved } = clock;
    let mut buf = vec![0u8; CHUNK];
    // A resumed tunnel was woken by bytes: it goes quiet again counting from now.
    let woke = Instant::now();
    loop {
        let (m1, cut1) = pump(c, b, up, &mut buf)?;
        let (m2, cut2) = pump(b, c, down, &mut buf)?;
        c.flush().map_err(|e| (Party::Client, e))?;
        b.flush().map_err(|e| (Party::Backend, e))?;
        if m1 || m2 {
            last_moved = Instant::now();
        }
        let up_done = c.eof && up.is_empty();
        let down_done = b.eof && down.is_empty();
        let waiting = !up.is_empty() || !down.is_empty() || c.wants_out() || b.wants_out();
        if up_done && down_done && !waiting {
            return Ok(None);
        }
        let parks_in = park_after.map(|after| after.saturating_sub(last_moved.max(woke).elapsed()));
        let settled = !waiting && !cut1 && !cut2;
        if settled && parks_in.is_some_and(|left| left.is_zero()) {
            return Ok(Some(last_moved));
        }
        let mut on_c = PollFlags::empty();
        let mut on_b = PollFlags::empty();
        if !c.eof && up.is_empty() {
            on_c |= PollFlags::IN;
        }
        if !b.eof && down.is_empty() {
            on_b |= PollFlags::IN;
        }
        if !up.is_empty() || b.wants_out() {
            on_b |= PollFlags::OUT;
        }
        if !down.is_empty() || c.wants_out() {
            on_c |= PollFlags::OUT;
        }
        let timeout = if cut1 || cut2 {
            Some(Duration::ZERO)
        } else {
            let mut timeout = None;
            if let Some(idle) = idle {
                let left = idle.saturating_sub(last_moved.elapsed());
                if left.is_zero() {
                    let side = if !up.is_empty() { Party::Backend } else { Party::Client };
                    return Err((side, io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
                }
                timeout = Some(left);
            }
            if let Some(left) = parks_in.filter(|_| settled) {
                let left = left.max(Duration::from_millis(1));
                timeout = Some(timeout.map_or(left, |t: Duration| t.min(left)));
            }
            timeout
        };
        match relay::poll_two(c.sock, on_c, b.sock, on_b, timeout.map(relay::timespec).as_ref()) {
            None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err((Party::Client, e)),
        }
    }
}
