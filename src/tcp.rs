//! TCP mode: each accepted connection is balanced once, connected (with retries), relayed, and
//! logged at its end with bytes each way and duration.

use std::fmt;
use std::sync::Arc;

use crate::balancer::{source_key, Balancer};
use crate::config::Config;
use crate::error::{Cause, Failure, Party, Phase};
use crate::logging::{held_back, RateLimit};
use crate::registry::Conn;
use crate::relay::{self, Buffers};
use crate::stats::ProxyCounters;
use crate::tls::Listener;
use crate::tls_accept;
use crate::tunnel::{self, End};
use crate::upstream::{self, Limits};

/// What a TCP-mode worker needs, shared by all workers.
pub struct TcpContext {
    /// The configuration the workers started with (timeouts, limits).
    pub config: Config,
    /// Picks the backend for each connection.
    pub balancer: Arc<Balancer>,
    /// The listener's TLS material: TLS is terminated and plaintext relayed, as HAProxy's
    /// `mode tcp` with `ssl`.
    pub tls: Option<Arc<Listener>>,
    /// TLS to backends marked `tls`.
    pub backend_tls: Option<Arc<crate::tls::Backends>>,
    /// Handshake counters.
    pub counters: Arc<ProxyCounters>,
}

struct Label<'a>(&'a Conn);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} from {}", self.0.id, self.0.peer)
    }
}

static UNAVAILABLE: RateLimit = RateLimit::new();

/// Serves one client connection to its end in the calling worker (relaying both directions;
/// see [`relay`]), with `bufs` as the relay buffers. Never panics on network errors; every
/// outcome is logged.
pub fn serve(conn: Conn, ctx: &TcpContext, bufs: &mut Buffers) {
    // The handshake comes first, within header_ms: a client that cannot finish it never
    // takes a backend slot.
    let Some(client) = tls_accept::open(&conn, ctx.tls.as_deref(), ctx.config.timeouts.header, &ctx.counters)
    else {
        return;
    };
    let label = Label(&conn);
    let limits = Limits { connect: ctx.config.timeouts.connect, queue: ctx.config.timeouts.queue };
    let key = Some(source_key(conn.peer.ip()));
    let tls = ctx.backend_tls.as_deref();
    let (backend, pick) = match upstream::connect(&ctx.balancer, key, &conn, &label, limits, tls) {
        Ok(found) => found,
        Err(f) if f.phase == Phase::Pick => {
            if let Some(n) = UNAVAILABLE.check() {
                log::warn!("{label}: {f}; closing the client{}", held_back(n));
            }
            return;
        }
        Err(f) => {
            log::error!("{label}: {f}; closing the client");
            return;
        }
    };
    let b = pick.guard.backend().clone();
    let attached = conn.attach(backend.tcp(), b.id);
    let idle = ctx.config.timeouts.idle;
    let (client_sock, mut client_tls) = client.into_parts();
    let (backend_sock, mut backend_tls) = backend.into_parts();
    let outcome = match (&mut client_tls, &mut backend_tls) {
        (None, None) => relay::relay(client_sock, &backend_sock, idle, bufs),
        (c, b) => {
            let client = End { sock: client_sock, tls: c.as_mut(), early: &[] };
            let backend = End { sock: &backend_sock, tls: b.as_mut(), early: &[] };
            tunnel::tunnel(client, backend, idle, bufs)
        }
    };
    drop(attached);
    // The connection is over: give its slot back before saying so, so that whoever reads the
    // log line sees the count already lowered.
    drop(pick);
    let elapsed = conn.accepted.elapsed();
    b.record_bytes(outcome.up, outcome.down);
    b.latency.record(elapsed);
    let ms = elapsed.as_millis();
    match outcome.error {
        None => log::info!(
            "conn {} closed: {} -> {} {} bytes up, {} bytes down, {ms} ms",
            conn.id,
            conn.peer,
            b.name,
            outcome.up,
            outcome.down
        ),
        Some((party, e)) => {
            let cause = if e.kind() == std::io::ErrorKind::TimedOut { Cause::Timeout } else { Cause::Io(e) };
            let f = Failure::at(&b.name, party, Phase::Relay, cause);
            // Counted, but not as a passive health failure: only connect failures are.
            if f.counts_against_backend() && !matches!(f.cause, Cause::Timeout) {
                b.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let by = if party == Party::Client { "client" } else { "backend" };
            // A relay's only time limit is idle_ms: say so.
            let why = if matches!(f.cause, Cause::Timeout) {
                "idle timeout".to_string()
            } else {
                f.cause.to_string()
            };
            log::warn!(
                "conn {} ended by {by} error ({why}): {} -> {} {} bytes up, {} bytes down, {ms} ms",
                conn.id,
                conn.peer,
                b.name,
                outcome.up,
                outcome.down
            )
        }
    }
}
