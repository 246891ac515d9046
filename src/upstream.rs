//! Reaching a backend: choose one, connect with the connect timeout, and on failure try the
//! next best (each backend at most once), logging every choice and every failure.

use std::net::TcpStream;
use std::time::Duration;

use crate::balancer::{Balancer, Pick, Tried};
use crate::error::{is_fd_exhaustion, Error};

/// Connects to the best backend that accepts, for the connection or request named by `label`
/// (e.g. `conn 17 from 127.0.0.1:51234`). Returns the connected socket and its counted pick, or
/// [`Error::NoBackend`] after every backend failed.
pub fn connect(
    balancer: &Balancer,
    label: &dyn std::fmt::Display,
    timeout: Duration,
) -> Result<(TcpStream, Pick), Error> {
    let mut tried = Tried::default();
    loop {
        let Some(pick) = balancer.pick(&tried) else {
            return Err(Error::NoBackend { tried: tried.count() });
        };
        let backend = pick.guard.backend();
        log::info!("{label} -> {} {} ({})", backend.name, backend.addr, pick.reason);
        let attempt = if timeout.is_zero() {
            TcpStream::connect(backend.addr)
        } else {
            TcpStream::connect_timeout(&backend.addr, timeout)
        };
        match attempt {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, pick));
            }
            Err(e) if is_fd_exhaustion(&e) => {
                // Our shortage, not the backend's: don't count it against the backend.
                log::warn!("{label}: connect to {} {}: {e}", backend.name, backend.addr);
                return Err(Error::Resource(e));
            }
            Err(e) => {
                backend.record_failure();
                log::warn!(
                    "{label}: connect to {} {} failed: {e}; trying the next backend",
                    backend.name,
                    backend.addr
                );
                tried.insert(pick.guard.index());
            }
        }
    }
}
