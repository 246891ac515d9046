//! The dummy server's HTTP/1.1 side: keep-alive, request bodies read and counted, and query
//! parameters that shape the reply for tests and benchmarks.
//!
//! - `GET /health` -> `200 ok` (`503 draining` while shutting down with `--drain-ms`);
//!   `GET /echo` -> the request head as received.
//! - any other path -> `Hello from <name>`, plus `received N bytes fnv <hex>` (FNV-1a of the
//!   body, see [`Checksum`]) when a body came.
//! - `?delay_ms=N` waits before answering; `?bytes=N` answers with exactly N bytes (streamed);
//!   `?chunked=1` sends the body chunked; `?status=N` answers with that status.
//! - `X-Served-By: <name>` on every response; `X-Request-ID` echoed when sent.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use super::Dummy;
use crate::h1::{self as h, BodyKind, HeadError, Wire, MAX_HEAD, MAX_HEADERS};

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
                let _ = respond_error(&mut wire.stream, dummy, 400, &e.to_string());
                break;
            }
        };
        if req.expect_continue {
            let _ = wire.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut sum = Checksum::default();
        let received = match wire.copy_body(req.body, &mut sum) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("{peer}: request body: {e}");
                let _ = respond_error(&mut wire.stream, dummy, 400, &e.to_string());
                break;
            }
        };
        log::info!("{peer} {} {} ({received} body bytes)", req.method, req.path);
        if let Err(e) = respond(&mut wire.stream, dummy, &req, received, sum.0) {
            log::warn!("{peer}: response failed: {e}");
            break;
        }
        if !req.keep_alive {
            break;
        }
    }
}

fn read_request(wire: &mut Wire<TcpStream>) -> io::Result<Option<Request>> {
    let head = wire.read_head(MAX_HEAD, |buf| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => to_request(&parsed, buf[..len].to_vec())
                .map(|req| Some((len, req)))
                .map_err(|e| e.to_string()),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    });
    match head {
        Ok(req) => Ok(Some(req)),
        Err(HeadError::Closed) => Ok(None),
        Err(HeadError::Io(e)) => Err(e),
        Err(HeadError::Invalid(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
    }
}

fn to_request(parsed: &httparse::Request<'_, '_>, head: Vec<u8>) -> io::Result<Request> {
    let invalid = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let method = parsed.method.ok_or_else(|| invalid("no method"))?.to_string();
    let target = parsed.path.ok_or_else(|| invalid("no target"))?;
    let version = parsed.version.ok_or_else(|| invalid("no version"))?;
    let headers = &*parsed.headers;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let keep_alive = if version == 1 {
        !h::has_token(headers, "connection", "close")
    } else {
        h::has_token(headers, "connection", "keep-alive")
    };
    Ok(Request {
        method,
        path: path.to_string(),
        query,
        keep_alive,
        request_id: h::header(headers, "x-request-id").map(<[u8]>::to_vec),
        body: h::request_body(headers).map_err(invalid)?,
        head,
        expect_continue: h::header(headers, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
    })
}

fn param(req: &Request, key: &str) -> Option<u64> {
    req.query.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse().ok())
}

fn respond(out: &mut TcpStream, dummy: &Dummy, req: &Request, received: u64, sum: u64) -> io::Result<()> {
    let delay = param(req, "delay_ms").map(Duration::from_millis).unwrap_or(dummy.delay);
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let draining = req.path == "/health" && dummy.draining.load(std::sync::atomic::Ordering::SeqCst);
    let status = if draining {
        503
    } else {
        param(req, "status").filter(|s| (200..=599).contains(s)).unwrap_or(200) as u16
    };
    let chunked = param(req, "chunked") == Some(1);
    let body: Vec<u8> = match (req.path.as_str(), param(req, "bytes")) {
        (_, Some(_)) => Vec::new(),
        ("/health", None) if draining => b"draining\n".to_vec(),
        ("/health", None) => b"ok\n".to_vec(),
        ("/echo", None) => {
            let mut b = req.head.clone();
            b.extend_from_slice(format!("received {received} bytes fnv {sum:016x}\n").as_bytes());
            b
        }
        _ if req.body != BodyKind::Empty => {
            format!("Hello from {}\nreceived {received} bytes fnv {sum:016x}\n", dummy.name).into_bytes()
        }
        _ => format!("Hello from {}\n", dummy.name).into_bytes(),
    };
    let length = param(req, "bytes").unwrap_or(body.len() as u64);
    let mut head = format!("HTTP/1.1 {status} {}\r\nX-Served-By: {}\r\n", h::reason(status), dummy.name);
    if let Some(id) = &req.request_id {
        head.push_str(&format!("X-Request-ID: {}\r\n", String::from_utf8_lossy(id)));
    }
    head.push_str("Content-Type: text/plain\r\n");
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    if !req.keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return out.flush();
    }
    match param(req, "bytes") {
        Some(n) => stream_pattern(out, n, chunked),
        None => write_body(out, &body, chunked),
    }
}

/// FNV-1a (64-bit) of everything written: lets tests check that a body arrived intact.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Write for Checksum {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The byte at offset `i` of a `?bytes=N` body: a repeating a..z pattern, so checksums differ
/// with length and position.
pub fn pattern_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

fn stream_pattern(out: &mut TcpStream, n: u64, chunked: bool) -> io::Result<()> {
    let block: Vec<u8> = (0..64 * 26).map(pattern_byte).collect();
    let mut sent = 0u64;
    while sent < n {
        let take = (n - sent).min(block.len() as u64) as usize;
        write_body_part(out, &block[..take], chunked)?;
        sent += take as u64;
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

fn write_body(out: &mut TcpStream, body: &[u8], chunked: bool) -> io::Result<()> {
    if !body.is_empty() {
        write_body_part(out, body, chunked)?;
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}

fn write_body_part(out: &mut TcpStream, part: &[u8], chunked: bool) -> io::Result<()> {
    if chunked {
        out.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
        out.write_all(part)?;
        out.write_all(b"\r\n")
    } else {
        out.write_all(part)
    }
}

fn respond_error(out: &mut TcpStream, dummy: &Dummy, status: u16, why: &str) -> io::Result<()> {
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status} {}\r\nX-Served-By: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        h::reason(status),
        dummy.name,
        body.len()
    );
    out.write_all(response.as_bytes())
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
    }
}
