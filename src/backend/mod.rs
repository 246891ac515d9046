//! The backends: identity, configured and effective weight, connection limit, health, counters,
//! latency, open tunnels, and their idle keep-alive connections. [`health`] holds the rise/fall
//! hysteresis and slow start, [`eject`] outlier ejection, [`latency`] the response-time
//! figures, [`pool`] the idle connections, [`members`] what a `[backends]` line stands for;
//! `passive` what live traffic says about a backend.
//!
//! A `Backend` owns its fields: others read them through methods and change them only through
//! the few that mean something (take or give a slot, record a failure, pool a connection).
//!
//! A backend is shared as `Arc<Backend>`: the balancer's member list can be replaced (reload,
//! DNS) while connections to a removed backend still hold it and drain.

pub mod eject;
pub mod health;
pub mod latency;
pub mod members;
mod passive;
pub mod pool;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::eject::Ejection;
use crate::backend::health::Health;
use crate::backend::latency::Latency;
use crate::backend::pool::IdlePool;
use crate::config::ProxyVersion;

pub use crate::clock::now_ms;

/// What an operator set at runtime through the admin API (HAProxy's `set server state`).
/// Lasts until a reload changes the backend's line, or a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In rotation (the default).
    Ready,
    /// No new connections or requests; open ones finish. Health checks go on.
    Drain,
    /// Out of rotation and health checks paused.
    Maint,
}

impl AdminState {
    /// `ready`, `drain` or `maint`, as the API path names it.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// Weights are kept in thousandths, so slow start can ramp a weight of 1 smoothly.
pub const WEIGHT_SCALE: u64 = 1000;

/// One backend and its live state. Counters are atomics so stats and logs read them without a
/// lock; only the balancer's choose-and-increment step takes its mutex.
#[derive(Debug)]
pub struct Backend {
    /// Unique in this process; identifies the backend across member-list changes.
    id: u64,
    /// Name used in logs and stats (`app1`, or `web@10.0.0.5:80` for a DNS member).
    name: String,
    /// The `[backends]` key it came from.
    spec: String,
    /// Where to connect.
    addr: SocketAddr,
    weight: AtomicU32,
    /// The weight its configuration line gave, so a reload can tell a changed line from a
    /// runtime weight change.
    line_weight: AtomicU32,
    max_conns: AtomicUsize,
    removed: AtomicBool,
    /// An [`AdminState`] as u8: read on every pick, so an atomic rather than a lock.
    admin: AtomicU8,
    /// Connections (TCP mode) or requests (HTTP mode) in flight.
    active: AtomicUsize,
    /// Picks waiting for a slot that this backend (up, but at `max_conns`) could serve.
    queued: AtomicUsize,
    /// Connections or requests ever sent here.
    total: AtomicU64,
    /// Failed connects and broken exchanges.
    failures: AtomicU64,
    /// Bytes relayed from clients to this backend.
    bytes_up: AtomicU64,
    /// Bytes relayed from this backend to clients.
    bytes_down: AtomicU64,
    /// Up or down, and why.
    health: Health,
    /// Out of rotation for a while after failures in a row.
    ejection: Ejection,
    /// Request (HTTP) or connection (TCP) durations.
    latency: Latency,
    /// Idle persistent connections (HTTP mode).
    idle: IdlePool,
    /// Open tunnels (HTTP upgrades).
    tunnels: AtomicU64,
    /// PROXY header version sent first on each connection: 0 none, 1 v1, 2 v2 (`send_proxy=`).
    send_proxy: AtomicU8,
    /// The `Host` of its http health checks: `name:port` as its line writes a DNS name, else
    /// empty (the address is sent).
    check_host: parking_lot::Mutex<Arc<str>>,
}

impl Backend {
    /// A backend with all counters at zero, considered up.
    pub fn new(name: String, spec: String, addr: SocketAddr, weight: u32, max_conns: usize) -> Backend {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Backend {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            spec,
            addr,
            weight: AtomicU32::new(weight),
            line_weight: AtomicU32::new(weight),
            max_conns: AtomicUsize::new(max_conns),
            removed: AtomicBool::new(false),
            admin: AtomicU8::new(0),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            health: Health::default(),
            ejection: Ejection::default(),
            latency: Latency::default(),
            idle: IdlePool::default(),
            tunnels: AtomicU64::new(0),
            send_proxy: AtomicU8::new(0),
            check_host: parking_lot::Mutex::new(Arc::from("")),
        }
    }

    /// Unique in this process; identifies the backend across member-list changes.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its name in logs and stats (`app1`, or `web@10.0.0.5:80` for a DNS member).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `[backends]` key it came from.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Up or down, and why.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Outlier ejection's state.
    pub fn ejection(&self) -> &Ejection {
        &self.ejection
    }

    /// Request (HTTP) or connection (TCP) durations.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Connections (TCP mode) or requests (HTTP mode) in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Picks waiting for a slot that this backend (up, but at `max_conns`) could serve.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Connections or requests ever sent here.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Failed connects and broken exchanges.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Bytes relayed (to it, from it).
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_up.load(Ordering::Relaxed), self.bytes_down.load(Ordering::Relaxed))
    }

    /// Takes a slot for a new connection or request (the balancer's pick, under its lock).
    pub fn take_slot(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a slot back (the balancer's guard, on drop).
    pub fn give_slot(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a pick waiting (`true`) or no longer waiting for a slot here.
    pub fn set_queued(&self, waiting: bool) {
        if waiting {
            self.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sets the in-flight count, for the algorithms' tests.
    #[cfg(test)]
    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    /// A quiet idle connection to reuse, if one is pooled.
    pub fn take_idle(&self, max_idle: Duration) -> Option<TcpStream> {
        self.idle.take(&self.name, max_idle)
    }

    /// Closes the pooled connections no request should use any more (see [`IdlePool::sweep`]);
    /// how many.
    pub fn sweep_idle(&self, max_idle: Duration) -> usize {
        let closed = self.idle.sweep(&self.name, max_idle);
        if self.is_retired() {
            // Removed while the sweep held one: what it put back goes too.
            self.idle.clear();
        }
        closed
    }

    /// Pools a connection after a complete exchange; closed instead when `cap` are idle here
    /// already or the backend was removed.
    pub fn put_idle(&self, stream: TcpStream, cap: usize) {
        if !self.is_retired() {
            self.idle.put(stream, cap);
        }
    }

    /// How many idle connections are pooled.
    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Counts a tunnel (an HTTP upgrade) to it as open until the guard drops.
    pub fn open_tunnel(self: &Arc<Self>) -> TunnelGuard {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        TunnelGuard(self.clone())
    }

    /// Open tunnels.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// The PROXY header version each new connection starts with (`send_proxy=`), if any.
    pub fn send_proxy(&self) -> Option<ProxyVersion> {
        match self.send_proxy.load(Ordering::Relaxed) {
            1 => Some(ProxyVersion::V1),
            2 => Some(ProxyVersion::V2),
            _ => None,
        }
    }

    /// Sets (a reload too) the `Host` of its http health checks; empty: its address.
    pub fn set_check_host(&self, host: &str) {
        *self.check_host.lock() = Arc::from(host);
    }

    /// The `Host` its http health checks send: the name its line gives, else its address (an
    /// IPv6 one without its zone, which a `Host` may not carry as such).
    pub fn check_host(&self) -> String {
        let host = self.check_host.lock().clone();
        if host.is_empty() {
            match self.addr {
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                a => a.to_string(),
            }
        } else {
            host.to_string()
        }
    }

    /// Sets (a reload too) the PROXY header sent first to this backend (`send_proxy=`).
    pub fn set_send_proxy(&self, v: Option<ProxyVersion>) {
        let n = match v {
            None => 0,
            Some(ProxyVersion::V1) => 1,
            Some(ProxyVersion::V2) => 2,
        };
        self.send_proxy.store(n, Ordering::Relaxed);
    }

    /// The configured weight (1..=[`crate::config::MAX_WEIGHT`] from the file; 0 up to it set
    /// at runtime, 0 taking no new traffic, as HAProxy's weight 0).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The weight its configuration line gave.
    pub fn line_weight(&self) -> u32 {
        self.line_weight.load(Ordering::Relaxed)
    }

    /// Sets the weight at runtime (admin API); the line's weight is kept for reloads.
    pub fn set_runtime_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// What an operator set.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Sets the operator's state; returns the previous one. Going back to ready from drain or
    /// maintenance starts slow start when `slowstart` is not zero.
    pub fn set_admin_state(&self, state: AdminState, slowstart: std::time::Duration) -> AdminState {
        let before = AdminState::from_u8(self.admin.swap(state as u8, Ordering::Relaxed));
        if state == AdminState::Ready && before != AdminState::Ready {
            self.health.begin_slowstart(slowstart);
        }
        before
    }

    /// The connection limit; 0 means none.
    pub fn max_conns(&self) -> usize {
        self.max_conns.load(Ordering::Relaxed)
    }

    /// Applies a reloaded weight and limit (a changed line: any runtime weight is replaced).
    pub fn set_limits(&self, weight: u32, max_conns: usize) {
        self.weight.store(weight, Ordering::Relaxed);
        self.line_weight.store(weight, Ordering::Relaxed);
        self.max_conns.store(max_conns, Ordering::Relaxed);
    }

    /// The weight in use now, in thousandths: the configured weight, ramped while in slow start.
    pub fn effective_weight(&self, now: u64) -> u64 {
        let full = u64::from(self.weight()) * WEIGHT_SCALE;
        match self.health.slowstart_fraction(now) {
            Some((done, len)) => (full * done / len.max(1)).max(1),
            None => full,
        }
    }

    /// Whether new connections may go here: up, not removed by a reload, in rotation (not
    /// drained or in maintenance by an operator) and of a weight above 0.
    pub fn is_available(&self) -> bool {
        !self.removed.load(Ordering::Relaxed) && self.would_be_available()
    }

    /// Whether it could take a request but for a reload's removal: in service, weighted, up
    /// and not ejected (see [`crate::balancer::Balancer::retire_all`]).
    pub fn would_be_available(&self) -> bool {
        self.admin.load(Ordering::Relaxed) == AdminState::Ready as u8
            && self.weight.load(Ordering::Relaxed) > 0
            && self.health.is_up()
            && !self.is_ejected()
    }

    /// The state as /stats writes it: `maintenance`, `draining` (by an operator or removed by
    /// a reload), `down` or `up` (slow start is `up`, with its own flag beside it).
    pub fn state_text(&self) -> &'static str {
        match self.admin_state() {
            AdminState::Maint => "maintenance",
            AdminState::Drain => "draining",
            _ if self.is_retired() => "draining",
            _ if !self.health.is_up() => "down",
            _ if self.is_ejected() => "ejected",
            _ => "up",
        }
    }

    /// Whether it is at its connection limit.
    pub fn is_full(&self) -> bool {
        let max = self.max_conns();
        max > 0 && self.active() >= max
    }

    /// Marks it removed from the member list: no new connections, idle ones closed.
    pub fn retire(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.idle.clear();
    }

    /// Whether a reload or DNS change removed it.
    pub fn is_retired(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Adds relayed byte counts.
    pub fn record_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}

/// An open tunnel, counted on its backend until dropped.
#[derive(Debug)]
pub struct TunnelGuard(Arc<Backend>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A per-backend summary line: `app1 127.0.0.1:9090 up total=12 failures=0 active=0 sent=120B
/// received=160B` (`up`, `EJECTED` or `DOWN`; bytes sent to the backend and received from it).
pub fn summary_line(b: &Backend) -> String {
    let (up, down) = b.bytes();
    format!(
        "{} {} {} total={} failures={} active={} sent={up}B received={down}B",
        b.name,
        b.addr,
        match (b.health.is_up(), b.is_ejected()) {
            (false, _) => "DOWN",
            (true, true) => "EJECTED",
            (true, false) => "up",
        },
        b.total(),
        b.failures(),
        b.active(),
    )
}

#[cfg(test)]
mod tests;
