//! The admin listener (`[admin] listen`): `GET /stats` (JSON), `GET /metrics` (Prometheus text)
//! and `GET /health` (the proxy's own liveness), one request per connection.
//!
//! One admin thread serves every admin connection with nonblocking sockets and poll(2), so no
//! client can hold up another: a liveness probe is answered at once even while hundreds of idle
//! or byte-dripping connections are open. Each connection is a small state machine
//! ([`conn`]): its whole request head must arrive within [`HEAD_TIMEOUT`] (else 408, as
//! HAProxy's `timeout http-request`), its response leave within [`SEND_TIMEOUT`], and at most
//! [`MAX_PENDING`] connections are held (beyond that the oldest is closed), so the admin port
//! cannot use up the proxy's descriptors. [`event_loop`] owns the poll loop.

mod conn;
mod event_loop;

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::balancer::Balancer;
use crate::h1::respond::SimpleResponse;
use crate::stats::{metrics_text, stats_json, ProxyCounters};

/// The whole request head must arrive within this long of the connect, however it is sliced
/// into reads; then the client gets 408 and the connection is closed.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole response must be sent within this long; then the connection is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// After the response, how long to keep reading (and discarding) until the client closes, so
/// that a close with unread bytes does not reset the connection before the response is read
/// (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(1);

/// Connections held at once; accepting one more closes the oldest.
pub const MAX_PENDING: usize = 256;

/// Largest request head accepted (431 beyond it).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the admin endpoints read.
pub struct Admin {
    pub balancer: Arc<Balancer>,
    pub counters: Arc<ProxyCounters>,
}

/// Serves `listener` on a thread named `admin` until `stopping` is set and the listener is
/// shut down (either one wakes the thread at once).
pub fn spawn(
    listener: Arc<TcpListener>,
    admin: Admin,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("admin".into()).spawn(move || event_loop::run(&listener, &admin, &stopping))
}

/// The complete response to `method path` (the query string is ignored).
fn route(admin: &Admin, method: &str, path: &str) -> Vec<u8> {
    let path = path.split('?').next().unwrap_or("");
    let text = "text/plain";
    let (status, content_type, body) = match (method, path) {
        ("GET", "/stats") => (200, "application/json", stats_json(&admin.balancer, &admin.counters)),
        ("GET", "/metrics") => {
            (200, "text/plain; version=0.0.4", metrics_text(&admin.balancer, &admin.counters))
        }
        ("GET", "/health") => (200, text, "ok\n".to_string()),
        ("GET", _) => (404, text, "try /stats, /metrics or /health\n".to_string()),
        _ => (405, text, "GET only\n".to_string()),
    };
    // RFC 9110 §15.5.6: a 405 names the methods that are allowed.
    let allow: &[(&str, &str)] = &[("Content-Type", content_type), ("Allow", "GET")];
    let headers = if status == 405 { allow } else { &allow[..1] };
    SimpleResponse { status, headers, body: body.as_bytes(), close: true }.to_bytes()
}
