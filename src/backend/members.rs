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
            members_of(s, &s.addrs).into_iter().map(move |(name, addr)| Arc::new(member(s, name, addr)))
        })
        .collect()
}

/// A fresh member of `spec` at `addr`, named `name`.
pub fn member(spec: &BackendSpec, name: String, addr: SocketAddr) -> Backend {
    let b = Backend::new(name, spec.name.clone(), addr, spec.weight, spec.max_conns);
    follow_line(&b, spec);
    b
}

/// Gives `b` what its line says beyond its weight and limit, at start and at each reload that
/// keeps it: the PROXY header it is sent, and the `Host` of its http health checks
/// (`name:port` as the line writes a DNS name, since a virtual host answers its own name, as
/// nginx sends `proxy_pass`'s host; else its address).
pub fn follow_line(b: &Backend, spec: &BackendSpec) {
    b.set_send_proxy(spec.send_proxy);
    b.set_check_host(if spec.dns { &spec.target } else { "" });
}
