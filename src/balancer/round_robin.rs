//! Smooth weighted round-robin, as nginx does it: equal weights cycle in order, and weighted
//! backends are interleaved rather than served in bursts.

use super::Select;
use crate::backend::Backend;

/// Each backend's running score; the highest is chosen and pays back the total weight.
#[derive(Debug)]
pub struct RoundRobin {
    current: Vec<i64>,
}

impl RoundRobin {
    /// State for `n` backends, all scores at zero.
    pub fn new(n: usize) -> RoundRobin {
        RoundRobin { current: vec![0; n] }
    }
}

impl Select for RoundRobin {
    fn select(&mut self, backends: &[Backend], allowed: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != backends.len() {
            self.current = vec![0; backends.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, b) in backends.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            let weight = i64::from(b.weight);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|j| self.current[i] > self.current[j]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::backends;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let b = backends(weights);
        let mut rr = RoundRobin::new(b.len());
        (0..n).filter_map(|_| rr.select(&b, &|_| true)).collect()
    }

    #[test]
    fn equal_weights_cycle_in_order() {
        assert_eq!(picks(&[1, 1, 1], 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weights_interleave_smoothly() {
        // nginx's documented example: weights 5,1,1 give a a b a c a a.
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
        let p = picks(&[1, 2, 3], 600);
        let count = |i| p.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (100, 200, 300));
    }

    #[test]
    fn skips_disallowed() {
        let b = backends(&[1, 1, 1]);
        let mut rr = RoundRobin::new(3);
        let p: Vec<_> = (0..4).filter_map(|_| rr.select(&b, &|i| i != 1)).collect();
        assert_eq!(p, [0, 2, 0, 2]);
        assert_eq!(rr.select(&b, &|_| false), None);
    }
}
