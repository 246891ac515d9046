//! Reaching a backend: the one connect path of both modes. [`dial`] opens a connection to a
//! picked backend and classifies a failure (the backend's, or a local shortage that never counts
//! against it); [`connect`] is TCP mode's loop: choose, dial, and on failure the next best
//! (each backend at most once), logging every choice and every failure.

use std::fmt::Display;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::balancer::{Balancer, Pick, Tried};
use crate::conn::Conn;
use crate::error::{Cause, Failure, Party, Phase};
use crate::events;
use crate::net::proxy_protocol;
use crate::net::{describe, is_local_resource, open};
use crate::tls::stream::Stream;

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
    attempt(balancer, backend, timeout, client, label).map_err(|(f, why)| {
        if f.party == Party::Backend {
            log::warn!("{label}: connect to {} {} failed ({why})", backend.name(), backend.addr());
        }
        f
    })
}

/// One connect attempt: the socket, or the failure and its short description (`connection
/// refused`, `timed out`). A local shortage is logged here, as it ends the connection whatever
/// the caller would say next.
fn attempt(
    balancer: &Balancer,
    backend: &Backend,
    timeout: Duration,
    client: &Conn,
    label: &dyn Display,
) -> Result<TcpStream, (Failure, String)> {
    // A `send_proxy=` backend hears first who the client is (PROXY protocol), as HAProxy's
    // `send-proxy`: the header goes right after the connect, before any byte of the client's.
    let opened = open(backend.addr(), timeout).and_then(|stream| {
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
                backend.name(),
                backend.addr()
            );
            let why = e.to_string();
            Err((Failure::at(backend.name(), Party::Local, Phase::Connect, Cause::Io(e)), why))
        }
        Err(e) => {
            let why = describe(&e);
            let cause = if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
                Cause::Timeout
            } else {
                Cause::Io(e)
            };
            let f = Failure::at(backend.name(), Party::Backend, Phase::Connect, cause);
            balancer.record_failure(backend, &f);
            Err((f, why))
        }
    }
}

/// Makes a dialled connection TLS when `backend` is marked `tls` (its `[backends]` key is in
/// `tls`), with `timeout` (0: none) for the handshake; plain otherwise. A failed handshake
/// counts against the backend, as a failed connect does; the caller logs it, saying what
/// comes next.
pub fn secure(
    balancer: &Balancer,
    backend: &Backend,
    stream: TcpStream,
    tls: Option<&crate::tls::Backends>,
    timeout: Duration,
) -> Result<Stream<TcpStream>, Failure> {
    let Some((config, name)) = tls.and_then(|t| t.get(backend.spec())) else {
        return Ok(Stream::Plain(stream));
    };
    let limit = (!timeout.is_zero()).then_some(timeout);
    let _ = stream.set_read_timeout(limit);
    let _ = stream.set_write_timeout(limit);
    crate::tls::stream::connect(stream, config, &name).map_err(|why| {
        let why = format!("TLS with {name}: {why}");
        let f = Failure::at(backend.name(), Party::Backend, Phase::Connect, Cause::Invalid(why));
        balancer.record_failure(backend, &f);
        f
    })
}

/// Chooses a backend for `client`, the connection named by `label` (e.g. `conn 17 from
/// 127.0.0.1:51234`), `key` being its hash key, and connects, trying the next
/// best on failure. Returns the connected socket and its counted pick.
///
/// Each decision is logged once its outcome is known, so a line never reads as a success that
/// a warning then contradicts: `-> app2 127.0.0.1:9091 connected in 0.3 ms (why)`, or
/// `connect to app2 127.0.0.1:9091 failed (connection refused); retrying app1 127.0.0.1:9090`
/// (`; no other backend to try` when none is left).
pub fn connect(
    balancer: &Balancer,
    key: Option<u64>,
    client: &Conn,
    label: &dyn Display,
    limits: Limits,
    tls: Option<&crate::tls::Backends>,
) -> Result<(Stream<TcpStream>, Pick), Failure> {
    let mut tried = Tried::default();
    // The failed attempt not yet logged: its line names what comes next.
    let mut failed: Option<(std::sync::Arc<Backend>, String)> = None;
    loop {
        let pick = match balancer.pick(key, &tried, limits.queue) {
            Ok(pick) => pick,
            Err(why) => {
                if let Some((b, e)) = failed.take() {
                    log::warn!(
                        "{label}: connect to {} {} failed ({e}); no other backend to try",
                        b.name(),
                        b.addr()
                    );
                }
                return Err(Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(why)));
            }
        };
        let backend = pick.guard.backend().clone();
        if let Some((b, e)) = failed.take() {
            log::warn!(
                "{label}: connect to {} {} failed ({e}); retrying {} {}",
                b.name(),
                b.addr(),
                backend.name(),
                backend.addr()
            );
        }
        let started = Instant::now();
        let connected = attempt(balancer, &backend, limits.connect, client, label).and_then(|stream| {
            secure(balancer, &backend, stream, tls, limits.connect).map_err(|f| {
                let why = f.cause.to_string();
                (f, why)
            })
        });
        match connected {
            Ok(stream) => {
                log::info!(
                    "{label} -> {} {} connected in {:.2} ms ({})",
                    backend.name(),
                    backend.addr(),
                    started.elapsed().as_secs_f64() * 1000.0,
                    pick.reason
                );
                if events::wants_pick() {
                    events::pick(label, &client.peer, backend.name(), pick.algorithm, &pick.reason);
                }
                return Ok((stream, pick));
            }
            Err((f, _)) if f.party == Party::Local => return Err(f),
            Err((f, why)) => {
                if events::wants_retry() {
                    events::retry(label, &client.peer, backend.name(), &f.to_string());
                }
                tried.insert(&backend);
                failed = Some((backend, why));
            }
        }
    }
}
