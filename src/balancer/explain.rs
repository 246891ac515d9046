//! The decision line's reason: why the balancer chose the member it chose, with the loads it
//! compared.

use std::fmt::Write as _;

use super::Tried;
use super::View;
use crate::backend::WEIGHT_SCALE;
use crate::config::Algorithm;

/// Why `chosen` was chosen, for the decision line: the loads compared (the chosen one first),
/// or for an exact least-connections tie, that the tie went round-robin
/// (`least-connections: tie at 0 → round-robin: app2`, then any members not in the tie).
pub(super) fn choice(algorithm: Algorithm, view: &View<'_>, chosen: usize, tried: &Tried) -> String {
    let mut reason = String::from(algorithm.name());
    let load = |reason: &mut String, i: usize| {
        let _ = write!(reason, "{}={}", view.members[i].name(), view.active(i));
        let w = view.weight(i);
        if w != WEIGHT_SCALE {
            let _ = write!(reason, "/w{}", w as f64 / WEIGHT_SCALE as f64);
        }
    };
    match algorithm {
        Algorithm::LeastConnections | Algorithm::RandomTwo => {
            reason.push(':');
            let others: Vec<usize> = (0..view.len()).filter(|&i| i != chosen && view.allowed(i)).collect();
            let ties = |i: &usize| !view.less_loaded(*i, chosen) && !view.less_loaded(chosen, *i);
            let (tied, rest): (Vec<usize>, Vec<usize>) = others.iter().partition(|i| ties(i));
            if algorithm == Algorithm::LeastConnections && !tied.is_empty() {
                let same = tied.iter().all(|&i| view.active(i) == view.active(chosen));
                if same && view.weight(chosen) == WEIGHT_SCALE {
                    let _ = write!(reason, " tie at {}", view.active(chosen));
                } else {
                    reason.push_str(" tie at");
                    for i in std::iter::once(chosen).chain(tied.iter().copied()) {
                        reason.push(' ');
                        load(&mut reason, i);
                    }
                }
                let _ = write!(reason, " → round-robin: {}", view.members[chosen].name());
                if !rest.is_empty() {
                    reason.push(';');
                }
                for i in rest {
                    reason.push(' ');
                    load(&mut reason, i);
                }
            } else {
                for i in std::iter::once(chosen).chain(others) {
                    reason.push(' ');
                    load(&mut reason, i);
                }
            }
        }
        Algorithm::RoundRobin => {
            let n = (0..view.len()).filter(|&i| view.allowed(i)).count();
            let _ = write!(reason, ": next in turn of {n}");
        }
        Algorithm::LeastTime => {
            // `least-time: api1 0.8ms×1 api2 12.1ms×0 → api1` (× the requests in flight).
            reason.push(':');
            for i in (0..view.len()).filter(|&i| view.allowed(i)) {
                match view.cost(i) {
                    Some(us) => {
                        let _ = write!(
                            reason,
                            " {} {:.1}ms×{}",
                            view.members[i].name(),
                            us / 1000.0,
                            view.active(i)
                        );
                    }
                    None => {
                        let _ = write!(reason, " {} cold", view.members[i].name());
                    }
                }
            }
            let _ = write!(reason, " → {}", view.members[chosen].name());
        }
        Algorithm::SourceHash | Algorithm::HeaderHash => match view.key {
            Some(key) => {
                let _ = write!(reason, ": key {key:016x}");
            }
            None => reason.push_str(": no key, least connections"),
        },
    }
    let failed = tried.failed();
    if failed > 0 {
        let _ = write!(reason, "; attempt {} after {failed} failed", failed + 1);
    }
    reason
}
