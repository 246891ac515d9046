//! One admin connection as a state machine the poll loop drives: collect the request head,
//! send the response, linger until the client closes; or, for `/events`, stream events until
//! the viewer leaves. Every step uses nonblocking I/O and returns at once, so one slow client
//! never holds the admin thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Instant;

use rustix::event::PollFlags;

use super::{HEAD_TIMEOUT, LINGER, MAX_REQUEST_HEAD, SEND_TIMEOUT};
use crate::events::Subscription;
use crate::h1::head::{self, Request};
use crate::h1::respond::SimpleResponse;

/// Bytes an event viewer may have waiting to be sent; past this its connection stops taking
/// events from its queue, which then fills, and the bus drops (and counts) what it misses.
pub(super) const STREAM_BUFFER: usize = 64 * 1024;

/// An event viewer's connection is never timed out while open; this is only how far its
/// deadline is pushed ahead each time it is served.
const STREAM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Reads of one chunk done for one readiness report while lingering; a client that keeps
/// sending waits for the next turn of the loop rather than keeping the thread.
const LINGER_READS: usize = 16;

/// Where a connection is.
enum Phase {
    /// Collecting the request head. The deadline covers the whole head, not each read.
    Head(Vec<u8>),
    /// Sending the response, `sent` bytes of `out` so far.
    Respond { out: Vec<u8>, sent: usize },
    /// Response sent and our side shut down: discard what the client still sends until it
    /// closes (or the deadline), so closing with unread bytes does not reset the connection.
    Linger,
    /// An `/events` viewer: events are appended to `out` (bounded) as they come.
    Stream { sub: Subscription, out: Vec<u8>, sent: usize, until: Option<Instant> },
}

/// What a request is answered with.
pub(super) enum Reply {
    /// A complete response; the connection closes after it.
    Full(Vec<u8>),
    /// A response head and first events, then the viewer's event stream, ended after the
    /// given time if one is given.
    Events(Vec<u8>, Subscription, Option<std::time::Duration>),
}

/// An admin connection and where it is.
pub(super) struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    deadline: Instant,
}

/// How a request is answered, given the client's address.
pub(super) type Route<'a> = dyn Fn(&Request, SocketAddr) -> Reply + 'a;

impl Conn {
    /// A connection accepted at `now`; `stream` must be nonblocking.
    pub(super) fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> Conn {
        Conn { stream, peer, phase: Phase::Head(Vec::new()), deadline: now + HEAD_TIMEOUT }
    }

    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// When the current phase runs out of time.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// What to poll for.
    pub(super) fn interest(&self) -> PollFlags {
        match &self.phase {
            Phase::Respond { .. } => PollFlags::OUT,
            Phase::Stream { out, sent, .. } if *sent < out.len() => PollFlags::IN | PollFlags::OUT,
            Phase::Head(_) | Phase::Linger | Phase::Stream { .. } => PollFlags::IN,
        }
    }

    /// Whether this is an event viewer.
    pub(super) fn is_stream(&self) -> bool {
        matches!(self.phase, Phase::Stream { .. })
    }

    /// For a viewer: takes waiting events from its queue (while its buffer has room), adds
    /// `extra` (a tick) if given and there is room, and sends what the socket takes.
    /// `false` when the viewer has gone.
    pub(super) fn pump(&mut self, now: Instant, extra: Option<&dyn Fn(u64) -> String>) -> bool {
        let Phase::Stream { sub, out, sent, until } = &mut self.phase else { return true };
        self.deadline = until.unwrap_or(now + STREAM_DEADLINE);
        if *sent == out.len() {
            out.clear();
            *sent = 0;
        }
        while out.len() - *sent < STREAM_BUFFER {
            let Some(event) = sub.try_recv() else { break };
            push_event(out, &event);
        }
        if let Some(make) = extra {
            if out.len() - *sent < STREAM_BUFFER {
                push_event(out, &make(sub.dropped()));
            } else {
                sub.count_dropped(1);
            }
        }
        self.write_stream()
    }

    fn write_stream(&mut self) -> bool {
        let Phase::Stream { out, sent, .. } = &mut self.phase else { return true };
        !matches!(write_some(&self.stream, out, sent), Written::Failed)
    }

    /// Poll reported the socket ready (or in error): make what progress it allows.
    /// `false` when the connection is finished and should be dropped.
    pub(super) fn on_ready(&mut self, now: Instant, route: &Route<'_>) -> bool {
        match self.phase {
            Phase::Head(_) => self.read_head(now, route),
            Phase::Respond { .. } => self.send(now),
            Phase::Linger => self.discard(),
            // A viewer sends nothing after its request: readable means it closed (or sent
            // junk, which is discarded).
            Phase::Stream { .. } => self.discard() && self.write_stream(),
        }
    }

    /// Enforces the phase's deadline. `false` when the connection is finished.
    pub(super) fn on_deadline(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return true;
        }
        match self.phase {
            Phase::Head(ref head) => {
                log::debug!(
                    "admin: {} sent no complete request within {} ms ({} bytes)",
                    self.peer,
                    HEAD_TIMEOUT.as_millis(),
                    head.len()
                );
                self.respond(now, simple(408, "request head not received in time\n"))
            }
            Phase::Respond { .. } | Phase::Linger => false,
            // Only a bounded stream (`for=N`) reaches its deadline: it ends.
            Phase::Stream { .. } => false,
        }
    }

    fn read_head(&mut self, now: Instant, route: &Route<'_>) -> bool {
        let Phase::Head(head) = &mut self.phase else { return true };
        let mut chunk = [0u8; 4096];
        // Bounded: every pass adds at least a byte, and a head past the limit ends the loop.
        loop {
            match (&self.stream).read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            let response = match head::parse_request(head) {
                Ok(Some((_, req))) => {
                    log::debug!("admin: {} {} {}", self.peer, req.method, req.target);
                    route(&req, self.peer)
                }
                Ok(None) if head.len() > MAX_REQUEST_HEAD => {
                    Reply::Full(simple(431, "request head too large\n"))
                }
                Ok(None) => continue,
                Err(e) => Reply::Full(simple(400, &format!("bad request: {e}\n"))),
            };
            return match response {
                Reply::Full(out) => self.respond(now, out),
                Reply::Events(out, sub, until) => {
                    self.phase = Phase::Stream { sub, out, sent: 0, until: until.map(|d| now + d) };
                    self.pump(now, None)
                }
            };
        }
    }

    fn respond(&mut self, now: Instant, out: Vec<u8>) -> bool {
        self.phase = Phase::Respond { out, sent: 0 };
        self.deadline = now + SEND_TIMEOUT;
        self.send(now)
    }

    fn send(&mut self, now: Instant) -> bool {
        let Phase::Respond { out, sent } = &mut self.phase else { return true };
        match write_some(&self.stream, out, sent) {
            Written::All => {}
            Written::Blocked => return true,
            Written::Failed => return false,
        }
        // The FIN tells the client the response is complete; reading on lets it close first.
        let _ = self.stream.shutdown(Shutdown::Write);
        self.phase = Phase::Linger;
        self.deadline = now + LINGER;
        self.discard()
    }

    fn discard(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        for _ in 0..LINGER_READS {
            match (&self.stream).read(&mut chunk) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// Appends one Server-Sent Event carrying `data` (one line of JSON).
fn push_event(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// A plain-text response that closes the connection.
pub(super) fn simple(status: u16, body: &str) -> Vec<u8> {
    SimpleResponse { status, headers: &[("Content-Type", "text/plain")], body: body.as_bytes(), close: true }
        .to_bytes()
}

/// How far [`write_some`] got.
enum Written {
    /// Everything in `out` is sent.
    All,
    /// The socket is full: wait for POLLOUT.
    Blocked,
    /// The client is gone.
    Failed,
}

/// Writes `out[*sent..]` to the non-blocking `stream` until it is all sent or the socket is
/// full, advancing `sent`: the one write loop for responses and event streams.
fn write_some(mut stream: &TcpStream, out: &[u8], sent: &mut usize) -> Written {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Written::Failed,
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Written::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Written::Failed,
        }
    }
    Written::All
}
