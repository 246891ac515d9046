//! Weighted least-connections: the backend with the fewest active connections per unit of
//! weight; ties go round-robin so equal loads spread.

use std::sync::atomic::Ordering;

use super::Select;
use crate::backend::Backend;

/// Least-connections state: where the next tie-breaking scan starts.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: usize,
}

impl LeastConnections {
    /// Starts its tie-breaking scan at the first backend.
    pub fn new() -> LeastConnections {
        LeastConnections::default()
    }
}

impl Select for LeastConnections {
    fn select(&mut self, backends: &[Backend], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if !allowed(i) {
                continue;
            }
            let active = backends[i].active.load(Ordering::Acquire) as u64;
            let weight = u64::from(backends[i].weight);
            // active/weight < best_active/best_weight, without division.
            let better = match best {
                None => true,
                Some((_, a, w)) => active * w < a * weight,
            };
            if better {
                best = Some((i, active, weight));
            }
        }
        let (chosen, _, _) = best?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::backends;

    fn set_active(b: &[Backend], counts: &[usize]) {
        for (x, &c) in b.iter().zip(counts) {
            x.active.store(c, Ordering::Relaxed);
        }
    }

    #[test]
    fn chooses_the_least_loaded() {
        let b = backends(&[1, 1, 1]);
        set_active(&b, &[2, 0, 1]);
        assert_eq!(LeastConnections::new().select(&b, &|_| true), Some(1));
    }

    #[test]
    fn ties_go_round_robin() {
        let b = backends(&[1, 1, 1]);
        let mut lc = LeastConnections::new();
        let picks: Vec<_> = (0..6).filter_map(|_| lc.select(&b, &|_| true)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_scale_the_load() {
        let b = backends(&[1, 3]);
        let mut lc = LeastConnections::new();
        for _ in 0..400 {
            let i = lc.select(&b, &|_| true).expect("some");
            b[i].active.fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(b[0].active.load(Ordering::Relaxed), 100);
        assert_eq!(b[1].active.load(Ordering::Relaxed), 300);
    }

    #[test]
    fn respects_allowed_and_empty_sets() {
        let b = backends(&[1, 1]);
        set_active(&b, &[0, 5]);
        assert_eq!(LeastConnections::new().select(&b, &|i| i == 1), Some(1));
        assert_eq!(LeastConnections::new().select(&b, &|_| false), None);
        assert_eq!(LeastConnections::new().select(&backends(&[]), &|_| true), None);
    }
}
