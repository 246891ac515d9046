//! Helpers for the algorithms' tests: members with given weights, and picking in a loop.

use std::sync::Arc;

use crate::backend::Backend;

/// Members named b0, b1, ... with the given weights.
pub fn members(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let addr = ([127, 0, 0, 1], 9000 + i as u16).into();
            Arc::new(Backend::new(format!("b{i}"), format!("b{i}"), addr, w, 0))
        })
        .collect()
}

/// Picks `n` times with `select`, everything allowed, returning the indices.
pub fn run(select: &mut dyn super::Select, members: &[Arc<Backend>], n: usize, key: u64) -> Vec<usize> {
    let allowed = |_: usize| true;
    let view = super::View { members, allowed: &allowed, now: crate::backend::now_ms(), key: Some(key) };
    (0..n).filter_map(|_| select.select(&view)).collect()
}
