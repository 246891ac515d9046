//! Weighted least-connections: the backend with the fewest active connections per unit of
//! (effective) weight; ties go round-robin so equal loads spread.

use super::{Select, View};

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
    fn select(&mut self, view: &View<'_>) -> Option<usize> {
        let n = view.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if view.allowed(i) && best.is_none_or(|b| view.less_loaded(i, b)) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::balancer::testing::{members, run};

    #[test]
    fn chooses_the_least_loaded() {
        let b = members(&[1, 1, 1]);
        for (x, c) in b.iter().zip([2, 0, 1]) {
            x.set_active(c);
        }
        assert_eq!(run(&mut LeastConnections::new(), &b, 1, 0), [1]);
    }

    #[test]
    fn ties_go_round_robin() {
        let b = members(&[1, 1, 1]);
        assert_eq!(run(&mut LeastConnections::new(), &b, 6, 0), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_scale_the_load() {
        let b = members(&[1, 3]);
        let mut lc = LeastConnections::new();
        for _ in 0..400 {
            let i = run(&mut lc, &b, 1, 0)[0];
            b[i].set_active(b[i].active() + 1);
        }
        assert_eq!(b[0].active(), 100);
        assert_eq!(b[1].active(), 300);
    }

    #[test]
    fn respects_allowed_and_empty_sets() {
        let b = members(&[1, 1]);
        b[1].set_active(5);
        let only_second = |i: usize| i == 1;
        let view = View { members: &b, allowed: &only_second, now: 0, key: Some(0) };
        assert_eq!(LeastConnections::new().select(&view), Some(1));
        let none = |_: usize| false;
        let view = View { members: &b, allowed: &none, now: 0, key: Some(0) };
        assert_eq!(LeastConnections::new().select(&view), None);
        assert!(run(&mut LeastConnections::new(), &[], 1, 0).is_empty());
    }
}
