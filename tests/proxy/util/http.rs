//! HTTP on the wire for the tests: raw requests and responses, a proxy in http mode, and a
//! raw backend that answers what a test tells it and records what it saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use super::*;

/// One HTTP response as a test sees it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response to a request made with `method` (bodies de-chunked).
pub fn read_response(wire: &mut lbproxy::h1::Wire<TcpStream>, method: &str) -> Resp {
    let head = wire.read_head(1 << 20, |buf| {
        Ok(lbproxy::h1::head::parse_response(buf, method)?.map(|(len, r)| {
            let headers =
                r.fields.0.into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect();
            (len, (r.status, r.body, headers))
        }))
    });
    let (status, kind, headers) = head.unwrap_or_else(|e| {
        panic!("no complete response ({e}); got {:?}", String::from_utf8_lossy(wire.buffered()))
    });
    let mut body = Vec::new();
    wire.copy_body(kind, &mut body).expect("response body");
    Resp { status, headers, body }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn send_raw(addr: SocketAddr, raw: &[u8], method: &str) -> (Resp, lbproxy::h1::Wire<TcpStream>) {
    let mut s = connect(addr);
    s.write_all(raw).expect("send");
    let mut wire = lbproxy::h1::Wire::new(s);
    (read_response(&mut wire, method), wire)
}

/// A GET on an open keep-alive connection.
pub fn get(wire: &mut lbproxy::h1::Wire<TcpStream>, path: &str, extra: &str) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
    wire.stream.write_all(req.as_bytes()).expect("send");
    read_response(wire, "GET")
}

/// Whether the peer closed the connection (EOF) without sending more.
pub fn closed(wire: &mut lbproxy::h1::Wire<TcpStream>) -> bool {
    wire.buffered().is_empty() && matches!(wire.fill(1 << 20), Ok(0) | Err(_))
}

/// Starts the proxy in HTTP mode over `addrs` with extra config lines for `[proxy]`,
/// `[timeouts]` and `[http]`.
pub fn http_proxy(addrs: &[SocketAddr], algorithm: &str, timeouts: &str, http: &str) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nalgorithm = {algorithm}\nworkers = 64\n[health]\nenabled = false\n\
         [timeouts]\n{timeouts}\n[http]\n{http}\n{}",
        backends_section(addrs)
    );
    proxy_with(&config, &[])
}

/// A hand-written HTTP backend: for each request head it receives (bodies are not read), it
/// writes what `reply` returns; `close_after` closes the connection after that many responses.
/// Every received head is kept in `seen`.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections this backend has closed.
    pub closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    /// Waits until the backend has closed `n` connections.
    pub fn wait_closed(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.closed.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "backend closed only {:?}", self.closed);
            thread::sleep(Duration::from_millis(1));
        }
    }
}

pub fn raw_backend(reply: fn(&str) -> Vec<u8>, close_after: usize) -> RawBackend {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, conns2, closed2) = (seen.clone(), connections.clone(), closed.clone());
    thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(s) = stream else { return };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen2.clone();
            let closed = closed2.clone();
            thread::spawn(move || {
                serve_raw(s, reply, close_after, &seen);
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    RawBackend { addr, seen, connections, closed }
}

fn serve_raw(mut s: TcpStream, reply: fn(&str) -> Vec<u8>, close_after: usize, seen: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut served = 0;
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            seen.lock().expect("seen").push(head.clone());
            if s.write_all(&reply(&head)).is_err() {
                return;
            }
            served += 1;
            if served == close_after {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
