//! Reaching a backend: the one connect path of both modes. [`dial`] opens a connection to a
//! picked backend and classifies a failure (the backend's, or a local shortage that never counts
//! against it); [`connect`] is TCP mode's loop: choose, dial, and on failure the next best
//! (each backend at most once), logging every choice and every failure.

use std::fmt::Display;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::backend::Backend;
use crate::balancer::{Balancer, Pick, Tried};
use crate::error::{Cause, Failure, Party, Phase};
use crate::net::{describe, is_local_resource, open};
use crate::proxy_protocol;
use crate::registry::Conn;

/// Connect timeout, and how long to wait for a slot when every backend is full.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub queue: Duration,
}

/// Opens a fresh connection to `backend` within `timeout` (0: the system's), for `client`. A
/// failure is logged for the connection named by `label`; when it is the backend's it also
/// counts against it (passive health). Our own shortage (no descriptor, no local port) is a
/// `Party::Local` failure, counted against nobody. With `send_proxy=` on the backend, the
/// connection starts with a PROXY header carrying the client's address.
pub fn dial(
    balancer: &Balancer,
    backend: &Backend,
    timeout: Duration,
    client: &Conn,
    label: &dyn Display,
) -> Result<TcpStream, Failure> {
    let opened = open(backend.addr, timeout).and_then(|stream| {
        if let Some(version) = backend.send_proxy() {
            (&stream).write_all(&proxy_protocol::encode(version, client.origin()))?;
        }
        Ok(stream)
    });
    match opened {
        Ok(stream) => Ok(stream),
        Err(e) if is_local_resource(&e) => {
            log::warn!(
                "{label}: connect to {} {}: {e} (a shortage on this host, not counted against the backend)",
                backend.name,
                backend.addr
            );
            Err(Failure::at(&backend.name, Party::Local, Phase::Connect, Cause::Io(e)))
        }
        Err(e) => {
            let why = describe(&e);
            log::warn!(
                "{label}: connect to {} {} failed: {why}; trying the next backend",
                backend.name,
                backend.addr
            );
            balancer.observe_failure(backend, &why);
            let cause = if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
                Cause::Timeout
            } else {
                Cause::Io(e)
            };
            Err(Failure::at(&backend.name, Party::Backend, Phase::Connect, cause))
        }
    }
}

/// Chooses a backend for `client`, the connection named by `label` (e.g. `conn 17 from
/// 127.0.0.1:51234`), `key` being its hash key, and connects, trying the next
/// best on failure. Returns the connected socket and its counted pick.
pub fn connect(
    balancer: &Balancer,
    key: Option<u64>,
    client: &Conn,
    label: &dyn Display,
    limits: Limits,
) -> Result<(TcpStream, Pick), Failure> {
    let mut tried = Tried::default();
    loop {
        let pick = balancer
            .pick(key, &tried, limits.queue)
            .map_err(|why| Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(why)))?;
        let backend = pick.guard.backend().clone();
        log::info!("{label} -> {} {} ({})", backend.name, backend.addr, pick.reason);
        match dial(balancer, &backend, limits.connect, client, label) {
            Ok(stream) => return Ok((stream, pick)),
            Err(f) if f.party == Party::Local => return Err(f),
            Err(_) => tried.insert(&backend),
        }
    }
}
