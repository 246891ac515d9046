//! HTTP mode: a worker owns one client connection and serves its requests in order, each
//! balanced on its own, over pooled persistent backend connections.
//!
//! Per request: read and check the head (`header_ms`), pick a backend, take a pooled
//! connection or connect (the next backend on failure), send the rewritten head and stream the
//! body, read the response head (`response_ms`), stream the body back re-framed for the client,
//! pool the backend connection if it can be reused, and write one access-log line.
//!
//! Retries, as nginx's `proxy_next_upstream error` with `non_idempotent` off: when a backend
//! connection breaks before any byte of the response arrived and nothing of the request body
//! was consumed, an idempotent request (or one with an `Idempotency-Key`) is sent again, on a
//! fresh connection (a stale pooled one) or to the next backend. Others get 502.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{
    access_log, header_expired, holds_plaintext, is_timeout, lingering_close, read_now, slow_client,
    write_error,
};
use super::exchange::{Attempt, Exchange, Served};
use super::upgrade::{self, Parked};
use crate::balancer::{header_value_key, source_key, Balancer};
use crate::config::{as_limit, Config};
use crate::error::{Answer, Party};
use crate::h1::request::{self, Forwarding, RequestHead};
use crate::h1::{BodyKind, Coalesce, Wire};
use crate::park::Parker;
use crate::registry::{Conn, PartialHead};
use crate::stats::ProxyCounters;
use crate::tls::Listener;
use crate::tls_accept::{self, ClientStream, Opened};
use crate::tls_stream::Pending;

/// The `Via` pseudonym.
pub const VIA: &str = "lbproxy";

/// How long a keep-alive client may idle before it parks (or, when it cannot, before its worker
/// gives back its stack pages); at shutdown, before its connection is closed.
pub const TRIM_AFTER: Duration = crate::stack::TRIM_AFTER;

/// How long a plain keep-alive client may idle before it parks (see [`crate::park`]) and
/// frees its worker: far longer than a busy client takes between two requests (microseconds
/// to a few ms, tens of ms at c=1000), short enough that a new connection arriving while
/// every worker holds an idle client soon gets one.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How long a new plain connection's worker waits for its first byte before parking it.
const FIRST_BYTE: Duration = Duration::from_millis(10);

/// "Forever" for a zero (disabled) timeout.
const NO_LIMIT: Duration = Duration::from_secs(365 * 86_400);

/// What HTTP-mode workers share.
pub struct HttpContext {
    pub config: Config,
    pub balancer: Arc<Balancer>,
    pub counters: Arc<ProxyCounters>,
    /// Set at shutdown: finish the current request, then close.
    pub stopping: Arc<AtomicBool>,
    /// The listener's TLS material, when it speaks TLS.
    pub tls: Option<Arc<Listener>>,
    /// Where idle keep-alive connections wait without a worker (plain HTTP only: a TLS
    /// session's state stays with its worker).
    pub parker: Option<Arc<Parker>>,
    /// TLS to backends marked `tls`.
    pub backend_tls: Option<Arc<crate::tls::Backends>>,
}

/// Buffers a worker reuses from one connection to the next.
#[derive(Default)]
pub struct Scratch {
    pub(super) client_in: Vec<u8>,
    pub(super) client_out: Vec<u8>,
    pub(super) backend_in: Vec<u8>,
    pub(super) backend_out: Vec<u8>,
    pub(super) head: Vec<u8>,
    pub(super) resp_head: Vec<u8>,
}

impl Scratch {
    /// Frees the buffers between requests of an idle connection. Freed memory goes back to the
    /// allocator and serves busy workers, so resident memory follows the requests in flight,
    /// not the connections held.
    fn release(&mut self) {
        *self = Scratch::default();
    }
}

/// What the access log line says.
#[derive(Default)]
pub struct Record {
    pub backend: String,
    pub reason: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub note: String,
}

/// Caches the client socket's read timeout, so it is set only when it changes.
struct ReadTimeout<'a> {
    stream: &'a TcpStream,
    current: Option<Duration>,
}

impl ReadTimeout<'_> {
    fn set(&mut self, d: Duration) {
        let d = Some(if d.is_zero() { NO_LIMIT } else { d.max(Duration::from_millis(1)) });
        if self.current != d {
            let _ = self.stream.set_read_timeout(d);
            self.current = d;
        }
    }
}

/// Serves one client connection until it closes, asks to close, idles out, or the proxy stops.
pub fn serve(mut conn: Conn, ctx: &HttpContext, scratch: &mut Scratch) {
    // Back from the parker with a quiet tunnel (an upgrade): it carries on, not HTTP.
    if conn.quiet().is_some() {
        upgrade::resume(conn, ctx);
        return;
    }
    // Back from the parker: idle since then, its next request readable; or in the middle of a
    // head (or new), more of it readable.
    let resumed = conn.parked_since.take();
    let partial = conn.head.take();
    let handshake = conn.handshake.take();
    let greeted = partial.is_some() && handshake.is_none();
    // The header clock starts when a worker takes the connection, not at accept: time spent
    // queued for a worker is the proxy's, not the client's. A TLS handshake is part of it.
    // Parking does not restart it.
    let mut head_started = resumed.or(partial.as_ref().map(|p| p.started)).unwrap_or_else(Instant::now);
    let t = &ctx.config.timeouts;
    let session = conn.tls_session.take();
    let stream = if let Some(session) = session {
        Some(crate::tls_stream::Stream::Tls(&conn.stream, session))
    } else if resumed.is_some() || greeted {
        Some(crate::tls_stream::Stream::Plain(&conn.stream))
    } else if let (Some(listener), Some(parker)) = (ctx.tls.as_deref(), ctx.parker.as_deref()) {
        // The TLS handshake waits in the parker too, its state with the connection.
        let deadline = (!t.header.is_zero()).then(|| head_started + t.header);
        let state = handshake.unwrap_or(Pending::Fresh);
        match tls_accept::resume(&conn, listener, state, deadline, FIRST_BYTE, &ctx.counters) {
            Opened::Ready(stream) => Some(stream),
            Opened::Waiting(state) => {
                conn.head = Some(PartialHead { started: head_started, bytes: Vec::new() });
                conn.handshake = Some(state);
                parker.park_head(conn, deadline);
                return;
            }
            Opened::Closed => None,
        }
    } else {
        tls_accept::open(&conn, ctx.tls.as_deref(), t.header, &ctx.counters)
    };
    let Some(stream) = stream else { return };
    let parker = ctx.parker.as_deref();
    let client: &ClientStream = &stream;
    let tcp: &TcpStream = &conn.stream;
    let _ = tcp.set_write_timeout(as_limit(t.idle));
    let client_ip = conn.peer.ip().to_string();
    // The client's source-hash key, once per connection rather than per request.
    let client_key = source_key(conn.peer.ip());
    let local = || tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let proto = if stream.is_tls() { "https" } else { "http" };
    let hash_header = ctx.balancer.hashes_header().then_some(ctx.config.scale.hash_header.as_str());
    let underscores = ctx.config.http.underscores_in_headers;
    let fwd =
        Forwarding { client: &client_ip, local_host: &local, via: VIA, proto, hash_header, underscores };
    let mut cw = Wire::with_buffer(client, std::mem::take(&mut scratch.client_in));
    if let Some(p) = &partial {
        cw.preload(&p.bytes);
    }
    let mut timeout = ReadTimeout { stream: tcp, current: None };
    let mut served = u64::from(resumed.is_some());
    let mut linger = false;
    let mut trimmed = false;
    let mut park = false;
    let mut park_head = false;
    // An upgrade's tunnel gone quiet, to park.
    let mut tunnel = None;
    // Requests served since this worker took the connection: a connection back from the
    // parker serves the request that woke it before it may park again.
    let mut taken = 0u64;
    loop {
        // Wait for (the rest of) a request head.
        let head = loop {
            if !cw.buffered().is_empty() {
                scratch.head.clear();
                match request::parse(cw.buffered(), ctx.config.http.max_head_bytes, &fwd, &mut scratch.head) {
                    Ok(Some(head)) => break Some(head),
                    Ok(None) => {}
                    Err(r) => {
                        log::warn!(
                            "conn {} from {}: request rejected with {}: {}",
                            conn.id,
                            conn.peer,
                            r.status,
                            r.why
                        );
                        let mut out = Coalesce::new(client, &mut scratch.client_out);
                        let _ = write_error(&mut out, r.status, r.why, None, true);
                        linger = true;
                        break None;
                    }
                }
            }
            let between_requests = cw.buffered().is_empty();
            if between_requests {
                // Waiting for a request: a shutdown closes this connection once it has idled
                // `TRIM_AFTER` (the registry closes ones idle that long at once). Not sooner: a
                // busy client's next request may be on its way, and is answered with
                // `Connection: close` instead. A new connection's first request is served too.
                conn.set_idle(true);
                if served > 0 && ctx.stopping.load(Ordering::SeqCst) && head_started.elapsed() >= TRIM_AFTER {
                    break None;
                }
            }
            let keep_alive_wait = between_requests && served > 0;
            if keep_alive_wait
                && taken > 0
                && parker.is_some_and(Parker::pressed)
                && !ctx.stopping.load(Ordering::SeqCst)
                && !holds_plaintext(client)
            {
                // Connections wait for a worker: this one, between requests, lets its worker go.
                park = true;
                break None;
            }
            if keep_alive_wait {
                // `head_started` was set when the last response went out: the idle clock.
                let idle_for = head_started.elapsed();
                let limit = if t.idle.is_zero() { NO_LIMIT } else { t.idle };
                // Stopping: the next request may be on its way, but no longer than that.
                let limit = if ctx.stopping.load(Ordering::SeqCst) { limit.min(TRIM_AFTER) } else { limit };
                if !trimmed {
                    let first = if parker.is_some() { PARK_AFTER } else { TRIM_AFTER };
                    timeout.set(first.min(limit));
                } else if idle_for >= limit {
                    break None;
                } else {
                    timeout.set(limit - idle_for);
                }
            }
            // A head is awaited in the parker, not in this worker (plain or TLS). A new
            // connection's first byte gets `FIRST_BYTE` here (it is normally on its way with
            // the handshake's last packet, and parking it would cost a `Connection: close`
            // request two thread hops); the rest of a head is read without waiting at all.
            let parks = parker.is_some() && !keep_alive_wait && !ctx.stopping.load(Ordering::SeqCst);
            let first_byte = parks && served == 0 && !greeted && cw.buffered().is_empty();
            let nowait = parks && !first_byte;
            if !keep_alive_wait {
                let left = if t.header.is_zero() {
                    NO_LIMIT
                } else {
                    t.header.saturating_sub(head_started.elapsed())
                };
                if left.is_zero() {
                    slow_client(&conn, client, &mut scratch.client_out);
                    break None;
                }
                timeout.set(if first_byte { left.min(FIRST_BYTE) } else { left });
            }
            let max_head = ctx.config.http.max_head_bytes;
            let filled = if nowait { cw.fill_by(max_head, read_now) } else { cw.fill(max_head) };
            conn.set_idle(false);
            match filled {
                Ok(0) => break None,
                Err(e)
                    if (nowait && e.kind() == io::ErrorKind::WouldBlock)
                        || (first_byte && is_timeout(&e) && !header_expired(t.header, head_started)) =>
                {
                    park_head = true;
                    break None;
                }
                Ok(_) if keep_alive_wait => {
                    head_started = Instant::now();
                    trimmed = false;
                }
                // At a stop the parker takes nothing more: wait here, as below, until the
                // registry closes this connection or its next request comes.
                Err(e)
                    if is_timeout(&e)
                        && keep_alive_wait
                        && !trimmed
                        && parker.is_some()
                        && !ctx.stopping.load(Ordering::SeqCst) =>
                {
                    // Idle for a while: wait for the next request in the parker, without a worker.
                    park = true;
                    break None;
                }
                Err(e) if is_timeout(&e) && keep_alive_wait && !trimmed => {
                    // Idle for a while: give back the stack this worker's requests touched, so
                    // thousands of idle keep-alive clients stay cheap. Then wait on.
                    cw.release_buffer();
                    scratch.release();
                    crate::stack::give_back();
                    trimmed = true;
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) && !keep_alive_wait => {
                    slow_client(&conn, client, &mut scratch.client_out);
                    break None;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let mut out = Coalesce::new(client, &mut scratch.client_out);
                    let _ = write_error(&mut out, 431, "request head too large", None, true);
                    linger = true;
                    break None;
                }
                Err(_) => break None,
            }
        };
        let Some(head) = head else { break };
        let key = hash_key(client_key, ctx, cw.buffered(), &head);
        cw.consume(head.len);
        if head.h2c_stripped {
            log::debug!("req {}: Upgrade: h2c stripped (never forwarded)", head.request_id);
        }
        if head.underscored > 0 {
            ctx.counters.underscored_headers_dropped.fetch_add(head.underscored as u64, Ordering::Relaxed);
            log::debug!(
                "req {}: {} header(s) with '_' in the name dropped",
                head.request_id,
                head.underscored
            );
        }
        served += 1;
        taken += 1;
        // Body reads from the client wait at most idle_ms between bytes. (Without a body the
        // next read is the next request's, which sets its own timeout.)
        if !matches!(head.body, BodyKind::Empty | BodyKind::Length(0)) {
            timeout.set(t.idle);
        }

        let started = Instant::now();
        let mut record = Record::default();
        let keep_alive = head.keep_alive && !ctx.stopping.load(Ordering::SeqCst);
        let exchange = Exchange { conn: &conn, client, ctx, head: &head, keep_alive, key };
        let mut attempt = Attempt::default();
        let outcome = exchange.run(&mut cw, scratch, &mut record, &mut attempt);
        ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
        let keep = match outcome {
            Ok(Served::Done(keep)) => keep,
            Ok(Served::Tunnel((sock, t))) => {
                // Its access line is written when it ends.
                tunnel = Some((sock, Parked { tunnel: t, head, record, started }));
                break;
            }
            Err(f) => {
                record.note = f.to_string();
                match f.answer() {
                    Answer::Status(status) => {
                        record.status = status;
                        // The client stream can be trusted only if the request was read whole.
                        let close = !keep_alive || f.party == Party::Client || !attempt.body_done;
                        let mut out = Coalesce::new(client, &mut scratch.client_out);
                        record.bytes_out +=
                            write_error(&mut out, status, &record.note, Some(&head.request_id), close)
                                .unwrap_or(0);
                        linger = close;
                        !close
                    }
                    Answer::Close => false,
                }
            }
        };
        access_log(&conn, &head, &record, started);
        // Closing with the request body unread (a backend's answer to `Expect` came first):
        // what the client still sends must not reset the response away.
        linger |= !keep && !attempt.body_done;
        if !keep {
            break;
        }
        head_started = Instant::now();
    }
    if linger {
        lingering_close(tcp);
    }
    let pending = park_head.then(|| PartialHead { started: head_started, bytes: cw.buffered().to_vec() });
    scratch.client_in = cw.into_buffer();
    // A TLS session waits in the parker with its connection.
    let session = stream.into_session();
    let Some(parker) = parker else { return };
    if pending.is_some() || park || tunnel.is_some() {
        conn.tls_session = session;
    }
    if let Some((sock, parked)) = tunnel {
        return upgrade::park(conn, ctx, sock, parked);
    }
    // Refused only at shutdown (or if the socket cannot be watched): then closed.
    if let Some(head) = pending {
        let deadline = (!t.header.is_zero()).then(|| head.started + t.header);
        conn.head = Some(head);
        parker.park_head(conn, deadline);
    } else if park {
        parker.park(conn, head_started);
    }
}

/// The request's balancer key: its `hash_header` value under header-hash (found by the one
/// parse of the head), else `client_key`, the client address's.
fn hash_key(client_key: u64, ctx: &HttpContext, buf: &[u8], head: &RequestHead) -> Option<u64> {
    if ctx.balancer.hashes_header() {
        head.hash_value.clone().and_then(|r| buf.get(r)).map(header_value_key)
    } else {
        Some(client_key)
    }
}
