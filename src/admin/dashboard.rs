//! What the dashboard's `tick` events carry, made once a second by the admin thread: every
//! backend's numbers with its requests per second, the sampling of picks, and the last five
//! minutes of requests per second (sent once to each new viewer, so its chart starts full).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Admin;
use crate::events::{self, wall_ms, PICKS, PICKS_PER_SECOND, RETRIES};
use crate::stats::backend_json;

/// How often a tick is made.
pub const TICK_EVERY: Duration = Duration::from_secs(1);

/// Ticks of history kept: five minutes.
pub const HISTORY: usize = 300;

/// The admin thread's running view of the rates.
pub struct Dashboard {
    last: Option<Instant>,
    /// Each backend's total at the last tick, by id.
    totals: HashMap<u64, u64>,
    /// (seen, sent) of picks and retries at the last tick.
    sampled: [(u64, u64); 2],
    /// One point per tick: wall time (ms) and requests/s by backend name.
    history: VecDeque<Value>,
    /// The last tick, for a viewer that connects before the next one.
    last_tick: Option<Value>,
}

impl Dashboard {
    /// An empty view; the first tick comes at once.
    pub fn new() -> Dashboard {
        Dashboard {
            last: None,
            totals: HashMap::new(),
            sampled: [(0, 0); 2],
            history: VecDeque::new(),
            last_tick: None,
        }
    }

    /// When the next tick is due.
    pub fn due(&self) -> Option<Instant> {
        self.last.map(|t| t + TICK_EVERY)
    }

    /// Makes a tick if one is due: the history grows by a point, and the event (without the
    /// per-viewer fields) is returned when `watched`. Otherwise `None`. (Once a second for a
    /// handful of backends: cheap enough to make whether or not anyone watches.)
    pub fn tick(&mut self, admin: &Admin, now: Instant, watched: bool) -> Option<Value> {
        if self.due().is_some_and(|d| now < d) {
            return None;
        }
        let secs = self.last.map_or(1.0, |t| now.duration_since(t).as_secs_f64().max(0.001));
        self.last = Some(now);
        let table = admin.router.table();
        let members = crate::stats::members(&table);
        let mut rates = serde_json::Map::new();
        let mut totals = HashMap::with_capacity(members.len());
        let mut backends = Vec::new();
        // Every pick counts on its backend: the picks seen this tick, without a shared counter
        // on the request path.
        let mut picks_now = 0u64;
        for (pool, b) in members.iter() {
            let total = b.total();
            let before = self.totals.get(&b.id()).copied().unwrap_or(total);
            picks_now += total.saturating_sub(before);
            let rps = (total.saturating_sub(before) as f64 / secs * 10.0).round() / 10.0;
            totals.insert(b.id(), total);
            rates.insert(b.name().to_string(), json!(rps));
            let mut v = backend_json(pool, b);
            v["rps"] = json!(rps);
            backends.push(v);
        }
        self.totals = totals;
        let time = wall_ms();
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(json!({ "time": time, "rps": rates }));
        let sampled = [PICKS.totals(), RETRIES.totals()];
        let per_second = |i: usize| {
            let (seen, sent) = (sampled[i].0 - self.sampled[i].0, sampled[i].1 - self.sampled[i].1);
            (seen, sent)
        };
        let ((_, picks_sent), (retries_seen, retries_sent)) = (per_second(0), per_second(1));
        let picks_seen = picks_now.max(picks_sent);
        self.sampled = sampled;
        let rate = if picks_seen == 0 { 1.0 } else { picks_sent as f64 / picks_seen as f64 };
        let tick = json!({
            "type": "tick",
            "time": time,
            "algorithm": table.default_pool().balancer.algorithm().name(),
            "connections_accepted": admin.counters.accepted.load(Ordering::Relaxed),
            "requests": admin.counters.requests.load(Ordering::Relaxed),
            "queued": crate::stats::queued(&table),
            "backends": backends,
            "refused": admin.counters.refused(),
            "sampling": {
                "limit_per_second": PICKS_PER_SECOND,
                "picks_seen": picks_seen,
                "picks_sent": picks_sent,
                "retries_seen": retries_seen,
                "retries_sent": retries_sent,
                "rate": (rate * 1000.0).round() / 1000.0,
            },
        });
        self.last_tick = Some(tick);
        if watched {
            self.last_tick.clone()
        } else {
            None
        }
    }

    /// The last tick made, if any.
    pub fn last_tick(&self) -> Option<&Value> {
        self.last_tick.as_ref()
    }

    /// The event a new viewer gets first: the rate history, oldest first.
    pub fn history_event(&self) -> String {
        json!({ "type": "history", "time": wall_ms(), "points": self.history }).to_string()
    }
}

/// A tick for one viewer: `tick` with the events this viewer missed so far.
pub fn for_viewer(tick: &Value, dropped: u64) -> String {
    let mut t = tick.clone();
    t["dropped"] = json!(dropped);
    t.to_string()
}

/// Whether anyone watches (so the admin thread polls often enough to pass events on).
pub fn watched() -> bool {
    events::watching()
}
