//! The event bus the dashboard watches: picks, retries and state changes, broadcast to the
//! `/events` viewers without ever making the emitting thread wait.
//!
//! It sits in the base layer so that the backend, selection and request layers can emit
//! without knowing about the admin listener. Costs, by design:
//! - no viewer: an emitting worker does one relaxed atomic load ([`watching`]) and returns;
//! - viewers: picks and retries pass a lock-free per-second sampler first ([`PICKS_PER_SECOND`]
//!   each), so at most that many per second are formatted and take the bus lock, whatever the
//!   traffic; the lock is held only to copy a pointer into each viewer's bounded queue;
//! - a viewer whose queue is full misses the event (counted in its [`Subscription::dropped`]),
//!   so a slow viewer never blocks a worker.
//!
//! State changes (health transitions, admin changes) are rare and always recorded in the recent
//! feed, so a dashboard opened later still shows them.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde_json::json;

use crate::clock::now_ms;

/// Events one viewer may have waiting; past this it misses events until it catches up.
pub const VIEWER_QUEUE: usize = 512;

/// Picks (and, separately, retries) sent to viewers per second at most; the rest are counted
/// as seen and not sent, and each `tick` states the rate.
pub const PICKS_PER_SECOND: u32 = 50;

/// Events kept for a viewer that connects later (the dashboard's decision feed).
pub const FEED_LEN: usize = 100;

static VIEWERS: AtomicUsize = AtomicUsize::new(0);
static NEXT_VIEWER: AtomicU64 = AtomicU64::new(1);

struct Viewer {
    id: u64,
    tx: Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

struct Bus {
    viewers: Vec<Viewer>,
    feed: VecDeque<Arc<str>>,
}

static BUS: Mutex<Bus> = Mutex::new(Bus { viewers: Vec::new(), feed: VecDeque::new() });

/// Whether any viewer is connected: the one check an emitter makes when none is.
#[inline]
pub fn watching() -> bool {
    VIEWERS.load(Ordering::Relaxed) != 0
}

/// A lock-free "at most N per second" gate that counts what it saw and what it let through.
pub struct Sampler {
    second: AtomicU64,
    in_second: AtomicU32,
    seen: AtomicU64,
    sent: AtomicU64,
}

impl Sampler {
    const fn new() -> Sampler {
        Sampler {
            second: AtomicU64::new(0),
            in_second: AtomicU32::new(0),
            seen: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// Whether an event would go out now, read-only: busy workers only read these shared
    /// counters (no cache-line traffic between cores) until the second turns, so nothing is
    /// built for an event that the sampler would drop.
    fn open(&self) -> bool {
        let second = now_ms() / 1000;
        self.second.load(Ordering::Relaxed) != second
            || self.in_second.load(Ordering::Relaxed) < PICKS_PER_SECOND
    }

    /// Whether this event goes out. Racing threads at a second's turn may let a few extra
    /// through; the limit is a cost bound, not an exact quota.
    fn admit(&self) -> bool {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let second = now_ms() / 1000;
        if self.second.load(Ordering::Relaxed) != second {
            self.second.store(second, Ordering::Relaxed);
            self.in_second.store(0, Ordering::Relaxed);
        }
        if self.in_second.fetch_add(1, Ordering::Relaxed) >= PICKS_PER_SECOND {
            return false;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// (seen, sent) since start, counted only while someone was watching.
    pub fn totals(&self) -> (u64, u64) {
        (self.seen.load(Ordering::Relaxed), self.sent.load(Ordering::Relaxed))
    }
}

/// The pick sampler.
pub static PICKS: Sampler = Sampler::new();
/// The retry sampler.
pub static RETRIES: Sampler = Sampler::new();

/// A connected viewer's end of the bus. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    rx: Receiver<Arc<str>>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next waiting event (a JSON object), if any.
    pub fn try_recv(&self) -> Option<Arc<str>> {
        self.rx.try_recv().ok()
    }

    /// Events this viewer missed because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts events the viewer's own connection had to leave out (its output was full).
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut bus = BUS.lock();
        bus.viewers.retain(|v| v.id != self.id);
        VIEWERS.store(bus.viewers.len(), Ordering::Relaxed);
    }
}

/// Subscribes a viewer; also returns the recent feed (oldest first) to show at once.
pub fn subscribe() -> (Subscription, Vec<Arc<str>>) {
    let (tx, rx) = crossbeam_channel::bounded(VIEWER_QUEUE);
    let id = NEXT_VIEWER.fetch_add(1, Ordering::Relaxed);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut bus = BUS.lock();
    bus.viewers.push(Viewer { id, tx, dropped: dropped.clone() });
    VIEWERS.store(bus.viewers.len(), Ordering::Relaxed);
    let recent = bus.feed.iter().cloned().collect();
    (Subscription { id, rx, dropped }, recent)
}

/// Milliseconds since the Unix epoch, for the viewer's clock.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether a pick event would be sent now: someone watches and this second's sample is not
/// full. Callers check it before building the pick's reason or label, so a viewer costs
/// (almost) nothing on requests whose picks are not sampled.
pub fn wants_pick() -> bool {
    watching() && PICKS.open()
}

/// Whether a retry event would be sent now (see [`wants_pick`]).
pub fn wants_retry() -> bool {
    watching() && RETRIES.open()
}

/// A pick: `client` (the connection or request label's client address), the backend chosen,
/// the algorithm, and `reason` in the words of the log line.
pub fn pick(label: &dyn Display, client: &dyn Display, backend: &str, algorithm: &str, reason: &str) {
    if !watching() || !PICKS.admit() {
        return;
    }
    publish(json!({
        "type": "pick", "time": wall_ms(), "label": label.to_string(), "client": client.to_string(),
        "backend": backend, "algorithm": algorithm, "reason": reason,
    }));
}

/// A retry: the attempt on `backend` failed with `why` and the next backend is tried.
pub fn retry(label: &dyn Display, client: &dyn Display, backend: &str, why: &str) {
    if !watching() || !RETRIES.admit() {
        return;
    }
    publish(json!({
        "type": "retry", "time": wall_ms(), "label": label.to_string(), "client": client.to_string(),
        "backend": backend, "reason": why,
    }));
}

/// A state change of `backend` (health `UP`/`DOWN`, or an operator's drain/maint/ready/weight)
/// to `state`, with `reason` in the words of the log line. Always kept in the feed.
pub fn state(backend: &str, state: &str, reason: &str) {
    publish(json!({
        "type": "state", "time": wall_ms(), "backend": backend, "state": state, "reason": reason,
    }));
}

fn publish(event: serde_json::Value) {
    let text: Arc<str> = event.to_string().into();
    let mut bus = BUS.lock();
    if bus.feed.len() == FEED_LEN {
        bus.feed.pop_front();
    }
    bus.feed.push_back(text.clone());
    for v in &bus.viewers {
        if let Err(TrySendError::Full(_)) = v.tx.try_send(text.clone()) {
            v.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the bus is process-wide, so parallel tests would see each other's viewers.
    #[test]
    fn a_viewer_gets_events_a_full_one_misses_them_and_picks_are_sampled() {
        assert!(!watching());
        state("a", "down", "before anyone watched");
        let (sub, recent) = subscribe();
        assert!(watching());
        assert!(recent.iter().any(|e| e.contains("before anyone watched")), "{recent:?}");
        pick(&"req 1", &"127.0.0.1:5", "a", "round-robin", "round-robin: next in turn of 2");
        let e: serde_json::Value = serde_json::from_str(&sub.try_recv().expect("an event")).expect("json");
        assert_eq!((e["type"].as_str(), e["backend"].as_str()), (Some("pick"), Some("a")));
        assert_eq!(e["reason"], "round-robin: next in turn of 2");
        // At most PICKS_PER_SECOND go out per second, however many happen (the second may
        // turn once while the loop runs, so allow two windows).
        for _ in 0..1000 {
            pick(&"req", &"c", "a", "x", "x");
        }
        let mut got = 0;
        while sub.try_recv().is_some() {
            got += 1;
        }
        assert!(got <= 2 * PICKS_PER_SECOND as usize, "{got} picks went out");
        // A viewer that never reads misses what does not fit, and it is counted.
        for i in 0..VIEWER_QUEUE + 10 {
            state("a", "up", &i.to_string());
        }
        assert_eq!(sub.dropped(), 10);
        drop(sub);
        assert!(!watching());
    }
}
