//! Reaching a backend: the one connect path and the one retry loop of both modes. [`dial`]
//! opens a connection to a picked backend and classifies a failure (the backend's, or a local
//! shortage that never counts against it); [`secure`] adds TLS for a backend marked `tls`;
//! [`tries::run`] chooses, attempts and on failure does what [`retry::after`] decides. TCP
//! mode's attempt is [`connect`]'s dial; HTTP mode's is a whole exchange.

pub mod retry;
pub mod tries;

use std::fmt::Display;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::balancer::{Balancer, Pick};
use crate::conn::Conn;
use crate::error::{Cause, Failure, Party, Phase};
use crate::net::proxy_protocol;
use crate::net::{is_local_resource, open};
use crate::tls::stream::Stream;

static SHORTAGE: crate::logging::RateLimit = crate::logging::RateLimit::new();

/// Connect timeout, and how long to wait for a slot when every backend is full.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub queue: Duration,
}

/// Opens a fresh connection to `backend` within `timeout` (0: the system's), for `client`. Our
/// own shortage (no descriptor, no local port) is a `Party::Local` failure, counted against
/// nobody, and logged here for the connection named by `label`, as it ends the connection
/// whatever comes next. The backend's failure is for the retry loop to record and log. With
/// `send_proxy=` on the backend, the connection starts with a PROXY header carrying the
/// client's address.
pub fn dial(
    backend: &Backend,
    timeout: Duration,
    client: &Conn,
    label: &dyn Display,
) -> Result<TcpStream, Failure> {
    // A `send_proxy=` backend hears first who the client is (PROXY protocol), as HAProxy's
    // `send-proxy`: the header goes right after the connect, before any byte of the client's.
    let opened = crate::threads::gate::waiting(|| open(backend.addr(), timeout)).and_then(|stream| {
        if let Some(version) = backend.send_proxy() {
            (&stream).write_all(&proxy_protocol::encode(version, client.origin()))?;
        }
        Ok(stream)
    });
    opened.map_err(|e| {
        if is_local_resource(&e) {
            // Once a second at most: a shortage comes in floods (each client then has its
            // 503, and the access log its line).
            if let Some(n) = SHORTAGE.check() {
                log::warn!(
                    "{label}: connect to {} {}: {e} (a shortage on this host, not counted against the backend){}",
                    backend.name(),
                    backend.addr(),
                    crate::logging::held_back(n)
                );
            }
            return Failure::at(backend.name(), Party::Local, Phase::Connect, Cause::Io(e));
        }
        let cause = if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
            Cause::Timeout
        } else {
            Cause::Io(e)
        };
        Failure::at(backend.name(), Party::Backend, Phase::Connect, cause)
    })
}

/// Makes a dialled connection TLS when `backend` is marked `tls` (its `[backends]` key is in
/// `tls`), with `timeout` (0: none) for the handshake; plain otherwise. A failed handshake is
/// the backend's failure to connect, as a refused connect is.
pub fn secure(
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
        Failure::at(backend.name(), Party::Backend, Phase::Connect, Cause::Invalid(why))
    })
}

/// TCP mode: chooses a backend for `client` (see [`tries::run`]) and connects, trying the next
/// best on failure. Returns the connected socket and its counted pick, logged as `conn 17 from
/// 127.0.0.1:51234 -> app2 127.0.0.1:9091 connected in 0.3 ms (why)`.
pub fn connect(
    balancer: &Balancer,
    who: tries::Client<'_>,
    limits: Limits,
    tls: Option<&crate::tls::Backends>,
) -> Result<(Stream<TcpStream>, Pick), Failure> {
    tries::run(balancer, who, limits.queue, |pick, backend| {
        let started = Instant::now();
        let connected = dial(backend, limits.connect, who.conn, who.label)
            .and_then(|stream| secure(backend, stream, tls, limits.connect));
        match connected {
            Ok(stream) => {
                if balancer.measures_time() {
                    backend.latency().observe_cost(started.elapsed());
                }
                log::info!(
                    "{} -> {} {} connected in {:.2} ms ({})",
                    who.label,
                    backend.name(),
                    backend.addr(),
                    started.elapsed().as_secs_f64() * 1000.0,
                    pick.reason
                );
                Ok((stream, pick))
            }
            Err(f) => {
                let next = retry::after(&f, false, false);
                Err((f, next))
            }
        }
    })
}
