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

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive;
use crate::backend::Backend;
use crate::balancer::{source_key, Balancer, Tried};
use crate::config::{as_limit, Config};
use crate::h1::request::{self, Forwarding, RequestHead};
use crate::h1::response::{self, ClientSide};
use crate::h1::{reason, BodyError, BodyKind, Coalesce, Wire};
use crate::logging::{held_back, RateLimit};
use crate::registry::Conn;
use crate::stats::ProxyCounters;

/// The `Via` pseudonym.
pub const VIA: &str = "lbproxy";

/// "Forever" for a zero (disabled) timeout.
const NO_LIMIT: Duration = Duration::from_secs(365 * 86_400);

/// What HTTP-mode workers share.
pub struct HttpContext {
    pub config: Config,
    pub balancer: Arc<Balancer>,
    pub counters: Arc<ProxyCounters>,
    /// Set at shutdown: finish the current request, then close.
    pub stopping: Arc<AtomicBool>,
}

/// Buffers a worker reuses from one connection to the next.
#[derive(Default)]
pub struct Scratch {
    client_in: Vec<u8>,
    client_out: Vec<u8>,
    backend_in: Vec<u8>,
    backend_out: Vec<u8>,
    head: Vec<u8>,
    resp_head: Vec<u8>,
}

/// How an exchange went wrong.
enum Failure {
    /// Answer with this status; `close` when the client stream can no longer be trusted.
    Status { status: u16, why: String, close: bool },
    /// The response was already under way (or the client broke): close without a word.
    Abort(String),
}

/// What the access log line says.
#[derive(Default)]
struct Record {
    backend: String,
    reason: String,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    note: String,
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

static UNAVAILABLE: RateLimit = RateLimit::new();

/// Serves one client connection until it closes, asks to close, idles out, or the proxy stops.
pub fn serve(conn: Conn, ctx: &HttpContext, scratch: &mut Scratch) {
    let client: &TcpStream = &conn.stream;
    let t = &ctx.config.timeouts;
    let _ = client.set_write_timeout(as_limit(t.idle));
    let client_ip = conn.peer.ip().to_string();
    let local = || client.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let fwd = Forwarding { client: &client_ip, local_host: &local, via: VIA };
    let mut cw = Wire::with_buffer(client, std::mem::take(&mut scratch.client_in));
    let mut timeout = ReadTimeout { stream: client, current: None };
    // The header clock starts when a worker takes the connection, not at accept: time spent
    // queued for a worker is the proxy's, not the client's.
    let mut head_started = Instant::now();
    let mut served = 0u64;
    let mut linger = false;
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
                // Waiting for a request: a shutdown may close this connection at once.
                conn.set_idle(true);
                if ctx.stopping.load(Ordering::SeqCst) {
                    break None;
                }
            }
            if between_requests && served > 0 {
                timeout.set(t.idle);
            } else if t.header.is_zero() {
                timeout.set(NO_LIMIT);
            } else {
                let left = t.header.saturating_sub(head_started.elapsed());
                if left.is_zero() {
                    slow_client(&conn, client, &mut scratch.client_out);
                    break None;
                }
                timeout.set(left);
            }
            let filled = cw.fill(ctx.config.http.max_head_bytes);
            conn.set_idle(false);
            match filled {
                Ok(0) => break None,
                Ok(_) if between_requests && served > 0 => head_started = Instant::now(),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && !(between_requests && served > 0) => {
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
        cw.consume(head.len);
        served += 1;
        // Body reads from the client wait at most idle_ms between bytes. (Without a body the
        // next read is the next request's, which sets its own timeout.)
        if !matches!(head.body, BodyKind::Empty | BodyKind::Length(0)) {
            timeout.set(t.idle);
        }

        let started = Instant::now();
        let mut record = Record::default();
        let keep_alive = head.keep_alive && !ctx.stopping.load(Ordering::SeqCst);
        let outcome = exchange(&conn, ctx, &mut cw, &head, keep_alive, scratch, &mut record);
        ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
        let keep = match outcome {
            Ok(keep) => keep,
            Err(Failure::Status { status, why, close }) => {
                record.status = status;
                record.note.clone_from(&why);
                let close = close || !keep_alive;
                let mut out = Coalesce::new(client, &mut scratch.client_out);
                record.bytes_out +=
                    write_error(&mut out, status, &why, Some(&head.request_id), close).unwrap_or(0);
                linger = close;
                !close
            }
            Err(Failure::Abort(why)) => {
                record.note = why;
                false
            }
        };
        access_log(&conn, &head, &record, started);
        if !keep {
            break;
        }
        head_started = Instant::now();
    }
    if linger {
        lingering_close(client);
    }
    scratch.client_in = cw.into_buffer();
}

/// After an error response on a connection with unread input, closing at once would make the
/// kernel send a reset that can destroy the response before the client reads it. Half-close,
/// then drain briefly (bounded in time and bytes), as nginx's `lingering_close`.
fn lingering_close(client: &TcpStream) {
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 1 << 20 {
        match (&mut &*client).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn slow_client(conn: &Conn, client: &TcpStream, buf: &mut Vec<u8>) {
    log::warn!("conn {} from {}: request head not complete within header_ms, closing", conn.id, conn.peer);
    let _ = write_error(&mut Coalesce::new(client, buf), 408, "request head timeout", None, true);
}

fn access_log(conn: &Conn, head: &RequestHead, r: &Record, started: Instant) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let mut line = format!(
        "req {} {} \"{} {}\" -> {}",
        head.request_id,
        conn.peer,
        head.method,
        head.target,
        if r.backend.is_empty() { "-" } else { &r.backend }
    );
    if !r.reason.is_empty() {
        let _ = write!(line, " ({})", r.reason);
    }
    let _ = write!(
        line,
        " {} {}B in {}B out {:.1} ms",
        r.status,
        r.bytes_in,
        r.bytes_out,
        started.elapsed().as_secs_f64() * 1000.0
    );
    if !r.note.is_empty() {
        let _ = write!(line, " [{}]", r.note);
    }
    log::info!("{line}");
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Writes a short text error response; returns the bytes written.
fn write_error(
    out: &mut impl Write,
    status: u16,
    why: &str,
    id: Option<&str>,
    close: bool,
) -> io::Result<u64> {
    let body = format!("{status} {}: {why}\n", reason(status));
    let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\n", reason(status));
    if let Some(id) = id {
        let _ = write!(head, "X-Request-ID: {id}\r\n");
    }
    if status == 503 {
        head.push_str("Retry-After: 1\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n", body.len());
    head.push_str(if close { "Connection: close\r\n\r\n" } else { "\r\n" });
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()?;
    Ok((head.len() + body.len()) as u64)
}

/// How the response head could not be read.
enum RespError {
    Timeout,
    /// Closed or reset before any byte of the response: safe to retry if the request is.
    Closed(String),
    Invalid(&'static str),
    Io(io::Error),
}

/// Forwards one request and its response. `Ok(keep_alive)` when the response was relayed.
fn exchange(
    conn: &Conn,
    ctx: &HttpContext,
    cw: &mut Wire<&TcpStream>,
    head: &RequestHead,
    keep_alive: bool,
    scratch: &mut Scratch,
    record: &mut Record,
) -> Result<bool, Failure> {
    let cfg = &ctx.config;
    let started = Instant::now();
    let has_body = !matches!(head.body, BodyKind::Empty | BodyKind::Length(0));
    if let (BodyKind::Length(n), Some(max)) = (head.body, cfg.http.max_body_bytes) {
        if n > max {
            return Err(Failure::Status {
                status: 413,
                why: format!("body of {n} bytes over {max}"),
                close: true,
            });
        }
    }
    if head.body == BodyKind::Chunked && !head.expect_continue {
        first_chunk_is_valid(cw)?;
    }
    let client: &TcpStream = &conn.stream;
    let key = source_key(conn.peer.ip());
    let mut tried = Tried::default();
    let mut fresh_only = false;
    let mut continued = false;
    let mut body_touched = false;
    // A backend that broke mid-exchange: if no other can take the request, that is a 502.
    let mut broke: Option<String> = None;
    loop {
        let pick = match ctx.balancer.pick(key, &tried, cfg.timeouts.queue) {
            Ok(pick) => pick,
            Err(_) if broke.is_some() => {
                let why = broke.unwrap_or_default();
                return Err(Failure::Status { status: 502, why, close: !keep_alive });
            }
            Err(why) => {
                if let Some(n) = UNAVAILABLE.check() {
                    log::warn!("req {}: {why}; answering 503{}", head.request_id, held_back(n));
                }
                let close = has_body && !body_touched;
                return Err(Failure::Status { status: 503, why: why.to_string(), close });
            }
        };
        let backend: Arc<Backend> = pick.guard.backend().clone();
        record.backend.clone_from(&backend.name);
        record.reason = pick.reason;
        let can_retry = |body_touched: bool| head.retryable && !body_touched;
        let pooled = if fresh_only { None } else { keepalive::take(&backend, !head.retryable || has_body) };
        let reused = pooled.is_some();
        fresh_only = false;
        let stream = match pooled {
            Some(s) => s,
            None => match crate::net::open(backend.addr, cfg.timeouts.connect) {
                Ok(s) => {
                    let _ = s.set_read_timeout(as_limit(cfg.timeouts.response));
                    let _ = s.set_write_timeout(as_limit(cfg.timeouts.idle));
                    s
                }
                Err(e) => {
                    let why = crate::net::describe(&e);
                    log::warn!(
                        "req {}: connect to {} {} failed: {why}; trying the next backend",
                        head.request_id,
                        backend.name,
                        backend.addr
                    );
                    ctx.balancer.observe_failure(&backend, &why);
                    tried.insert(&backend);
                    continue;
                }
            },
        };
        let attached = conn.attach(&stream, backend.id);

        // Request: head, then the body streamed from the client.
        let mut bout = Coalesce::new(&stream, &mut scratch.backend_out);
        let mut sent = bout.write_all(&scratch.head);
        if sent.is_ok() && has_body {
            if head.expect_continue && !continued {
                continued = true;
                let mut cout = Coalesce::new(client, &mut scratch.client_out);
                if let Err(e) = cout.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|()| cout.flush()) {
                    return Err(Failure::Abort(format!("client: {e}")));
                }
            }
            body_touched = true;
            let rechunk = head.body == BodyKind::Chunked;
            match cw.forward_body(head.body, &mut bout, rechunk, cfg.http.max_body_bytes) {
                Ok(n) => record.bytes_in += n,
                Err(BodyError::Sink(e)) => sent = Err(e),
                Err(BodyError::TooLarge) => {
                    let why = "request body over max_body_bytes".to_string();
                    return Err(Failure::Status { status: 413, why, close: true });
                }
                Err(BodyError::Source(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Failure::Status {
                        status: 400,
                        why: format!("request body: {e}"),
                        close: true,
                    });
                }
                Err(BodyError::Source(e)) => return Err(Failure::Abort(format!("client body: {e}"))),
            }
        }
        let sent = sent.and_then(|()| bout.flush());
        if let Err(e) = sent {
            if can_retry(body_touched) {
                log::debug!("req {}: sending to {} failed ({e}); retrying", head.request_id, backend.name);
                if reused {
                    fresh_only = true;
                } else {
                    ctx.balancer.observe_failure(&backend, &e.to_string());
                    tried.insert(&backend);
                    broke = Some(format!("sending to {}: {e}", backend.name));
                }
                continue;
            }
            ctx.balancer.observe_failure(&backend, &e.to_string());
            return Err(Failure::Status {
                status: 502,
                why: format!("sending to {}: {e}", backend.name),
                close: true,
            });
        }

        // Response head.
        let mut bw = Wire::with_buffer(&stream, std::mem::take(&mut scratch.backend_in));
        let side = ClientSide {
            method: &head.method,
            version: head.version,
            keep_alive,
            request_id: &head.request_id,
            via: VIA,
        };
        let resp = read_response(&mut bw, &side, cfg.http.max_head_bytes, &mut scratch.resp_head);
        let resp = match resp {
            Ok(r) => r,
            Err(RespError::Closed(e)) if can_retry(body_touched) => {
                scratch.backend_in = bw.into_buffer();
                if reused {
                    log::debug!(
                        "req {}: pooled connection to {} was stale ({e}); retrying",
                        head.request_id,
                        backend.name
                    );
                    fresh_only = true;
                } else {
                    log::warn!(
                        "req {}: {} closed the connection before responding ({e}); trying the next backend",
                        head.request_id,
                        backend.name
                    );
                    ctx.balancer.observe_failure(&backend, &e);
                    tried.insert(&backend);
                    broke = Some(format!("{} closed the connection before a response: {e}", backend.name));
                }
                continue;
            }
            Err(e) => {
                scratch.backend_in = bw.into_buffer();
                let (status, why) = match e {
                    RespError::Timeout => {
                        (504, format!("{} did not answer within response_ms", backend.name))
                    }
                    RespError::Closed(e) => {
                        (502, format!("{} closed the connection before a response: {e}", backend.name))
                    }
                    RespError::Invalid(why) => {
                        (502, format!("invalid response from {}: {why}", backend.name))
                    }
                    RespError::Io(e) => (502, format!("reading from {}: {e}", backend.name)),
                };
                ctx.balancer.observe_failure(&backend, &why);
                return Err(Failure::Status {
                    status,
                    why,
                    close: !keep_alive || (has_body && !body_touched),
                });
            }
        };
        record.status = resp.status;
        if resp.status >= 500 && ctx.balancer.health_settings().observe_5xx {
            ctx.balancer.observe_failure(&backend, &format!("status {}", resp.status));
        }

        // Response: head, then the body streamed back, re-framed for the client.
        let mut cout = Coalesce::new(client, &mut scratch.client_out);
        let chunk_out = resp.client_body == BodyKind::Chunked;
        let mut result =
            cout.write_all(&scratch.resp_head).map_err(|e| Failure::Abort(format!("client: {e}")));
        record.bytes_out += scratch.resp_head.len() as u64;
        if result.is_ok() {
            result = match bw.forward_body(resp.body, &mut cout, chunk_out, None) {
                Ok(n) => {
                    record.bytes_out += n;
                    cout.flush().map_err(|e| Failure::Abort(format!("client: {e}")))
                }
                Err(BodyError::Sink(e)) => Err(Failure::Abort(format!("client: {e}"))),
                Err(BodyError::Source(e)) => {
                    backend.failures.fetch_add(1, Ordering::Relaxed);
                    Err(Failure::Abort(format!("response body from {}: {e}", backend.name)))
                }
                Err(BodyError::TooLarge) => Err(Failure::Abort("response body too large".to_string())),
            };
        }
        let leftover = !bw.buffered().is_empty();
        scratch.backend_in = bw.into_buffer();
        result?;
        backend.record_bytes(record.bytes_in, record.bytes_out);
        drop(attached);
        drop(pick.guard);
        backend.latency.record(started.elapsed());
        if resp.backend_reusable && !leftover {
            keepalive::put(&backend, stream, cfg.http.backend_keepalive);
        }
        return Ok(resp.client_keep_alive);
    }
}

/// Reads until the first chunk-size line of a chunked body is complete and checks it, so a
/// malformed or overflowing size is refused before anything reaches a backend.
fn first_chunk_is_valid(cw: &mut Wire<&TcpStream>) -> Result<(), Failure> {
    let bad = |why: &str| Failure::Status { status: 400, why: why.to_string(), close: true };
    loop {
        match httparse::parse_chunk_size(cw.buffered()) {
            Ok(httparse::Status::Complete(_)) => return Ok(()),
            Err(_) => return Err(bad("invalid chunk size line")),
            Ok(httparse::Status::Partial) if cw.buffered().len() > 1024 => {
                return Err(bad("chunk size line too long"))
            }
            Ok(httparse::Status::Partial) => match cw.fill(crate::h1::MAX_HEAD) {
                Ok(0) => return Err(Failure::Abort("client closed inside the body".to_string())),
                Ok(_) => {}
                Err(e) => return Err(Failure::Abort(format!("client body: {e}"))),
            },
        }
    }
}

fn read_response(
    bw: &mut Wire<&TcpStream>,
    side: &ClientSide<'_>,
    max_head: usize,
    out: &mut Vec<u8>,
) -> Result<response::ResponseHead, RespError> {
    let mut received = false;
    loop {
        if !bw.buffered().is_empty() {
            out.clear();
            match response::parse(bw.buffered(), max_head, side, out) {
                Ok(Some(r)) if r.status < 200 => {
                    bw.consume(r.len);
                    continue;
                }
                Ok(Some(r)) => {
                    bw.consume(r.len);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(why) => return Err(RespError::Invalid(why)),
            }
        }
        match bw.fill(max_head) {
            Ok(0) if received => {
                return Err(RespError::Invalid("connection closed inside the response head"))
            }
            Ok(0) => return Err(RespError::Closed("end of stream".to_string())),
            Ok(_) => received = true,
            Err(e) if is_timeout(&e) => return Err(RespError::Timeout),
            Err(e)
                if !received
                    && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) =>
            {
                return Err(RespError::Closed(e.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(RespError::Invalid("response head too large"))
            }
            Err(e) => return Err(RespError::Io(e)),
        }
    }
}
