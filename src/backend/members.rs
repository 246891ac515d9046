//! The members a `[backends]` line stands for: one backend per resolved address.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Backend;
use crate::config::BackendSpec;

/// The members `spec` stands for: one per resolved address. A DNS name's members are named
/// `name@addr` so each keeps its identity as records come and go.
pub fn members_of(spec: &BackendSpec, addrs: &[SocketAddr]) -> Vec<(String, SocketAddr)> {
    addrs
        .iter()
        .map(|&a| (if spec.dns { format!("{}@{a}", spec.name) } else { spec.name.clone() }, a))
        .collect()
}

/// Builds fresh members for every spec at its resolved addresses.
pub fn build(specs: &[BackendSpec]) -> Vec<Arc<Backend>> {
    specs
        .iter()
        .flat_map(|s| {
            members_of(s, &s.addrs).into_iter().map(move |(name, addr)| {
                Arc::new(
                    Backend::new(name, s.name.clone(), addr, s.weight, s.max_conns)
                        .with_send_proxy(s.send_proxy),
                )
            })
        })
        .collect()
}
