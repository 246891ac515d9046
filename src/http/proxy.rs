//! HTTP mode: a worker owns one client connection and serves its requests in order, each
//! balanced on its own, over pooled persistent backend connections.
//!
//! Per request: read and check the head (`header_ms`), pick a backend, take a pooled
//! connection or connect (the next backend on failure), send the rewritten head and stream the
//! body, read the response head (`response_ms`), stream the body back re-framed for the client,
//! pool the backend connection if it can be reused, and write one access-log line. A pooled
//! connection found closed is replaced by a fresh one when nothing of the response arrived and
//! the request may be sent again.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keepalive::KeepAlive;
use super::request::{self, Forwarding, RequestHead};
use super::response::{self, ClientSide};
use super::{reason, BodyError, BodyKind, Coalesce, Wire};
use crate::balancer::{Balancer, Tried};
use crate::config::Config;
use crate::registry::Conn;

/// The `Via` pseudonym.
pub const VIA: &str = "lbproxy";

/// What HTTP-mode workers share.
pub struct HttpContext {
    pub config: Config,
    pub balancer: Arc<Balancer>,
    pub pools: KeepAlive,
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
        let d = Some(d.max(Duration::from_millis(1)));
        if self.current != d {
            let _ = self.stream.set_read_timeout(d);
            self.current = d;
        }
    }
}

/// Serves one client connection until it closes, asks to close, idles out, or the proxy stops.
pub fn serve(conn: Conn, ctx: &HttpContext, scratch: &mut Scratch) {
    let client: &TcpStream = &conn.stream;
    let t = &ctx.config.timeouts;
    let _ = client.set_write_timeout(non_zero(t.idle));
    let local = client.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let fwd = Forwarding { client: conn.peer.ip(), local_host: &local, via: VIA };
    let mut cw = Wire::with_buffer(client, std::mem::take(&mut scratch.client_in));
    let mut timeout = ReadTimeout { stream: client, current: None };
    let mut head_started = conn.accepted;
    let mut served = 0u64;
    loop {
        // Wait for (the rest of) a request head.
        let head = loop {
            if !cw.buffered().is_empty() {
                scratch.head.clear();
                match request::parse(cw.buffered(), ctx.config.http.max_head_bytes, &fwd, &mut scratch.head) {
                    Ok(Some(head)) => break Some(head),
                    Ok(None) => {}
                    Err(r) => {
                        let mut out = Coalesce::new(client, &mut scratch.client_out);
                        log::warn!(
                            "{} from {}: rejected with {}: {}",
                            label(&conn, served),
                            conn.peer,
                            r.status,
                            r.why
                        );
                        let _ = write_error(&mut out, r.status, r.why, None, true);
                        break None;
                    }
                }
            }
            let waiting_idle = cw.buffered().is_empty() && served > 0;
            if waiting_idle {
                conn.idle.store(true, Ordering::SeqCst);
                if ctx.stopping.load(Ordering::SeqCst) {
                    break None;
                }
                timeout.set(if t.idle.is_zero() { Duration::from_secs(86_400) } else { t.idle });
            } else {
                if cw.buffered().is_empty() && served > 0 {
                    head_started = Instant::now();
                }
                let left = t.header.saturating_sub(head_started.elapsed());
                if left.is_zero() {
                    slow_client(&conn, served, client, &mut scratch.client_out);
                    break None;
                }
                timeout.set(left);
            }
            let filled = cw.fill(ctx.config.http.max_head_bytes);
            conn.idle.store(false, Ordering::SeqCst);
            match filled {
                Ok(0) => break None,
                Ok(_) if waiting_idle => head_started = Instant::now(),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && !waiting_idle => {
                    slow_client(&conn, served, client, &mut scratch.client_out);
                    break None;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let mut out = Coalesce::new(client, &mut scratch.client_out);
                    let _ = write_error(&mut out, 431, "request head too large", None, true);
                    break None;
                }
                Err(_) => break None,
            }
        };
        let Some(head) = head else { break };
        cw.consume(head.len);
        served += 1;
        // Body reads from the client wait at most idle_ms between bytes.
        timeout.set(if t.idle.is_zero() { Duration::from_secs(86_400) } else { t.idle });

        let started = Instant::now();
        let mut record = Record::default();
        let outcome = exchange(&conn, ctx, &mut cw, &head, scratch, &mut record);
        let keep = match outcome {
            Ok(keep) => keep,
            Err(Failure::Status { status, why, close }) => {
                record.status = status;
                record.note = why.clone();
                let mut out = Coalesce::new(client, &mut scratch.client_out);
                let close = close || !head.keep_alive;
                record.bytes_out +=
                    write_error(&mut out, status, &why, Some(&head.request_id), close).unwrap_or(0);
                !close
            }
            Err(Failure::Abort(why)) => {
                record.note = why;
                false
            }
        };
        access_log(&conn, &head, &record, started);
        if !keep || ctx.stopping.load(Ordering::SeqCst) {
            break;
        }
        head_started = Instant::now();
    }
    scratch.client_in = cw.into_buffer();
}

fn label(conn: &Conn, served: u64) -> String {
    format!("conn {} request {}", conn.id, served + 1)
}

fn slow_client(conn: &Conn, served: u64, client: &TcpStream, buf: &mut Vec<u8>) {
    log::warn!("{} from {}: request head not complete in time, closing", label(conn, served), conn.peer);
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

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
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

/// Forwards one request and its response. `Ok(keep_alive)` when the response was relayed.
fn exchange(
    conn: &Conn,
    ctx: &HttpContext,
    cw: &mut Wire<&TcpStream>,
    head: &RequestHead,
    scratch: &mut Scratch,
    record: &mut Record,
) -> Result<bool, Failure> {
    let cfg = &ctx.config;
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
    let mut tried = Tried::default();
    let mut fresh_only = false;
    let mut continued = false;
    let mut body_touched = false;
    loop {
        let Some(pick) = ctx.balancer.pick(&tried) else {
            let why = format!("no backend available ({} tried)", tried.count());
            return Err(Failure::Status {
                status: 503,
                why,
                close: head.body != BodyKind::Empty && !body_touched,
            });
        };
        let (idx, backend) = (pick.guard.index(), pick.guard.backend());
        record.backend = backend.name.clone();
        record.reason = pick.reason;
        let pooled = if fresh_only { None } else { ctx.pools.take(idx, !head.retryable) };
        let reused = pooled.is_some();
        fresh_only = false;
        let stream = match pooled {
            Some(s) => s,
            None => match connect(backend.addr, cfg) {
                Ok(s) => s,
                Err(e) => {
                    backend.record_failure();
                    log::warn!(
                        "req {}: connect to {} {} failed: {e}; trying the next backend",
                        head.request_id,
                        backend.name,
                        backend.addr
                    );
                    tried.insert(idx);
                    continue;
                }
            },
        };
        let _attached = conn.attach(&stream);
        let retry_ok = |body_touched: bool| reused && !body_touched && head.retryable;

        // Request: head, then the body streamed from the client.
        let mut bout = Coalesce::new(&stream, &mut scratch.backend_out);
        let mut sent = bout.write_all(&scratch.head);
        if sent.is_ok() && head.body != BodyKind::Empty {
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
            if retry_ok(body_touched) {
                log::debug!(
                    "req {}: pooled connection to {} was stale ({e}); retrying",
                    head.request_id,
                    backend.name
                );
                fresh_only = true;
                continue;
            }
            backend.record_failure();
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
            keep_alive: head.keep_alive,
            request_id: &head.request_id,
            via: VIA,
        };
        let resp = read_response(&mut bw, &side, cfg.http.max_head_bytes, &mut scratch.resp_head);
        let resp = match resp {
            Ok(r) => r,
            Err(RespError::Closed) if retry_ok(body_touched) => {
                scratch.backend_in = bw.into_buffer();
                log::debug!(
                    "req {}: pooled connection to {} was closed; retrying",
                    head.request_id,
                    backend.name
                );
                fresh_only = true;
                continue;
            }
            Err(e) => {
                scratch.backend_in = bw.into_buffer();
                backend.record_failure();
                let (status, why) = match e {
                    RespError::Timeout => {
                        (504, format!("{} did not answer within response_ms", backend.name))
                    }
                    RespError::Closed => {
                        (502, format!("{} closed the connection before a response", backend.name))
                    }
                    RespError::Invalid(why) => {
                        (502, format!("invalid response from {}: {why}", backend.name))
                    }
                    RespError::Io(e) => (502, format!("reading from {}: {e}", backend.name)),
                };
                return Err(Failure::Status { status, why, close: !head.keep_alive });
            }
        };
        record.status = resp.status;

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
                    backend.record_failure();
                    Err(Failure::Abort(format!("response body from {}: {e}", backend.name)))
                }
                Err(BodyError::TooLarge) => Err(Failure::Abort("response body too large".to_string())),
            };
        }
        let leftover = !bw.buffered().is_empty();
        scratch.backend_in = bw.into_buffer();
        result?;
        backend.record_bytes(record.bytes_in, record.bytes_out);
        if resp.backend_reusable && !leftover {
            drop(_attached);
            ctx.pools.put(idx, stream);
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
            Ok(httparse::Status::Partial) => match cw.fill(super::MAX_HEAD) {
                Ok(0) => return Err(Failure::Abort("client closed inside the body".to_string())),
                Ok(_) => {}
                Err(e) => return Err(Failure::Abort(format!("client body: {e}"))),
            },
        }
    }
}

enum RespError {
    Timeout,
    Closed,
    Invalid(&'static str),
    Io(io::Error),
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
            Ok(0) => return Err(RespError::Closed),
            Ok(_) => received = true,
            Err(e) if is_timeout(&e) => return Err(RespError::Timeout),
            Err(e)
                if !received
                    && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) =>
            {
                return Err(RespError::Closed)
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(RespError::Invalid("response head too large"))
            }
            Err(e) => return Err(RespError::Io(e)),
        }
    }
}

fn connect(addr: std::net::SocketAddr, cfg: &Config) -> io::Result<TcpStream> {
    let stream = if cfg.timeouts.connect.is_zero() {
        TcpStream::connect(addr)?
    } else {
        TcpStream::connect_timeout(&addr, cfg.timeouts.connect)?
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(non_zero(cfg.timeouts.response));
    let _ = stream.set_write_timeout(non_zero(cfg.timeouts.idle));
    Ok(stream)
}
