//! Which backend goes next: the selection trait, and the one place where choosing meets health,
//! limits and counting. The active health checks that feed it run in [`checker`].
//!
//! Algorithms ([`least_connections`], [`round_robin`], [`random_two`], [`source_hash`]) only
//! choose among the members a [`View`] allows; they know nothing of health, limits or retries.
//! [`Balancer::pick`] holds the mutex while the algorithm chooses and the chosen backend's
//! `active` counter is incremented, so two workers never both see the same backend as least
//! loaded. When every available backend is at `max_conns`, `pick` waits (up to the queue
//! timeout) on a condition variable that [`ActiveGuard`]s signal as they give slots back.

pub mod checker;
mod explain;
pub mod least_connections;
pub mod least_time;
mod outlier;
pub mod random_two;
pub mod round_robin;
pub mod source_hash;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use xxhash_rust::xxh3::xxh3_64;

use crate::backend::{now_ms, Backend};
use crate::config::{Algorithm, HealthSettings};
pub use crate::error::Unavailable;

/// What an algorithm sees: the members, which of them it may choose, their load and weight.
pub struct View<'a> {
    members: &'a [Arc<Backend>],
    allowed: &'a dyn Fn(usize) -> bool,
    now: u64,
    /// The hash key (source-hash: the client address; header-hash: the header's value). `None`
    /// when the request has no such header: hashing algorithms fall back to least connections.
    pub key: Option<u64>,
}

impl View<'_> {
    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i` may be chosen.
    pub fn allowed(&self, i: usize) -> bool {
        (self.allowed)(i)
    }

    /// Member `i`'s connections (or requests) in flight.
    pub fn active(&self, i: usize) -> u64 {
        self.members[i].active() as u64
    }

    /// Member `i`'s effective weight, in thousandths (slow start included).
    pub fn weight(&self, i: usize) -> u64 {
        self.members[i].effective_weight(self.now)
    }

    /// Member `i`'s `least-time` cost in microseconds, `None` before any sample.
    pub fn cost(&self, i: usize) -> Option<f64> {
        self.members[i].latency().cost()
    }

    /// Whether member `i` is less loaded than member `j`: (active + 1) / weight, compared
    /// without division. The +1 keeps a barely-weighted (slow-starting) idle backend from
    /// winning against busy full-weight ones, as HAProxy does.
    pub fn less_loaded(&self, i: usize, j: usize) -> bool {
        (self.active(i) + 1) * self.weight(j) < (self.active(j) + 1) * self.weight(i)
    }
}

/// A selection algorithm. Called with the balancer's mutex held.
pub trait Select: Send {
    /// Chooses one allowed member; `None` when none is allowed.
    fn select(&mut self, view: &View<'_>) -> Option<usize>;
}

/// Builds the selector for `algorithm` over `members`.
pub fn selector(algorithm: Algorithm, members: &[Arc<Backend>]) -> Box<dyn Select> {
    match algorithm {
        Algorithm::LeastConnections => Box::new(least_connections::LeastConnections::new()),
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(members.len())),
        Algorithm::RandomTwo => Box::new(random_two::RandomTwo::new()),
        Algorithm::SourceHash | Algorithm::HeaderHash => Box::new(source_hash::SourceHash::new(members)),
        Algorithm::LeastTime => Box::new(least_time::LeastTime::default()),
    }
}

/// The hash key of a client address, for source-hash: XXH3-64 (seed 0) of its address bytes,
/// 4 for IPv4 (an IPv4-mapped IPv6 address counts as IPv4), 16 for IPv6. A named hash with a
/// published definition, so every build, platform and instance places a client alike
/// (`DefaultHasher` may change between Rust releases).
pub fn source_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    }
}

/// A member's sticky cookie value: XXH3-64 of its name, so every instance running the same
/// configuration agrees, and the cookie never shows the backend's address.
pub fn sticky_id(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// The hash key of a header value, for header-hash: XXH3-64 (seed 0) of its bytes, surrounding
/// whitespace trimmed.
pub fn header_value_key(value: &[u8]) -> u64 {
    xxh3_64(value.trim_ascii())
}

/// The backends already tried for one connection or request, so each is tried at most once,
/// and how many attempts failed (a stale pooled connection retried on the same backend too).
#[derive(Debug, Default, Clone)]
pub struct Tried {
    ids: Vec<u64>,
    failed: usize,
}

impl Tried {
    /// Marks `b` as tried, after an attempt on it failed.
    pub fn insert(&mut self, b: &Backend) {
        self.failed += 1;
        if !self.ids.contains(&b.id()) {
            self.ids.push(b.id());
        }
    }

    /// Counts a failed attempt that is retried on the same backend.
    pub fn retry_same(&mut self) {
        self.failed += 1;
    }

    /// Whether `b` was tried.
    pub fn contains(&self, b: &Backend) -> bool {
        self.ids.contains(&b.id())
    }

    /// How many backends were tried.
    pub fn count(&self) -> usize {
        self.ids.len()
    }

    /// How many attempts failed.
    pub fn failed(&self) -> usize {
        self.failed
    }
}

/// A chosen backend, its counted slot, and why it was chosen.
#[derive(Debug)]
pub struct Pick {
    /// Holds the backend's active count until dropped.
    pub guard: ActiveGuard,
    /// The reason, e.g. `least-connections: app3=0 app1=2 app2=1`; empty when info logging is
    /// off and no dashboard is watching.
    pub reason: String,
    /// The algorithm that chose, e.g. `least-connections`.
    pub algorithm: &'static str,
}

struct State {
    members: Arc<[Arc<Backend>]>,
    algorithm: Algorithm,
    selector: Box<dyn Select>,
}

struct Core {
    state: Mutex<State>,
    freed: Condvar,
    waiting: AtomicUsize,
}

/// Chooses backends and counts what it chose.
pub struct Balancer {
    core: Arc<Core>,
    health: Mutex<HealthSettings>,
    /// Whether the algorithm is header-hash, read per request without taking the lock.
    header_hash: AtomicBool,
    /// Whether the algorithm is least-time: only then are response times sampled.
    least_time: AtomicBool,
    /// A reload removed the pool ([`Balancer::retire_all`]).
    gone: AtomicBool,
}

impl Balancer {
    /// A balancer over `members` using `algorithm`; `health` drives passive failure detection.
    pub fn new(members: Vec<Arc<Backend>>, algorithm: Algorithm, health: HealthSettings) -> Balancer {
        let selector = selector(algorithm, &members);
        let state = State { members: members.into(), algorithm, selector };
        let core =
            Arc::new(Core { state: Mutex::new(state), freed: Condvar::new(), waiting: AtomicUsize::new(0) });
        let header_hash = AtomicBool::new(algorithm == Algorithm::HeaderHash);
        let least_time = AtomicBool::new(algorithm == Algorithm::LeastTime);
        Balancer { core, health: Mutex::new(health), header_hash, least_time, gone: AtomicBool::new(false) }
    }

    /// The current members.
    pub fn members(&self) -> Arc<[Arc<Backend>]> {
        self.core.state.lock().members.clone()
    }

    /// The current algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.core.state.lock().algorithm
    }

    /// Rebuilds the selector over the same members: a weight changed in place (the runtime
    /// API) must move the hash ring's points too.
    pub fn rebuild(&self) {
        let mut state = self.core.state.lock();
        state.selector = selector(state.algorithm, &state.members);
    }

    /// Replaces the members and algorithm (reload, DNS change); waiting picks look again.
    pub fn replace(&self, members: Vec<Arc<Backend>>, algorithm: Algorithm) {
        let mut state = self.core.state.lock();
        state.selector = selector(algorithm, &members);
        state.members = members.into();
        state.algorithm = algorithm;
        self.header_hash.store(algorithm == Algorithm::HeaderHash, Ordering::Relaxed);
        self.least_time.store(algorithm == Algorithm::LeastTime, Ordering::Relaxed);
        drop(state);
        self.core.freed.notify_all();
    }

    /// A pool a reload removed: its members are retired (they take no new connection from the
    /// new table, and what is open drains) but stay its members, so that a request the old
    /// table routed here just before the reload still picks among them, as nginx's old workers
    /// finish what they started, rather than finding no backend. Returns them.
    pub fn retire_all(&self) -> Arc<[Arc<Backend>]> {
        // Under the lock picks judge by: none sees a member removed but its pool not gone.
        let state = self.core.state.lock();
        self.gone.store(true, Ordering::Relaxed);
        for b in state.members.iter() {
            b.retire();
        }
        state.members.clone()
    }

    /// Whether `b` may be picked: available, or in a pool a reload removed, available but for
    /// that (see [`Balancer::retire_all`]).
    fn may_take(&self, b: &Backend) -> bool {
        b.is_available() || (self.gone.load(Ordering::Relaxed) && b.would_be_available())
    }

    /// Whether the algorithm is least-time (response times are sampled for it).
    pub fn measures_time(&self) -> bool {
        self.least_time.load(Ordering::Relaxed)
    }

    /// Whether the algorithm is header-hash (the key is a request header's, not the client's).
    pub fn hashes_header(&self) -> bool {
        self.header_hash.load(Ordering::Relaxed)
    }

    /// The health settings in force.
    pub fn health_settings(&self) -> HealthSettings {
        self.health.lock().clone()
    }

    /// Replaces the health settings (reload).
    pub fn set_health_settings(&self, settings: HealthSettings) {
        *self.health.lock() = settings;
    }

    /// Whether a member other than `b` could take a request now (available and not full).
    pub fn has_other(&self, b: &Backend) -> bool {
        let state = self.core.state.lock();
        state.members.iter().any(|m| m.id() != b.id() && self.may_take(m) && !m.is_full())
    }

    /// Connections or requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.core.waiting.load(Ordering::Relaxed)
    }

    /// Chooses an available, not-full backend not in `tried`, and increments its active count,
    /// in one step. When every such backend is full, waits up to `queue` for a slot.
    /// `key` is the hash key (see [`View::key`]); `None` makes the hashing algorithms fall back
    /// to least connections.
    pub fn pick(
        &self,
        key: impl Into<Option<u64>>,
        tried: &Tried,
        queue: Duration,
    ) -> Result<Pick, Unavailable> {
        let key = key.into();
        // The why is worded for the main log at info, the dashboard, or a JSON access log.
        let explain = log::log_enabled!(log::Level::Info)
            || crate::events::wants_pick()
            || crate::logging::access::wants_reason();
        let mut deadline: Option<Instant> = None;
        let mut waiting: Option<Waiting<'_>> = None;
        let mut state = self.core.state.lock();
        loop {
            let State { members, algorithm, selector } = &mut *state;
            let members: &[Arc<Backend>] = members;
            let allowed = |i: usize| {
                let b = &members[i];
                !tried.contains(b) && self.may_take(b) && !b.is_full()
            };
            let view = View { members, allowed: &allowed, now: now_ms(), key };
            if let Some(i) = selector.select(&view) {
                let reason =
                    if explain { explain::choice(*algorithm, &view, i, tried) } else { String::new() };
                let b = members[i].clone();
                b.take_slot();
                let guard = ActiveGuard { backend: b, core: self.core.clone() };
                return Ok(Pick { guard, reason, algorithm: algorithm.name() });
            }
            let full: Vec<Arc<Backend>> = members
                .iter()
                .filter(|b| !tried.contains(b) && self.may_take(b) && b.is_full())
                .cloned()
                .collect();
            if full.is_empty() {
                return Err(Unavailable::NoneUp { tried: tried.count() });
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + queue);
            if Instant::now() >= deadline {
                return Err(Unavailable::AllFull);
            }
            if waiting.is_none() {
                // Register, then look once more: a slot freed before the registration is seen
                // by that look, one freed after it wakes the wait (see `ActiveGuard::drop`).
                waiting = Some(Waiting::new(&self.core, full));
                continue;
            }
            // A wait on the backends: the worker's place may go to another meanwhile.
            let _ = crate::threads::gate::waiting(|| self.core.freed.wait_until(&mut state, deadline));
        }
    }

    /// The member whose sticky cookie is `id`, when it may take the request: up, not ejected,
    /// not in maintenance, not removed (draining is fine: that is what drain is for, as in HAProxy and
    /// nginx), not full, not tried. Otherwise the name of the member it was, if it still is one.
    pub fn pick_sticky(&self, id: u64, tried: &Tried) -> Result<Pick, Option<String>> {
        let state = self.core.state.lock();
        let Some(b) = state.members.iter().find(|b| sticky_id(b.name()) == id) else { return Err(None) };
        let usable = b.health().is_up()
            && !b.is_ejected()
            && b.admin_state() != crate::backend::AdminState::Maint
            && (!b.is_retired() || self.gone.load(Ordering::Relaxed))
            && !b.is_full()
            && !tried.contains(b);
        if !usable {
            return Err(Some(b.name().to_string()));
        }
        b.take_slot();
        let reason = format!("sticky cookie: {}", b.name());
        let guard = ActiveGuard { backend: b.clone(), core: self.core.clone() };
        Ok(Pick { guard, reason, algorithm: "sticky" })
    }

    /// Wakes queued picks to look again (a backend came back up).
    pub fn wake(&self) {
        drop(self.core.state.lock());
        self.core.freed.notify_all();
    }
}

/// A pick registered as waiting for a slot, counted on the backends it waits for.
struct Waiting<'a> {
    core: &'a Core,
    full: Vec<Arc<Backend>>,
}

impl<'a> Waiting<'a> {
    fn new(core: &'a Core, full: Vec<Arc<Backend>>) -> Waiting<'a> {
        for b in &full {
            b.set_queued(true);
        }
        core.waiting.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `ActiveGuard::drop` (store, fence, load on both sides): either
        // the guard sees this waiter, or this waiter's next look sees the freed slot.
        fence(Ordering::SeqCst);
        Waiting { core, full }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.core.waiting.fetch_sub(1, Ordering::SeqCst);
        for b in &self.full {
            b.set_queued(false);
        }
    }
}

/// Holds one unit of a backend's `active` count; dropping it gives the unit back (on every
/// path out of a relay or request, panics included) and wakes queued picks.
pub struct ActiveGuard {
    backend: Arc<Backend>,
    core: Arc<Core>,
}

impl fmt::Debug for ActiveGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActiveGuard({})", self.backend.name())
    }
}

impl ActiveGuard {
    /// The backend this guard counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.give_slot();
        fence(Ordering::SeqCst);
        if self.core.waiting.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this wake-up after the waiter went to sleep.
            drop(self.core.state.lock());
            self.core.freed.notify_all();
        }
    }
}

/// Helpers for the algorithms' tests.
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
