//! Per-client policy (`[limits]`): who may connect at all (`allow`, `deny`), the client's real
//! address behind trusted proxies, how fast it may go (governor's GCRA, keyed by address, over a
//! store of our own that forgets the least recently seen past `max_clients`), and how many
//! connections it may hold at once. Rejections are logged at most once per address per 10 s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use parking_lot::{Mutex, RwLock};

use crate::config::LimitSettings;

/// How often a rejected address is logged at most.
const NOTE_EVERY: Duration = Duration::from_secs(10);

/// Rate states by client address, at most `max` of them: past it, the least recently seen
/// tenth is forgotten (a forgotten client starts afresh, with a full burst).
struct Store {
    map: Mutex<HashMap<IpAddr, (InMemoryState, u64)>>,
    max: usize,
    tick: AtomicU64,
}

/// The limiter's handle on the [`Store`] (the policy keeps another, to count it).
struct Bounded(Arc<Store>);

impl StateStore for Bounded {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let store = &self.0;
        let now = store.tick.fetch_add(1, Ordering::Relaxed);
        let mut map = store.map.lock();
        if map.len() >= store.max && !map.contains_key(key) {
            let mut seen: Vec<u64> = map.values().map(|v| v.1).collect();
            let k = (store.max / 10).max(1).min(seen.len() - 1);
            let cutoff = *seen.select_nth_unstable(k).1;
            map.retain(|_, v| v.1 > cutoff);
        }
        let entry = map.entry(*key).or_insert_with(|| (InMemoryState::default(), now));
        entry.1 = now;
        entry.0.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

type Limiter = RateLimiter<IpAddr, Bounded, DefaultClock>;

/// What `[limits]` says, ready to apply.
struct Rules {
    settings: LimitSettings,
    limiter: Option<Arc<(Limiter, Arc<Store>)>>,
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not allowed (`deny`, or not in `allow`): 403.
    Denied,
    /// Over `rate`: 429, retry after this long.
    Rate(Duration),
    /// Over `max_conns_per_client`: 429 and close.
    Connections,
}

impl Refused {
    /// The status a refused client gets (http) or its access line carries (tcp).
    pub fn status(self) -> u16 {
        if self == Refused::Denied {
            403
        } else {
            429
        }
    }

    /// What a refused client reads, and its access line's note.
    pub fn text(self) -> &'static str {
        match self {
            Refused::Denied => "client address not allowed",
            Refused::Rate(_) => "too many requests from this address",
            Refused::Connections => "too many connections from this address",
        }
    }
}

/// The per-client policy in force; reloads replace its rules (rate states start afresh when
/// `rate`, `burst` or `max_clients` change).
pub struct Policy {
    rules: RwLock<Arc<Rules>>,
    /// Whether any rule is set: when none, nothing is looked up per request.
    active: AtomicBool,
    conns: Mutex<HashMap<IpAddr, usize>>,
    notes: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl Policy {
    pub fn new(settings: &LimitSettings) -> Arc<Policy> {
        let policy = Policy {
            rules: RwLock::new(Arc::new(Rules { settings: LimitSettings::default(), limiter: None })),
            active: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
        };
        policy.update(settings);
        Arc::new(policy)
    }

    /// Puts `settings` in force (start, reload).
    pub fn update(&self, settings: &LimitSettings) {
        let old = self.rules.read().clone();
        let same_rate = (old.settings.rate, old.settings.burst, old.settings.max_clients)
            == (settings.rate, settings.burst, settings.max_clients);
        let limiter = match &old.limiter {
            Some(kept) if same_rate => Some(kept.clone()),
            _ => settings.rate.map(|rate| Arc::new(limiter(rate, settings))),
        };
        let active = settings.rate.is_some()
            || settings.max_conns_per_client > 0
            || !settings.allow.is_empty()
            || !settings.deny.is_empty()
            || !settings.trusted_proxies.is_empty();
        *self.rules.write() = Arc::new(Rules { settings: settings.clone(), limiter });
        self.active.store(active, Ordering::Relaxed);
    }

    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether `ip` may connect at all: `deny` first, then `allow` when set.
    pub fn admits(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.is_active() {
            return Ok(());
        }
        let rules = self.rules.read();
        let ip = ip.to_canonical();
        let s = &rules.settings;
        if s.deny.iter().any(|n| n.contains(&ip))
            || (!s.allow.is_empty() && !s.allow.iter().any(|n| n.contains(&ip)))
        {
            return Err(Refused::Denied);
        }
        Ok(())
    }

    /// Counts one request (tcp: one connection) of `ip` against `rate`.
    pub fn rate(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.is_active() {
            return Ok(());
        }
        let Some(limiter) = self.rules.read().limiter.clone() else { return Ok(()) };
        let limiter = &limiter.0;
        limiter
            .check_key(&ip.to_canonical())
            .map_err(|until| Refused::Rate(until.wait_time_from(limiter.clock().now())))
    }

    /// Holds one of `ip`'s connections until the [`Slot`] drops; refused past
    /// `max_conns_per_client`. `None` when there is no such limit.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Slot>, Refused> {
        let max = self.rules.read().settings.max_conns_per_client;
        if max == 0 {
            return Ok(None);
        }
        let ip = ip.to_canonical();
        let mut conns = self.conns.lock();
        let n = conns.entry(ip).or_insert(0);
        if *n >= max {
            return Err(Refused::Connections);
        }
        *n += 1;
        Ok(Some(Slot { policy: self.clone(), ip }))
    }

    /// Admits a new connection from `ip`: `allow`/`deny`, then (with `rate`, tcp mode) the rate,
    /// then the connection limit. The slot to hold while it lives, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, rate: bool) -> Result<Option<Slot>, Refused> {
        if !self.is_active() {
            return Ok(None);
        }
        self.admits(ip)?;
        if rate {
            self.rate(ip)?;
        }
        self.open(ip)
    }

    /// Whether `peer` is a trusted proxy, whose `X-Forwarded-For` is believed.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.is_active()
            && self.rules.read().settings.trusted_proxies.iter().any(|n| n.contains(&peer.to_canonical()))
    }

    /// The client behind trusted `peer`: the right-most address of `forwarded_for` (every
    /// `X-Forwarded-For` value, in order) that is not itself trusted (nginx's
    /// `real_ip_recursive on`), the left-most when all are; a hop that is no address stops the
    /// walk at the last trusted one seen (`peer` if none).
    pub fn real_client(&self, peer: IpAddr, forwarded_for: &[u8]) -> IpAddr {
        let rules = self.rules.read();
        let trusted = |ip: &IpAddr| rules.settings.trusted_proxies.iter().any(|n: &IpNet| n.contains(ip));
        let text = String::from_utf8_lossy(forwarded_for);
        // A hop may carry a port (`1.2.3.4:5678`, `[::1]:80`), as some balancers write it.
        let parse = |hop: &str| {
            hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        };
        let mut leftmost = None;
        for hop in text.rsplit(',').map(str::trim) {
            match parse(hop).map(|ip| ip.to_canonical()) {
                Some(ip) if trusted(&ip) => leftmost = Some(ip),
                Some(ip) => return ip,
                None => return leftmost.unwrap_or(peer),
            }
        }
        // Every hop trusted: the left-most, as nginx's real_ip_recursive.
        leftmost.unwrap_or(peer)
    }

    /// Whether to log a rejection of `ip` now (at most once per 10 s per address), with how
    /// many were not logged since.
    pub fn note(&self, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let mut notes = self.notes.lock();
        if notes.len() >= 10_000 && !notes.contains_key(&ip) {
            notes.retain(|_, (at, _)| now.duration_since(*at) < NOTE_EVERY);
            // Still full: a flood of distinct addresses; this one is counted, not logged, and
            // the map does not grow.
            if notes.len() >= 10_000 {
                return None;
            }
        }
        match notes.get_mut(&ip) {
            Some((at, held)) if now.duration_since(*at) < NOTE_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                (*at, *held) = (now, 0);
                Some(n)
            }
            None => {
                notes.insert(ip, (now, 0));
                Some(0)
            }
        }
    }

    /// Client addresses whose rate is tracked now.
    pub fn tracked(&self) -> usize {
        self.rules.read().limiter.as_ref().map_or(0, |l| l.1.map.lock().len())
    }
}

fn limiter((n, per): (u32, Duration), s: &LimitSettings) -> (Limiter, Arc<Store>) {
    let n = std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
    let quota = if per >= Duration::from_secs(60) { Quota::per_minute(n) } else { Quota::per_second(n) };
    let burst = std::num::NonZeroU32::new(s.burst.saturating_add(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let store = Arc::new(Store {
        map: Mutex::new(HashMap::new()),
        max: s.max_clients.max(16),
        tick: AtomicU64::new(0),
    });
    (RateLimiter::new(quota.allow_burst(burst), Bounded(store.clone()), DefaultClock::default()), store)
}

/// One connection of a client, counted against `max_conns_per_client` until dropped.
pub struct Slot {
    policy: Arc<Policy>,
    ip: IpAddr,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.ip)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut conns = self.policy.conns.lock();
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
