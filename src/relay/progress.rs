//! How far a relay got and how it ended: the counts, the ended directions and the bytes held
//! for a slow destination that a quiet relay takes with it into the parker; and what a turn
//! has told its tally.

use std::time::{Duration, Instant};

use super::flow::Flow;
use super::{Tally, TALLY_BYTES, TALLY_EVERY};
use crate::config::as_limit;
use crate::error::Failure;

/// What a quiet relay still holds for its destinations: bytes per direction that were read but
/// not yet taken (its splice pipe's read out too), and TLS records not yet sent.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Bytes for the backend, to go first when the relay resumes.
    pub(super) up: Vec<u8>,
    /// Bytes for the client.
    pub(super) down: Vec<u8>,
    /// The client's TLS session has records to send.
    pub(super) client_out: bool,
    /// The backend's has.
    pub(super) backend_out: bool,
    /// The client's FIN waits for those records (the backend's end passed on as `close_notify`).
    pub(super) client_fin: bool,
    /// The backend's does.
    pub(super) backend_fin: bool,
}

/// What a parked side waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Input (or its end).
    pub read: bool,
    /// Room to send.
    pub write: bool,
    /// A reset, when waiting on neither: only while the relay's own output to it is open, else
    /// a side shut both ways would report a hang-up for ever.
    pub reset: bool,
}

/// How one relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// The first error in either direction: whose socket it was on (client or backend, the
    /// backend's name left for the caller to add), in phase `Relay`; `Cause::Timeout` when
    /// nothing moved for the idle limit.
    pub error: Option<Failure>,
}

/// How far a relay (or a tunnel) got: its counts, which directions have ended, when a byte
/// last moved, and what it holds for a destination that could not take it yet. One that went
/// quiet hands this back and, once its connection has waited in the parker, resumes from it.
#[derive(Debug)]
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
    /// What waits for a destination's room (a slow reader, a backend that stopped reading an
    /// upload): none when nothing does.
    pub held: Option<Box<Backlog>>,
    /// A response body's length ([`Progress::body`]): the relay reads no more than this from
    /// the backend, and ends once it all reached the client, passing no end on either way.
    pub limit: Option<u64>,
    /// A body's: while the relay waits on the backend alone, this limit (`response_ms`, zero:
    /// none) rather than the idle one, as the worker's reads of any body have it.
    pub backend_idle: Option<Duration>,
}

impl Progress {
    /// A relay about to start.
    pub fn start() -> Progress {
        Progress {
            up: 0,
            down: 0,
            up_done: false,
            down_done: false,
            last_moved: Instant::now(),
            held: None,
            limit: None,
            backend_idle: None,
        }
    }

    /// A response body of `len` bytes about to go from the backend to the client, the one way:
    /// the client's input (its next request) is left unread, and neither side is shut; a
    /// backend silent for `response` (zero: never) while nothing waits for the client cuts it.
    pub fn body(len: u64, response: Duration) -> Progress {
        Progress { up_done: true, limit: Some(len), backend_idle: Some(response), ..Progress::start() }
    }

    /// Whether it waits on the backend alone: its client is done, and nothing waits for it.
    fn on_backend_alone(&self) -> bool {
        let held = self.held.as_deref().is_some_and(|h| !h.down.is_empty() || h.client_out);
        self.up_done && !self.down_done && !held
    }

    /// What the parker watches on each side, `(client, backend)`, for the relay to move on: a
    /// direction with bytes held waits for room in its destination (and not for more input,
    /// which it could not take), the others for input while it has not ended.
    ///
    /// A side the relay waits on for nothing, its own output to it shut, is not watched at all
    /// (the backend ended and its upload waits on a full backend): a reset there is seen when
    /// the relay next moves, or at its idle limit.
    pub fn interest(&self) -> (Interest, Interest) {
        let held = self.held.as_deref();
        let up = held.is_some_and(|h| !h.up.is_empty());
        let down = held.is_some_and(|h| !h.down.is_empty());
        let client = Interest {
            read: !self.up_done && !up,
            write: down || held.is_some_and(|h| h.client_out),
            reset: !self.down_done,
        };
        let backend = Interest {
            read: !self.down_done && !down,
            write: up || held.is_some_and(|h| h.backend_out),
            reset: !self.up_done,
        };
        (client, backend)
    }

    /// When `idle` (zero: none) without a byte ends the relay (a body waiting on its backend
    /// alone: its own limit).
    pub fn deadline(&self, idle: Duration) -> Option<Instant> {
        let limit = self.backend_idle.filter(|_| self.on_backend_alone()).unwrap_or(idle);
        as_limit(limit).map(|limit| self.last_moved + limit)
    }
}

/// How a turn of a relay (or tunnel) ended.
#[derive(Debug)]
pub enum Relayed {
    /// Both directions ended, an error, or the idle limit.
    Ended(RelayOutcome),
    /// No byte moved for the [`ParkWhen`](super::ParkWhen) asked: the connection can wait in the parker (for
    /// input, or for room where bytes are held) and resume from here.
    Quiet(Progress),
}

impl Relayed {
    /// The outcome of a relay run without a [`ParkWhen`](super::ParkWhen), which never goes quiet (a quiet one
    /// would read as ended without error).
    pub fn into_outcome(self) -> RelayOutcome {
        match self {
            Relayed::Ended(out) => out,
            Relayed::Quiet(p) => RelayOutcome { up: p.up, down: p.down, error: None },
        }
    }
}

/// What a relay turn has told its tally so far.
pub(super) struct Told<'a> {
    pub tally: Tally<'a>,
    pub up: u64,
    pub down: u64,
    pub at: Instant,
}

impl Told<'_> {
    /// How long until bytes moved but not yet told are due, if there are any.
    pub fn due_in(&self, up: &Flow, down: &Flow, now: Instant) -> Option<Duration> {
        (up.total + down.total > self.up + self.down)
            .then(|| TALLY_EVERY.saturating_sub(now.duration_since(self.at)))
    }

    /// Tells the tally what moved since it was last told: always when `settle`, else once
    /// enough bytes or time went by.
    pub fn tell(&mut self, up: &Flow, down: &Flow, now: Instant, settle: bool) {
        let (new_up, new_down) = (up.total - self.up, down.total - self.down);
        let due = new_up + new_down >= TALLY_BYTES || now.duration_since(self.at) >= TALLY_EVERY;
        if new_up + new_down > 0 && (settle || due) {
            (self.tally)(new_up, new_down);
            (self.up, self.down, self.at) = (up.total, down.total, now);
        }
    }
}
