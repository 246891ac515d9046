//! What the steps of an HTTP connection share: the workers' [`Context`], the buffers a worker
//! reuses, the access log's record, and one request on its way (its attempts so far).

use std::net::TcpStream;

use crate::backend::Backend;
use crate::conn::accept::ClientStream;
use crate::conn::Conn;
use crate::h1::request::RequestHead;
use crate::h1::response::ResponseHead;
use crate::h1::BodyKind;
use crate::relay::Buffers;
use crate::route::{Loaded, Pool, Route};
use crate::tls::stream::Stream;

/// Whether a backend connection may go back to the pool after `resp`: nothing came beyond the
/// response's framing (`surplus` bytes: discarded and logged), the response allows it, and no
/// PROXY header began it (such a connection speaks for one client only, as nginx and HAProxy
/// rule).
pub(super) fn reusable(request_id: &str, backend: &Backend, resp: &ResponseHead, surplus: usize) -> bool {
    if surplus > 0 {
        log::warn!(
            "req {request_id}: {} sent {surplus} byte(s) beyond the response's framing; discarded, connection closed",
            backend.name()
        );
        return false;
    }
    resp.backend_reusable && backend.send_proxy().is_none()
}

/// The `Via` pseudonym.
pub const VIA: &str = "lbproxy";

use crate::context::Context;

/// Buffers a worker reuses from one connection to the next.
#[derive(Default)]
pub struct Scratch {
    pub(super) client_in: Vec<u8>,
    pub(super) client_out: Vec<u8>,
    pub(super) backend_in: Vec<u8>,
    pub(super) backend_out: Vec<u8>,
    pub(super) head: Vec<u8>,
    pub(super) resp_head: Vec<u8>,
    /// An upgraded connection's relay buffers.
    pub(super) relay: Buffers,
    /// The route table this worker last used (see [`Loaded::refresh`]).
    pub(super) routes: Option<Loaded>,
}

impl Scratch {
    /// Frees the buffers between requests of an idle connection. Freed memory goes back to the
    /// allocator and serves busy workers, so resident memory follows the requests in flight,
    /// not the connections held.
    pub(super) fn release(&mut self) {
        let routes = self.routes.take();
        *self = Scratch { routes, ..Scratch::default() };
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
    /// The route that matched, as the access line names it (`route api (path /api)`).
    pub route: String,
    /// Behind a trusted proxy: the client it forwarded for, named first in the access line.
    pub client: Option<std::net::IpAddr>,
    /// Bytes of response head in `bytes_out` (the rest is body: `$body_bytes_sent`).
    pub head_out: u64,
    /// Backends tried.
    pub attempts: u32,
    /// The last attempt's connect time (zero when reused) and its time to the response head.
    pub connect: Option<std::time::Duration>,
    pub head_time: Option<std::time::Duration>,
    /// The client's TLS version.
    pub tls: Option<&'static str>,
    /// The pool's and route's names, for the wordings that carry them (not `main`).
    pub pool: String,
    pub route_name: String,
}

/// A backend connection: plain, or TLS for a backend marked `tls`.
pub(super) type BackendStream = Stream<TcpStream>;
/// What one request's attempts have done so far: it decides what may still be retried.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The pooled connection was stale: the next attempt connects afresh.
    pub fresh_only: bool,
    /// `100 Continue` was sent to the client.
    pub continued: bool,
    /// Some of the request body was read from the client: it cannot be sent again.
    pub body_touched: bool,
    /// The whole request body was read from the client.
    pub body_done: bool,
    /// A backend's status was retried on another (`retry_on`): not again.
    pub status_retried: bool,
    /// An attempt failed and the request went on to another member: `retry_on` no longer
    /// applies (a stale pooled connection replaced by a fresh one does not count, wherever the
    /// algorithm then sends the request).
    pub moved_on: bool,
    /// A 1xx other than `100 Continue` was forwarded to the client.
    pub informed: bool,
    /// The bytes of the informational (1xx) heads this attempt's backend sent so far: together
    /// they may not exceed `[http] max_head_bytes`, so a backend cannot send them without end.
    pub interim_bytes: usize,
}

/// One request on its way through the proxy.
pub struct Exchange<'a> {
    pub conn: &'a Conn,
    /// The client's stream (plain or TLS) over `conn`'s socket.
    pub client: &'a ClientStream<'a>,
    pub ctx: &'a Context,
    pub head: &'a RequestHead,
    /// Whether the client connection may stay open after this request.
    pub keep_alive: bool,
    /// The balancer's hash key (client address or `hash_header`); `None`: least connections.
    pub key: Option<u64>,
    /// The pool the request's route (or the default) chose.
    pub pool: &'a Pool,
    /// The route that matched, if any (its response rules apply).
    pub route: Option<&'a Route>,
}

impl Exchange<'_> {
    pub(super) fn has_body(&self) -> bool {
        !matches!(self.head.body, BodyKind::Empty | BodyKind::Length(0))
    }

    /// Names the request in the log (`req <id>`), formatted only when a line is written.
    pub(super) fn label(&self) -> ReqLabel<'_> {
        ReqLabel(&self.head.request_id)
    }
}

/// `req <id>`, as a log line names a request.
#[derive(Clone, Copy)]
pub struct ReqLabel<'a>(&'a str);

impl std::fmt::Display for ReqLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "req {}", self.0)
    }
}
