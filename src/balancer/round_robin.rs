//! Smooth weighted round-robin, as nginx does it: equal weights cycle in order, and weighted
//! backends are interleaved rather than served in bursts.

use super::{Select, View};

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
    fn select(&mut self, view: &View<'_>) -> Option<usize> {
        if self.current.len() != view.len() {
            self.current = vec![0; view.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..view.len()).filter(|&i| view.allowed(i)) {
            let weight = view.weight(i) as i64;
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
    use crate::balancer::testing::{members, run};

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        run(&mut RoundRobin::new(weights.len()), &members(weights), n, 0)
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
        let b = members(&[1, 1, 1]);
        let mut rr = RoundRobin::new(3);
        let not_middle = |i: usize| i != 1;
        let view = View { members: &b, allowed: &not_middle, now: 0, key: Some(0) };
        let p: Vec<_> = (0..4).filter_map(|_| rr.select(&view)).collect();
        assert_eq!(p, [0, 2, 0, 2]);
    }
}
