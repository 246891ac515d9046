//! Reaching a backend: choose one, connect with the connect timeout, and on failure try the
//! next best (each backend at most once), logging every choice and every failure. Failed
//! connects count against the backend (passive health).

use std::net::TcpStream;
use std::time::Duration;

use crate::balancer::{Balancer, Pick, Tried};
use crate::error::Error;
use crate::net::{describe, is_local_resource, open};

/// Connect timeout, and how long to wait for a slot when every backend is full.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub queue: Duration,
}

/// Connects to the best backend that accepts, for the connection named by `label` (e.g.
/// `conn 17 from 127.0.0.1:51234`), `key` being the client's source-hash key. Returns the
/// connected socket and its counted pick.
pub fn connect(
    balancer: &Balancer,
    key: u64,
    label: &dyn std::fmt::Display,
    limits: Limits,
) -> Result<(TcpStream, Pick), Error> {
    let mut tried = Tried::default();
    loop {
        let pick = balancer.pick(key, &tried, limits.queue).map_err(Error::Unavailable)?;
        let backend = pick.guard.backend().clone();
        log::info!("{label} -> {} {} ({})", backend.name, backend.addr, pick.reason);
        match open(backend.addr, limits.connect) {
            Ok(stream) => return Ok((stream, pick)),
            Err(e) if is_local_resource(&e) => {
                // Our shortage, not the backend's: don't count it against the backend.
                log::warn!("{label}: connect to {} {}: {e}", backend.name, backend.addr);
                return Err(Error::Resource(e));
            }
            Err(e) => {
                let why = describe(&e);
                log::warn!(
                    "{label}: connect to {} {} failed: {why}; trying the next backend",
                    backend.name,
                    backend.addr
                );
                balancer.observe_failure(&backend, &why);
                tried.insert(&backend);
            }
        }
    }
}
