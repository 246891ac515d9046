//! The admin listener (`[admin] listen`): `GET /` (the dashboard page), `GET /events` (its
//! live Server-Sent Events), `GET /stats` (JSON), `GET /metrics` (Prometheus text),
//! `GET /health` (the proxy's own liveness), and the runtime API `POST /backends/NAME/ACTION`
//! ([`api`]); one request per connection, except an `/events` stream, which stays open.
//!
//! One admin thread serves every admin connection with nonblocking sockets and poll(2), so no
//! client can hold up another: a liveness probe is answered at once even while hundreds of idle
//! or byte-dripping connections are open. Each connection is a small state machine
//! ([`conn`]): its whole request head must arrive within [`HEAD_TIMEOUT`] (else 408, as
//! HAProxy's `timeout http-request`), its response leave within [`SEND_TIMEOUT`], and at most
//! [`MAX_PENDING`] connections are held (beyond that the oldest is closed), so the admin port
//! cannot use up the proxy's descriptors. [`event_loop`] owns the poll loop.

mod api;
mod conn;
mod dashboard;
mod event_loop;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use self::conn::Reply;
use self::dashboard::Dashboard;
use crate::events;
use crate::h1::head::Request;
use crate::h1::respond::SimpleResponse;
use crate::route::Router;
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

/// The dashboard page: one file, its script and style inline, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// What the admin endpoints read and change.
pub struct Admin {
    /// The pools in force (through their table) and their balancers.
    pub router: Arc<Router>,
    /// Per-client limits (for the number of clients tracked).
    pub policy: Arc<crate::conn::policy::Policy>,
    pub counters: Arc<ProxyCounters>,
    /// `[admin] token`: required as `Authorization: Bearer TOKEN` on every POST.
    pub token: Option<String>,
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

/// The answer to `req` from `peer`.
fn route(admin: &Admin, dashboard: &Dashboard, req: &Request, peer: SocketAddr) -> Reply {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let text = "text/plain";
    let json = "application/json";
    // HEAD is GET without the body (RFC 9110 9.3.2), but for the endless /events stream.
    let head = req.method == "HEAD" && path != "/events";
    let method = if head { "GET" } else { req.method.as_str() };
    let (status, content_type, body) = match (method, path) {
        ("GET", "/") => (200, "text/html; charset=utf-8", PAGE.to_string()),
        ("GET", "/events") => match stream_for(query) {
            Ok(until) => return events_reply(dashboard, until),
            Err(why) => (400, text, why),
        },
        ("GET", "/stats") => {
            (200, json, stats_json(&admin.router.table(), &admin.counters, admin.policy.tracked()))
        }
        ("GET", "/metrics") => {
            (200, "text/plain; version=0.0.4", metrics_text(&admin.router.table(), &admin.counters))
        }
        ("GET", "/health") => (200, text, "ok\n".to_string()),
        ("POST", p) if p.starts_with("/backends/") => {
            if !api::same_origin(admin, req) {
                log::warn!("admin {peer}: POST {p} refused: sent by a page of another origin, or to a name without a token");
                let why = "a page of another origin may not use this API; without [admin] token, name the listener by address or localhost";
                (403, json, format!("{}\n", serde_json::json!({ "error": why })))
            } else if api::authorized(admin, req) {
                let (status, body) = api::post(admin, p, query, peer);
                (status, json, body)
            } else {
                log::warn!("admin {peer}: POST {p} refused: no valid bearer token");
                (401, json, "{\"error\": \"this admin listener needs Authorization: Bearer TOKEN\"}\n".into())
            }
        }
        ("GET", p) if p.starts_with("/backends/") => (405, text, "POST only\n".to_string()),
        ("GET", _) => {
            (404, text, "try /, /events, /stats, /metrics, /health or POST /backends/NAME/ACTION\n".into())
        }
        _ => (405, text, "GET, or POST /backends/NAME/ACTION\n".to_string()),
    };
    // RFC 9110 §15.5.6: a 405 names the methods that are allowed.
    let allow = match path {
        p if p.starts_with("/backends/") => "POST",
        "/events" => "GET",
        _ => "GET, HEAD",
    };
    let allow: &[(&str, &str)] = &[("Content-Type", content_type), ("Allow", allow)];
    let headers = if status == 405 { allow } else { &allow[..1] };
    let mut headers = headers.to_vec();
    // The page's buttons POST to the API: framed by another site (clickjacking), a click there
    // would be a same-origin POST here. No frames, and no guessing at types.
    headers.extend([
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", "frame-ancestors 'none'"),
        ("X-Content-Type-Options", "nosniff"),
    ]);
    if status == 401 {
        headers.push(("WWW-Authenticate", "Bearer"));
    }
    let mut bytes =
        SimpleResponse { status, headers: &headers, body: body.as_bytes(), close: true }.to_bytes();
    if head {
        bytes.truncate(bytes.len() - body.len());
    }
    Reply::Full(bytes)
}

/// `for=N` in an `/events` query: end the stream after N seconds (1..=86400), for a viewer
/// that wants a bounded watch (a script, a headless browser). Absent: no end.
fn stream_for(query: &str) -> Result<Option<Duration>, String> {
    let Some(value) = query.split('&').find_map(|kv| kv.strip_prefix("for=")) else { return Ok(None) };
    match value.parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(Some(Duration::from_secs(n))),
        _ => Err(format!("for={value}: expected whole seconds in 1..=86400\n")),
    }
}

/// The start of an `/events` stream: the head, the rate history, the recent feed and the last
/// tick, so a new viewer has the whole picture at once.
fn events_reply(dashboard: &Dashboard, until: Option<Duration>) -> Reply {
    let (sub, recent) = events::subscribe();
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                    Connection: close\r\n\r\n"
        .to_vec();
    let first = std::iter::once(dashboard.history_event())
        .chain(recent.iter().map(|e| e.to_string()))
        .chain(dashboard.last_tick().map(|t| dashboard::for_viewer(t, 0)));
    for event in first {
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
    Reply::Events(out, sub, until)
}
