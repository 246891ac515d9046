//! Which backend goes next: the selection trait, and the one place where choosing meets counting.
//!
//! Algorithms ([`least_connections`], [`round_robin`]) only choose among the indices they are
//! allowed; they know nothing of health or retries. [`Balancer::pick`] holds the mutex while the
//! algorithm chooses and the chosen backend's `active` counter is incremented, so two workers
//! never both see the same backend as least loaded. The returned [`ActiveGuard`] gives the unit
//! back when dropped.

pub mod least_connections;
pub mod round_robin;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::backend::{ActiveGuard, Backend, Backends};
use crate::config::Algorithm;

/// A selection algorithm. Called with the balancer's mutex held.
pub trait Select: Send {
    /// Chooses one backend among those for which `allowed(i)` is true; `None` when there is none.
    fn select(&mut self, backends: &[Backend], allowed: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Builds the selector for `algorithm` over `backends`.
pub fn selector(algorithm: Algorithm, backends: &[Backend]) -> Box<dyn Select> {
    match algorithm {
        Algorithm::LeastConnections => Box::new(least_connections::LeastConnections::new()),
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(backends.len())),
    }
}

/// The set of backends already tried for one connection, so each is tried at most once.
#[derive(Debug, Default, Clone)]
pub struct Tried(Vec<bool>);

impl Tried {
    /// Marks backend `i` as tried.
    pub fn insert(&mut self, i: usize) {
        if self.0.len() <= i {
            self.0.resize(i + 1, false);
        }
        self.0[i] = true;
    }

    /// Whether backend `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i).copied().unwrap_or(false)
    }

    /// How many were tried.
    pub fn count(&self) -> usize {
        self.0.iter().filter(|t| **t).count()
    }
}

/// A chosen backend, its counted slot, and why it was chosen.
#[derive(Debug)]
pub struct Pick {
    /// Holds the backend's active count until dropped.
    pub guard: ActiveGuard,
    /// The reason, e.g. `least-connections: app3=0 app1=2 app2=1`; empty when info logging is off.
    pub reason: String,
}

/// Chooses backends and counts what it chose.
pub struct Balancer {
    backends: Backends,
    algorithm: Algorithm,
    selector: Mutex<Box<dyn Select>>,
}

impl Balancer {
    /// A balancer over `backends` using `algorithm`.
    pub fn new(backends: Backends, algorithm: Algorithm) -> Balancer {
        let selector = Mutex::new(selector(algorithm, &backends));
        Balancer { backends, algorithm, selector }
    }

    /// The backends it balances over.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Chooses a backend not in `tried` and increments its active count, in one step.
    /// `None` when every backend was tried.
    pub fn pick(&self, tried: &Tried) -> Option<Pick> {
        let explain = log::log_enabled!(log::Level::Info);
        let mut counts = Vec::new();
        let index = {
            let mut selector = self.selector.lock();
            let index = selector.select(&self.backends, &|i| !tried.contains(i))?;
            if explain && self.algorithm == Algorithm::LeastConnections {
                counts.extend(self.backends.iter().map(|b| b.active.load(Ordering::Relaxed)));
            }
            self.backends[index].active.fetch_add(1, Ordering::AcqRel);
            index
        };
        self.backends[index].total.fetch_add(1, Ordering::Relaxed);
        let reason = if explain { self.explain(index, &counts, tried) } else { String::new() };
        Some(Pick { guard: ActiveGuard::adopt(self.backends.clone(), index), reason })
    }

    fn explain(&self, chosen: usize, counts: &[usize], tried: &Tried) -> String {
        let mut reason = String::from(self.algorithm.name());
        match self.algorithm {
            Algorithm::LeastConnections => {
                reason.push(':');
                let order = std::iter::once(chosen).chain((0..counts.len()).filter(|&i| i != chosen));
                for i in order.filter(|&i| !tried.contains(i)) {
                    let b = &self.backends[i];
                    let _ = write!(reason, " {}={}", b.name, counts[i]);
                    if b.weight != 1 {
                        let _ = write!(reason, "/w{}", b.weight);
                    }
                }
            }
            Algorithm::RoundRobin => {
                let _ = write!(reason, ": next in turn of {}", self.backends.len() - tried.count());
            }
        }
        let failed = tried.count();
        if failed > 0 {
            let _ = write!(reason, "; retry after {failed} failed");
        }
        reason
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::backend::{self, Backends};
    use crate::config::BackendSpec;

    /// Backends named b0, b1, ... with the given weights.
    pub fn backends(weights: &[u32]) -> Backends {
        let specs: Vec<BackendSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendSpec {
                name: format!("b{i}"),
                target: format!("127.0.0.1:{}", 9000 + i),
                addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                weight,
            })
            .collect();
        backend::table(&specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_counts_and_the_guard_gives_back() {
        let b = Balancer::new(testing::backends(&[1, 1]), Algorithm::LeastConnections);
        let first = b.pick(&Tried::default()).expect("pick");
        let second = b.pick(&Tried::default()).expect("pick");
        assert_ne!(first.guard.index(), second.guard.index());
        assert_eq!(b.backends()[0].active.load(Ordering::Relaxed), 1);
        drop(first);
        drop(second);
        assert!(b.backends().iter().all(|x| x.active.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn tried_backends_are_skipped_and_exhaustion_is_none() {
        let b = Balancer::new(testing::backends(&[1, 1, 1]), Algorithm::RoundRobin);
        let mut tried = Tried::default();
        for _ in 0..3 {
            let pick = b.pick(&tried).expect("pick");
            assert!(!tried.contains(pick.guard.index()));
            tried.insert(pick.guard.index());
        }
        assert!(b.pick(&tried).is_none());
    }

    #[test]
    fn concurrent_picks_never_lose_a_count() {
        let b =
            std::sync::Arc::new(Balancer::new(testing::backends(&[1, 2, 3]), Algorithm::LeastConnections));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let held: Vec<_> = (0..600).filter_map(|_| b.pick(&Tried::default())).collect();
                    held.len()
                })
            })
            .collect();
        let picked: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(picked, 2400);
        assert!(b.backends().iter().all(|x| x.active.load(Ordering::Relaxed) == 0));
        let totals: Vec<u64> = b.backends().iter().map(|x| x.total.load(Ordering::Relaxed)).collect();
        assert_eq!(totals.iter().sum::<u64>(), 2400);
    }
}
