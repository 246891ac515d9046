//! Least time: the member with the lowest peak-EWMA cost × (active + 1) / weight, as nginx's
//! `least_time` and Linkerd's balancer; a member with no sample yet is tried first, and ties go
//! round-robin. The cost itself is [`crate::backend::latency::PeakEwma`].

use super::{Select, View};

/// Where the next tie-breaking scan starts.
#[derive(Debug, Default)]
pub struct LeastTime {
    next: usize,
}

/// Member `i`'s score: cost × (active + 1) / weight; a cold member scores lowest.
pub fn score(view: &View<'_>, i: usize) -> f64 {
    match view.cost(i) {
        None => f64::NEG_INFINITY,
        Some(cost) => cost * (view.active(i) + 1) as f64 / view.weight(i).max(1) as f64,
    }
}

impl Select for LeastTime {
    fn select(&mut self, view: &View<'_>) -> Option<usize> {
        let n = view.len();
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            if !view.allowed(i) {
                continue;
            }
            let s = score(view, i);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((i, s));
            }
        }
        let (chosen, _) = best?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }
}
