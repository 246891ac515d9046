//! The backends: their identity, their live counters, and the guard that keeps `active` honest.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::BackendSpec;

/// One backend and its counters. Counters are atomics so stats and logs read them without a
/// lock; only the balancer's choose-and-increment step takes its mutex.
#[derive(Debug)]
pub struct Backend {
    /// Name used in logs and stats.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic (1..=1000).
    pub weight: u32,
    /// Connections (TCP mode) or requests (HTTP mode) in flight.
    pub active: AtomicUsize,
    /// Connections or requests ever sent here.
    pub total: AtomicU64,
    /// Failed connects and broken exchanges.
    pub failures: AtomicU64,
    /// Bytes relayed from clients to this backend.
    pub bytes_up: AtomicU64,
    /// Bytes relayed from this backend to clients.
    pub bytes_down: AtomicU64,
}

impl Backend {
    /// A backend with all counters at zero.
    pub fn new(spec: &BackendSpec) -> Backend {
        Backend {
            name: spec.name.clone(),
            addr: spec.addr,
            weight: spec.weight,
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// Counts one failure against this backend.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds relayed byte counts.
    pub fn record_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}

/// The shared, fixed set of backends.
pub type Backends = Arc<[Backend]>;

/// Builds the table from the configuration.
pub fn table(specs: &[BackendSpec]) -> Backends {
    specs.iter().map(Backend::new).collect()
}

/// Holds one unit of a backend's `active` count; dropping it gives the unit back, on every
/// path out of a relay (return, error, or panic).
#[derive(Debug)]
pub struct ActiveGuard {
    backends: Backends,
    index: usize,
}

impl ActiveGuard {
    /// Takes over a unit the caller already added to `backends[index].active`.
    pub(crate) fn adopt(backends: Backends, index: usize) -> ActiveGuard {
        ActiveGuard { backends, index }
    }

    /// The backend this guard counts against.
    pub fn backend(&self) -> &Backend {
        &self.backends[self.index]
    }

    /// Its position in the table.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backends[self.index].active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A per-backend summary line: `app1 127.0.0.1:9090 total=12 failures=0 up=120B down=160B`.
pub fn summary_line(b: &Backend) -> String {
    format!(
        "{} {} total={} failures={} active={} up={}B down={}B",
        b.name,
        b.addr,
        b.total.load(Ordering::Relaxed),
        b.failures.load(Ordering::Relaxed),
        b.active.load(Ordering::Relaxed),
        b.bytes_up.load(Ordering::Relaxed),
        b.bytes_down.load(Ordering::Relaxed),
    )
}
