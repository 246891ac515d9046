//! The client connection's waits, decided without sockets: how long a worker may wait for the
//! next request or the rest of a head, and what a wait that ends comes to (read on, park,
//! trim, close, 408, or 414/431). `http::proxy::serve` asks [`IdleTimers::before`] before each read
//! and [`IdleTimers::after`] when it returns, so the design reads in one place and is tested
//! here with a fake clock. [`ReadTimeout`] puts the wait on the socket, set only when it changes.
//!
//! ```text
//!   between requests:  read up to park_after (100 ms) -> Park(Idle)   [no parker: trim, then idle_ms]
//!                      or at once when connections wait for a worker   -> Park(Idle), requeued
//!   requeued:          read what is there without waiting              -> Park(Idle) if nothing
//!   a head begun:      read what is there without waiting             -> Park(Head), 408 at header_ms
//!   empty lines only:  dropped, no head begun (RFC 9112 2.2)          -> Park(Idle)
//!   a new connection:  first byte up to FIRST_BYTE (10 ms)            -> Park(Head)
//!   stopping:          no parking; idle ones close after SHUTDOWN_GRACE (500 ms), new ones
//!                      that sent nothing too
//! ```

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

// Without a parker, how long a keep-alive client idles before its worker gives back its stack
// pages; at shutdown, how long before its connection is closed.
use crate::conn::SHUTDOWN_GRACE;
use crate::threads::stack::TRIM_AFTER;

use crate::conn::accept::first_byte;
pub use crate::park::PARK_AFTER;

/// "Forever", for a limit that is off.
pub const NO_LIMIT: Duration = Duration::from_secs(365 * 86_400);

/// The limits, from `[timeouts]` (`None`: no limit).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Option<Duration>,
    pub header: Option<Duration>,
}

/// How the proxy stands when a wait starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Now {
    /// A parker takes connections (not at a stop).
    pub parker: bool,
    /// Connections wait for a worker.
    pub pressed: bool,
    /// The proxy is stopping.
    pub stopping: bool,
    /// rustls holds decrypted bytes the socket will not report: never park then.
    pub holds_plaintext: bool,
    /// Nothing of a next head is buffered.
    pub between_requests: bool,
}

/// What to do before the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Read, waiting at most this long (`None`: take what is there, without waiting).
    Read(Option<Duration>),
    /// Let the worker go: the connection waits in the parker.
    Park(Wait),
    /// The head took longer than `header_ms`: 408, then close.
    TimedOut,
    /// Close: idle too long, or idle at a stop.
    Close,
}

/// What a parked connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its next request, idle since the last response.
    Idle,
    /// The rest of a head (or, new, its first byte), bounded by `header_ms` from its start.
    Head,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Bytes arrived.
    Bytes,
    /// Between requests, only empty lines arrived, which are no request (RFC 9112 2.2); the
    /// caller dropped them.
    EmptyLines,
    /// The client closed.
    Eof,
    /// Nothing there (a read that does not wait).
    Empty,
    /// The wait ran out.
    TimedOut,
    /// The head grew past `max_head_bytes`.
    TooLarge,
    /// Any other error.
    Failed,
}

impl Filled {
    /// Classifies a read's outcome; `waited`: it was a read with a timeout, not one that takes
    /// only what is there.
    pub fn of(read: &io::Result<usize>, waited: bool) -> Filled {
        match read {
            Ok(0) => Filled::Eof,
            Ok(_) => Filled::Bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => Filled::Empty,
            // A socket timeout reads as either, depending on the platform.
            Err(e) if crate::net::is_timeout(e) => Filled::TimedOut,
            Err(e) if crate::h1::is_head_too_large(e) => Filled::TooLarge,
            Err(_) => Filled::Failed,
        }
    }
}

/// What a read that ended comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Bytes arrived: parse.
    Parse,
    /// Nothing to parse: read on.
    ReadOn,
    /// Let the worker go (as [`Before::Park`]).
    Park(Wait),
    /// Idle a while without a parker: give back the worker's buffers and stack, wait on.
    Trim,
    /// The head took too long: 408.
    TimedOut,
    /// The head is too large: 431 (414 for a request line alone).
    TooLarge,
    /// Close.
    Close,
}

/// One client connection's clocks.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimers {
    limits: Limits,
    /// When the current wait's clock started: the head's first wait (parking does not restart
    /// it), or the last response, between requests.
    pub since: Instant,
    /// Requests served on the connection (one before, if it came back from the parker idle).
    pub served: u64,
    /// Requests served since this worker took it: one back from the parker serves the request
    /// that woke it before it may park again.
    pub taken: u64,
    /// The worker gave back its buffers while idle.
    pub trimmed: bool,
    /// Its PROXY header or TLS handshake is done and it parked before: no first-byte grace.
    pub greeted: bool,
    /// It came back requeued ([`crate::park::Parker::requeue`]), perhaps not readable yet: its
    /// first read takes what is there, and it parks for real if nothing is.
    pub requeued: bool,
}

impl IdleTimers {
    /// A connection whose clock started at `since`, having served `served` requests.
    pub fn new(limits: Limits, since: Instant, served: u64, greeted: bool) -> IdleTimers {
        IdleTimers { limits, since, served, taken: 0, trimmed: false, greeted, requeued: false }
    }

    /// Waiting for a keep-alive client's next request (not a head begun, not a new one).
    fn keep_alive(&self, now: &Now) -> bool {
        now.between_requests && self.served > 0
    }

    /// Waiting for a new connection's first byte, which gets
    /// [`FIRST_BYTE`](crate::conn::accept::FIRST_BYTE) here.
    fn first_byte(&self, now: &Now) -> bool {
        now.parker && !now.stopping && self.served == 0 && !self.greeted && now.between_requests
    }

    /// A new connection that has sent nothing, at a stop: closed without a word if nothing
    /// comes within [`SHUTDOWN_GRACE`].
    fn fresh_at_stop(&self, now: &Now) -> bool {
        now.stopping && self.served == 0 && now.between_requests
    }

    /// What to do before reading, at `at`.
    pub fn before(&self, now: &Now, at: Instant) -> Before {
        let elapsed = at.saturating_duration_since(self.since);
        if self.keep_alive(now) {
            // A shutdown closes a connection idle `SHUTDOWN_GRACE`; not sooner: a busy client's
            // next request may be on its way, and is answered with `Connection: close` instead.
            if now.stopping && elapsed >= SHUTDOWN_GRACE {
                return Before::Close;
            }
            let parks = now.parker && !now.stopping && !now.holds_plaintext;
            if parks && self.taken > 0 && now.pressed {
                return Before::Park(Wait::Idle);
            }
            if parks && self.requeued {
                return Before::Read(None);
            }
            let mut limit = self.limits.idle.unwrap_or(NO_LIMIT);
            if now.stopping {
                limit = limit.min(SHUTDOWN_GRACE);
            }
            if !self.trimmed {
                let first = if now.parker { PARK_AFTER } else { TRIM_AFTER };
                return Before::Read(Some(first.min(limit)));
            }
            return match limit.checked_sub(elapsed) {
                Some(left) if !left.is_zero() => Before::Read(Some(left)),
                _ => Before::Close,
            };
        }
        let left = match self.limits.header {
            None => NO_LIMIT,
            Some(header) => header.saturating_sub(elapsed),
        };
        if left.is_zero() {
            return Before::TimedOut;
        }
        if self.first_byte(now) {
            return Before::Read(Some(left.min(first_byte(now.pressed))));
        }
        // A stop: a new connection that has sent nothing gets SHUTDOWN_GRACE for its first
        // request, as an idle keep-alive one does for its next.
        if self.fresh_at_stop(now) {
            return Before::Read(Some(left.min(SHUTDOWN_GRACE)));
        }
        // A head is awaited in the parker, not in this worker: read what is there.
        if now.parker && !now.stopping {
            return Before::Read(None);
        }
        Before::Read(Some(left))
    }

    /// What a read begun as `before` said comes to, at `at`.
    pub fn after(&mut self, now: &Now, read: Filled, at: Instant) -> After {
        let keep_alive = self.keep_alive(now);
        match read {
            Filled::Eof | Filled::Failed => After::Close,
            Filled::TooLarge => After::TooLarge,
            Filled::Bytes => {
                self.requeued = false;
                if keep_alive {
                    // A request begins: the head's clock starts.
                    self.since = at;
                    self.trimmed = false;
                }
                After::Parse
            }
            Filled::Empty => After::Park(if keep_alive { Wait::Idle } else { Wait::Head }),
            // No request begun: a keep-alive client is idle still, its clock running from its
            // last response (not `header_ms` from the empty line), and it waits in the parker.
            Filled::EmptyLines if keep_alive && now.parker && !now.stopping && !now.holds_plaintext => {
                After::Park(Wait::Idle)
            }
            Filled::EmptyLines => After::ReadOn,
            Filled::TimedOut if keep_alive && !self.trimmed => {
                if now.parker && !now.stopping && !now.holds_plaintext {
                    After::Park(Wait::Idle)
                } else {
                    self.trimmed = true;
                    After::Trim
                }
            }
            Filled::TimedOut if keep_alive || self.fresh_at_stop(now) => After::Close,
            Filled::TimedOut => {
                let expired =
                    self.limits.header.is_some_and(|h| at.saturating_duration_since(self.since) >= h);
                if self.first_byte(now) && !expired {
                    After::Park(Wait::Head)
                } else {
                    After::TimedOut
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "timers_tests.rs"]
mod tests;

/// Caches the client socket's read timeout, so it is set only when it changes.
pub(super) struct ReadTimeout<'a> {
    pub stream: &'a TcpStream,
    pub current: Option<Duration>,
}

impl ReadTimeout<'_> {
    pub fn set(&mut self, d: Duration) {
        let d = Some(if d.is_zero() { NO_LIMIT } else { d.min(NO_LIMIT).max(Duration::from_millis(1)) });
        if self.current != d {
            let _ = self.stream.set_read_timeout(d);
            self.current = d;
        }
    }
}
