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
                (0..b.weight() * POINTS_PER_WEIGHT).map(move |p| (point(b.name(), b.addr(), p), i))
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
            assert_eq!(fewer[owner(&mut ring2, &fewer, *key, None)].name(), b[*was].name());
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

#[cfg(test)]
mod published {
    //! The 1/N movement bound and the manual's test vectors (docs/operations.md).
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use super::*;
    use crate::balancer::source_key;

    fn backends(names: &[(&str, &str)]) -> Vec<Arc<Backend>> {
        names
            .iter()
            .map(|(name, addr)| {
                let addr: SocketAddr = addr.parse().expect("addr");
                Arc::new(Backend::new(name.to_string(), name.to_string(), addr, 1, 0))
            })
            .collect()
    }

    fn owner(ring: &mut SourceHash, b: &[Arc<Backend>], ip: IpAddr) -> String {
        let allowed = |_: usize| true;
        let view = View { members: b, allowed: &allowed, now: 0, key: Some(source_key(ip)) };
        b[ring.select(&view).expect("a backend")].name().to_string()
    }

    /// The manual's vectors ("Running several instances"): another implementation of the ring
    /// (XXH3-64 seed 0; 100 points per unit of weight at `"{name} {ip}:{port} {index}"`; the
    /// client's key is XXH3-64 of its 4 or 16 address bytes; the first point at or after the
    /// key, wrapping) must give the same answers.
    #[test]
    fn published_test_vectors_hold() {
        let b = backends(&[("a", "10.0.0.1:80"), ("b", "10.0.0.2:80"), ("c", "10.0.0.3:80")]);
        let mut ring = SourceHash::new(&b);
        assert_eq!(ring.ring.len(), 300);
        let got: Vec<(String, String)> = VECTORS
            .iter()
            .map(|(c, _)| (c.to_string(), owner(&mut ring, &b, c.parse().expect("ip"))))
            .collect();
        let want: Vec<(String, String)> =
            VECTORS.iter().map(|(c, w)| (c.to_string(), w.to_string())).collect();
        assert_eq!(got, want);
        // The manual publishes the same table.
        let readme = include_str!("../../docs/operations.md");
        for (client, backend) in VECTORS {
            let row = format!("| `{client}` | {backend} |");
            assert!(readme.contains(&row), "docs/operations.md lacks the vector row {row}");
        }
    }

    /// Clients and where they go with backends a = 10.0.0.1:80, b = 10.0.0.2:80,
    /// c = 10.0.0.3:80 (all weight 1). Also in docs/operations.md.
    pub const VECTORS: &[(&str, &str)] = &[
        ("10.1.2.3", "a"),
        ("10.1.2.4", "b"),
        ("10.1.2.5", "c"),
        ("192.0.2.1", "b"),
        ("198.51.100.10", "a"),
        ("2001:db8::1", "a"),
    ];

    /// Removing one of N backends moves at most 1.3/N of 10,000 client addresses, and only
    /// the removed backend's clients.
    #[test]
    fn removing_one_of_n_backends_moves_at_most_1_3_over_n_of_10000_clients() {
        let clients: Vec<IpAddr> =
            (0..10_000u32).map(|i| IpAddr::from((0x0a00_0000u32 + i * 7919).to_be_bytes())).collect();
        for n in 2..=10usize {
            let names: Vec<(String, String)> =
                (1..=n).map(|i| (format!("app{i}"), format!("10.0.1.{i}:8080"))).collect();
            let refs: Vec<(&str, &str)> = names.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let all = backends(&refs);
            let mut ring = SourceHash::new(&all);
            let before: Vec<String> = clients.iter().map(|&ip| owner(&mut ring, &all, ip)).collect();
            for gone in 0..n {
                let rest: Vec<Arc<Backend>> =
                    all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| b.clone()).collect();
                let mut ring = SourceHash::new(&rest);
                let mut moved = 0;
                for (ip, was) in clients.iter().zip(&before) {
                    let now = owner(&mut ring, &rest, *ip);
                    if &now != was {
                        assert_eq!(was, &all[gone].name(), "{ip} moved from a backend that stayed");
                        moved += 1;
                    }
                }
                let share = moved as f64 / clients.len() as f64;
                assert!(
                    share <= 1.3 / n as f64,
                    "n={n}, removing {}: {share:.4} moved > 1.3/{n}",
                    all[gone].name()
                );
            }
        }
    }
}
