//! The dummy server's HTTP/1.1 side: keep-alive, request bodies read and counted, and query
//! parameters that shape the reply for tests and benchmarks.
//!
//! - `GET /health` -> `200 ok` (`503 draining` while shutting down with `--drain-ms`);
//!   `GET /echo` -> the request head as received; `GET /ws` -> a WebSocket echo (see
//!   [`super::ws`]).
//! - any other path -> `Hello from <name>`, plus `received N bytes fnv <hex>` (FNV-1a of the
//!   body, see [`Checksum`]) when a body came.
//! - `?delay_ms=N` waits before answering; `?bytes=N` answers with exactly N bytes (streamed);
//!   `?chunked=1` sends the body chunked; `?status=N` answers with that status; with
//!   `--fail-every N` every Nth request gets 503.
//! - `?fault=MODE` misbehaves on purpose (see [`super::fault`]); an unknown mode gets a 400
//!   listing the modes.
//! - `X-Served-By: <name>` on every response; `X-Request-ID` echoed when sent.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use super::fault::{self, After, HttpFault};
use super::reply::{self, Payload, Reply};
use super::Dummy;
use crate::h1::{head, BodyKind, HeadError, Wire, MAX_HEAD};

pub use super::reply::{pattern_byte, Checksum};

/// Whether `line` looks like `METHOD SP target SP HTTP/1.x`.
pub fn is_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|b| b.is_ascii_uppercase())
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Whether `line` is a health check's request line: `GET /health` or `HEAD /health`.
pub fn is_health_check(line: &[u8]) -> bool {
    line.starts_with(b"GET /health ") || line.starts_with(b"HEAD /health ")
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    keep_alive: bool,
    request_id: Option<Vec<u8>>,
    body: BodyKind,
    head: Vec<u8>,
    expect_continue: bool,
}

/// Serves requests on `wire` until the client closes or asks to.
pub fn serve(wire: &mut Wire<TcpStream>, peer: SocketAddr, dummy: &Dummy) {
    loop {
        let req = match read_request(wire) {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(e) => {
                log::warn!("{peer}: bad request: {e}");
                let _ = reply::write_error(&mut wire.stream, &dummy.name, 400, &e.to_string());
                break;
            }
        };
        if req.path == "/ws" {
            // The connection becomes a WebSocket: it leaves the HTTP loop.
            if let Ok(stream) = wire.stream.try_clone() {
                super::ws::serve(stream, &req.head, wire.buffered().to_vec(), peer, &dummy.name);
            }
            break;
        }
        if req.expect_continue {
            let _ = wire.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut sum = Checksum::default();
        let received = match wire.copy_body(req.body, &mut sum) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("{peer}: request body: {e}");
                let _ = reply::write_error(&mut wire.stream, &dummy.name, 400, &e.to_string());
                break;
            }
        };
        if req.path == "/health" && matches!(req.method.as_str(), "GET" | "HEAD") {
            dummy.checks.seen(format_args!("{} /health from {peer}", req.method));
        } else {
            log::info!("{peer} {} {} ({received} body bytes)", req.method, req.path);
        }
        let reply = reply_for(dummy, &req, received, sum.0);
        let delay = param(&req, "delay_ms").map(Duration::from_millis);
        let after = match req.query.iter().find(|(k, _)| k == "fault").map(|(_, v)| v.as_str()) {
            None => respond(&mut wire.stream, &reply, delay.unwrap_or(dummy.delay)).map(|()| After::Continue),
            Some(name) => match HttpFault::parse(name) {
                Some(f) => {
                    log::info!("fault {} on {} {} from {peer}", f.name(), req.method, req.path);
                    fault::run(f, &mut wire.stream, &reply, delay)
                }
                None => {
                    log::warn!("{peer}: unknown fault {name:?}");
                    let why = format!("unknown fault {name:?}; modes: {}", HttpFault::names());
                    reply::write_error(&mut wire.stream, &dummy.name, 400, &why).map(|()| After::Close)
                }
            },
        };
        match after {
            Ok(After::Continue) if req.keep_alive => {}
            Ok(_) => break,
            Err(e) => {
                log::warn!("{peer}: response failed: {e}");
                break;
            }
        }
    }
}

fn read_request(wire: &mut Wire<TcpStream>) -> io::Result<Option<Request>> {
    let head = wire.read_head(MAX_HEAD, |buf| {
        Ok(head::parse_request(buf)?.map(|(len, req)| (len, to_request(req, buf[..len].to_vec()))))
    });
    match head {
        Ok(req) => Ok(Some(req)),
        Err(HeadError::Closed) => Ok(None),
        Err(HeadError::Io(e)) => Err(e),
        Err(HeadError::Invalid(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
    }
}

fn to_request(parsed: head::Request, head: Vec<u8>) -> Request {
    let (path, query) = parsed.target.split_once('?').unwrap_or((&parsed.target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let expect = parsed.fields.get("expect");
    Request {
        path: path.to_string(),
        query,
        keep_alive: parsed.keep_alive,
        request_id: parsed.fields.get("x-request-id").map(String::into_bytes),
        body: parsed.body,
        head,
        expect_continue: expect.is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
        method: parsed.method,
    }
}

fn param(req: &Request, key: &str) -> Option<u64> {
    req.query.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
}

/// The ordinary answer to `req`: status from `?status=`, body from the path or `?bytes=`.
fn reply_for(dummy: &Dummy, req: &Request, received: u64, sum: u64) -> Reply {
    let draining = req.path == "/health" && dummy.draining.load(std::sync::atomic::Ordering::SeqCst);
    let flaky = dummy.fail_every > 0
        && req.path != "/health"
        && (dummy.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
            .is_multiple_of(dummy.fail_every);
    let status = if draining || flaky {
        503
    } else {
        param(req, "status").filter(|s| (200..=599).contains(s)).unwrap_or(200) as u16
    };
    let body = match (req.path.as_str(), param(req, "bytes")) {
        (_, Some(n)) => Payload::Pattern(n),
        ("/health", None) if draining => Payload::Bytes(b"draining\n".to_vec()),
        ("/health", None) => Payload::Bytes(b"ok\n".to_vec()),
        ("/echo", None) => {
            let mut b = req.head.clone();
            b.extend_from_slice(format!("received {received} bytes fnv {sum:016x}\n").as_bytes());
            Payload::Bytes(b)
        }
        _ if req.body != BodyKind::Empty => Payload::Bytes(
            format!("Hello from {}\nreceived {received} bytes fnv {sum:016x}\n", dummy.name).into_bytes(),
        ),
        _ => Payload::Bytes(format!("Hello from {}\n", dummy.name).into_bytes()),
    };
    Reply {
        status,
        served_by: dummy.name.clone(),
        request_id: req.request_id.clone(),
        keep_alive: req.keep_alive,
        head_only: req.method == "HEAD",
        chunked: param(req, "chunked") == Some(1),
        body,
    }
}

/// Sends `reply` after `delay`. Through a buffer, as real servers send a small response: head
/// and body in one write, so a backend killed mid-reply (SIGKILL under load, `ops.rs`) never
/// leaves a head without its body, which no proxy could retry.
fn respond(out: &mut TcpStream, reply: &Reply, delay: Duration) -> io::Result<()> {
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let mut buffered = io::BufWriter::with_capacity(16 * 1024, &*out);
    reply.write(&mut buffered)?;
    buffered.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_recognised() {
        assert!(is_request_line(b"GET / HTTP/1.1\r\n"));
        assert!(is_request_line(b"POST /x?y=1 HTTP/1.0\n"));
        assert!(!is_request_line(b"hello world\n"));
        assert!(!is_request_line(b"GET / HTTP/2\r\n"));
        assert!(!is_request_line(b"get / HTTP/1.1\r\n"));
        assert!(is_health_check(b"GET /health HTTP/1.1\r\n") && is_health_check(b"HEAD /health HTTP/1.0\n"));
        assert!(!is_health_check(b"GET /healthz HTTP/1.1\r\n") && !is_health_check(b"GET / HTTP/1.1\r\n"));
    }
}
