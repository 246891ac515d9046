//! Power of two random choices: pick two allowed backends at random and take the less loaded
//! (weighted, as least-connections). Nearly as even as least-connections, without every worker
//! converging on the same backend when counts are stale.

use super::{Select, View};

/// Its random source.
#[derive(Debug)]
pub struct RandomTwo {
    rng: fastrand::Rng,
}

impl RandomTwo {
    /// A selector with a randomly seeded generator.
    pub fn new() -> RandomTwo {
        RandomTwo { rng: fastrand::Rng::new() }
    }

    /// A selector with a fixed seed, for tests.
    pub fn with_seed(seed: u64) -> RandomTwo {
        RandomTwo { rng: fastrand::Rng::with_seed(seed) }
    }
}

impl Default for RandomTwo {
    fn default() -> RandomTwo {
        RandomTwo::new()
    }
}

impl Select for RandomTwo {
    fn select(&mut self, view: &View<'_>) -> Option<usize> {
        let n = (0..view.len()).filter(|&i| view.allowed(i)).count();
        if n == 0 {
            return None;
        }
        let nth = |k: usize| (0..view.len()).filter(|&i| view.allowed(i)).nth(k);
        let a = self.rng.usize(..n);
        if n == 1 {
            return nth(a);
        }
        let mut b = self.rng.usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a)?, nth(b)?);
        Some(if view.less_loaded(b, a) { b } else { a })
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::balancer::testing::{members, run};

    #[test]
    fn never_picks_the_most_loaded_of_three() {
        let b = members(&[1, 1, 1]);
        for (x, c) in b.iter().zip([0, 1, 9]) {
            x.set_active(c);
        }
        let picks = run(&mut RandomTwo::with_seed(7), &b, 300, 0);
        assert!(!picks.contains(&2), "the busiest is always beaten by its partner");
        assert!(picks.iter().filter(|&&i| i == 0).count() > 150, "the idlest wins most");
    }

    #[test]
    fn held_load_follows_the_weights() {
        let b = members(&[1, 2, 5]);
        let mut r = RandomTwo::with_seed(42);
        for _ in 0..8000 {
            let i = run(&mut r, &b, 1, 0)[0];
            b[i].set_active(b[i].active() + 1);
        }
        let load: Vec<f64> = b.iter().map(|x| x.active() as f64 / 1000.0).collect();
        for (got, want) in load.iter().zip([1.0, 2.0, 5.0]) {
            assert!((got - want).abs() < 0.15, "load per weight unit {load:?}");
        }
    }

    #[test]
    fn single_and_empty_sets() {
        assert_eq!(run(&mut RandomTwo::with_seed(1), &members(&[3]), 3, 0), [0, 0, 0]);
        assert!(run(&mut RandomTwo::with_seed(1), &[], 1, 0).is_empty());
    }
}
