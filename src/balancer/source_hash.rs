//! Source hashing on a consistent-hash ring: a client (by IP) sticks to one backend while the
//! set is stable, and when a backend leaves or goes down only its clients move (about 1/N).
//! The same ring serves header-hash, keyed by a request header instead of the address.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::least_connections::LeastConnections;
use super::{Select, View};
use crate::backend::Backend;

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 100;

/// The ring: sorted (point, member index), and least connections for requests without a key.
#[derive(Debug)]
pub struct SourceHash {
    ring: Vec<(u64, usize)>,
    fallback: LeastConnections,
}

/// A ring point: XXH3-64 (seed 0) of `"{name} {addr} {index}"`, stable across builds and
/// instances.
fn point(name: &str, addr: std::net::SocketAddr, index: u32) -> u64 {
    xxh3_64(format!("{name} {addr} {index}").as_bytes())
}

impl SourceHash {
    /// Places each member's points by its name and address, so a member keeps its place on the
    /// ring whatever else joins or leaves.
    pub fn new(members: &[Arc<Backend>]) -> SourceHash {
        let mut ring: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                (0..b.weight() * POINTS_PER_WEIGHT).map(move |p| (point(&b.name, b.addr, p), i))
            })
            .collect();
        ring.sort_unstable();
        SourceHash { ring, fallback: LeastConnections::new() }
    }
}

impl Select for SourceHash {
    fn select(&mut self, view: &View<'_>) -> Option<usize> {
        let Some(key) = view.key else {
            return self.fallback.select(view);
        };
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(point, _)| point < key);
        (0..self.ring.len()).map(|k| self.ring[(start + k) % self.ring.len()].1).find(|&i| view.allowed(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::source_key;
    use crate::balancer::testing::members;

    fn owner(ring: &mut SourceHash, b: &[Arc<Backend>], key: u64, down: Option<usize>) -> usize {
        let allowed = |i: usize| Some(i) != down;
        let view = View { members: b, allowed: &allowed, now: 0, key: Some(key) };
        ring.select(&view).expect("some backend")
    }

    fn keys() -> Vec<u64> {
        (0..2000u32).map(|i| source_key(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()))).collect()
    }

    #[test]
    fn a_client_sticks_and_clients_spread() {
        let b = members(&[1, 1, 1, 1]);
        let mut ring = SourceHash::new(&b);
        let k = keys();
        let first: Vec<usize> = k.iter().map(|&key| owner(&mut ring, &b, key, None)).collect();
        let again: Vec<usize> = k.iter().map(|&key| owner(&mut ring, &b, key, None)).collect();
        assert_eq!(first, again, "stable while the set is stable");
        for i in 0..4 {
            let share = first.iter().filter(|&&x| x == i).count() as f64 / k.len() as f64;
            assert!((0.15..0.35).contains(&share), "backend {i} gets {share}");
        }
    }

    #[test]
    fn only_the_lost_backends_clients_move() {
        let b = members(&[1, 1, 1, 1, 1]);
        let mut ring = SourceHash::new(&b);
        let k = keys();
        let before: Vec<usize> = k.iter().map(|&key| owner(&mut ring, &b, key, None)).collect();
        let after: Vec<usize> = k.iter().map(|&key| owner(&mut ring, &b, key, Some(2))).collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert!(before.iter().zip(&after).all(|(x, y)| x == y || *x == 2), "only backend 2's clients moved");
        let share = moved as f64 / k.len() as f64;
        assert!((0.1..0.3).contains(&share), "about 1/5 moved: {share}");
        // Removing it from the set entirely (a new ring) moves the same clients.
        let fewer: Vec<Arc<Backend>> =
            b.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, x)| x.clone()).collect();
        let mut ring2 = SourceHash::new(&fewer);
        for (key, was) in k.iter().zip(&after) {
            assert_eq!(fewer[owner(&mut ring2, &fewer, *key, None)].name, b[*was].name);
        }
    }

    #[test]
    fn weights_scale_the_share() {
        let b = members(&[1, 3]);
        let mut ring = SourceHash::new(&b);
        let k = keys();
        let heavy =
            k.iter().filter(|&&key| owner(&mut ring, &b, key, None) == 1).count() as f64 / k.len() as f64;
        assert!((0.65..0.85).contains(&heavy), "weight 3 of 4 gets {heavy}");
    }
}
