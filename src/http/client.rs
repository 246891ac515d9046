//! The client side's small I/O in HTTP mode: reads that do not wait (for the parker), the
//! error responses the proxy writes itself, the access-log line, and how a connection leaves
//! its worker for the parker.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::context::Record;
use crate::conn::accept::ClientStream;
use crate::conn::policy::Refused;
use crate::conn::{Conn, PartialHead};
use crate::context::Context;
use crate::error::Failure;
use crate::h1::request::RequestHead;
use crate::h1::respond::{head_len, text_error};
use crate::h1::Coalesce;
use crate::logging::access;
use crate::logging::line::{escape_into, Entry};
use crate::park::Parker;

/// Answers a request head refused before any backend was asked (see [`Conn::refuse_head`],
/// which logs it); the caller closes.
#[cold]
#[inline(never)]
pub(super) fn refuse_head(conn: &Conn, client: &ClientStream, f: &Failure, buf: &mut Vec<u8>) {
    let Some(answer) = conn.refuse_head(f) else { return };
    let mut out = Coalesce::new(client, buf);
    let _ = out.write_all(&answer).and_then(|()| out.flush());
}

/// Answers a new connection `[limits]` refuses (allow/deny, the connection limit) and logs it:
/// in the main log, and in a standard access log, as nginx logs its `deny` and `limit_conn`.
/// The caller closes.
#[cold]
pub(super) fn refuse_admission(conn: &Conn, ctx: &Context, stream: &ClientStream, why: Refused) {
    ctx.refused(format_args!("conn {}", conn.id), conn.peer.ip(), why);
    let (status, note) = (why.status(), why.text());
    let bytes = text_error(status, note, None, true);
    let _ = (&*stream).write_all(&bytes);
    let (ip, elapsed) = (conn.peer.ip(), conn.accepted.elapsed());
    access::refused(ip, status, &bytes, elapsed, &note, |note| {
        format!("conn {} from {}: refused with {status}: {note}", conn.id, conn.peer)
    });
    stream.notify_close();
}

/// Writes the request's access line, in the wording in force.
#[inline(never)]
pub(super) fn access_log(conn: &Conn, head: &RequestHead, r: &Record, started: Instant) {
    if !access::enabled() {
        return;
    }
    let duration = started.elapsed();
    let entry = Entry {
        client: Some(r.client.unwrap_or(conn.peer.ip())),
        method: &head.method,
        target: &head.target,
        protocol: if head.version == 0 { "HTTP/1.0" } else { "HTTP/1.1" },
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        body_bytes: r.bytes_out.saturating_sub(r.head_out),
        duration,
        connect: r.connect,
        head: r.head_time,
        pool: &r.pool,
        route: &r.route_name,
        backend: &r.backend,
        reason: &r.reason,
        attempts: r.attempts,
        request_id: &head.request_id,
        user_agent: &head.user_agent,
        referer: &head.referer,
        tls: r.tls,
        note: &r.note,
    };
    access::write(&entry, || main_line(conn, head, r, duration));
}

/// `req <id> <client> "GET /" route … -> backend (why) 200 …B in …B out 1.2 ms [note]`.
fn main_line(conn: &Conn, head: &RequestHead, r: &Record, took: Duration) -> String {
    let mut line = match r.client {
        // Behind a trusted proxy: the client it forwarded for, then the proxy.
        Some(client) => format!("req {} {client} via {}", head.request_id, conn.peer),
        None => format!("req {} {}", head.request_id, conn.peer),
    };
    // The target's `"` and `\` escaped as nginx escapes them, so it cannot fake the fields after it.
    let _ = write!(line, " \"{} ", head.method);
    escape_into(&mut line, &head.target);
    line.push('"');
    if !r.route.is_empty() {
        let _ = write!(line, " {}", r.route);
    }
    let _ = write!(line, " -> {}", if r.backend.is_empty() { "-" } else { &r.backend });
    if !r.reason.is_empty() {
        let _ = write!(line, " ({})", r.reason);
    }
    let _ = write!(
        line,
        " {} {}B in {}B out {:.1} ms",
        r.status,
        r.bytes_in,
        r.bytes_out,
        took.as_secs_f64() * 1000.0
    );
    if !r.note.is_empty() {
        let _ = write!(line, " [{}]", r.note);
    }
    line
}

/// The client's TLS version as logs name it (`TLSv1.3`); `None` for plain HTTP.
pub(super) fn tls_version(client: &ClientStream<'_>) -> Option<&'static str> {
    let crate::tls::stream::Stream::Tls(_, c) = client else { return None };
    crate::tls::stream::version_name(&c.lock())
}

/// Whether a TLS client's next bytes were already received and decrypted: the socket would
/// not say so, so it must not wait in the parker.
pub(super) fn holds_plaintext(client: &ClientStream<'_>) -> bool {
    match client {
        crate::tls::stream::Stream::Plain(_) => false,
        crate::tls::stream::Stream::Tls(_, c) => crate::tls::stream::has_plaintext(&mut c.lock()),
    }
}

/// Reads what the client has sent, without waiting: `WouldBlock` when nothing is there.
pub(super) fn read_now(client: &mut &ClientStream<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match client {
        crate::tls::stream::Stream::Plain(sock) => crate::net::recv(sock, buf, false),
        crate::tls::stream::Stream::Tls(sock, c) => {
            crate::tls::stream::read_tls_plain_now(&mut c.lock(), sock, buf)
        }
    }
}

/// Reads what the client sends within `limit`, a brief wait (a new connection's first bytes):
/// what is there at once, else what `poll(2)` sees come in time (an exact wait, where the
/// socket's timeout would round up to the kernel's tick). `TimedOut` when nothing came.
pub(super) fn fill_within(
    cw: &mut crate::h1::Wire<&ClientStream<'_>>,
    sock: &std::net::TcpStream,
    max_head: usize,
    limit: Duration,
) -> io::Result<usize> {
    let until = Instant::now() + limit;
    loop {
        match cw.fill_by(max_head, read_now) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !crate::threads::gate::readable_within(sock, left)? {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
}

/// A redirect (`status`, `Location: to`), through the one simple-response writer.
pub(super) fn redirect(status: u16, to: &str, id: &str, close: bool) -> Vec<u8> {
    let body = format!("{status} {}: {to}\n", crate::h1::reason(status));
    let headers = [("Location", to), ("Content-Type", "text/plain"), ("X-Request-ID", id)];
    crate::h1::respond::SimpleResponse { status, headers: &headers, body: body.as_bytes(), close }.to_bytes()
}

/// Writes a short text error response through the one simple-response writer; returns the
/// bytes written.
#[inline(never)]
pub(super) fn write_error(
    out: &mut impl Write,
    status: u16,
    why: &str,
    id: Option<&str>,
    close: bool,
) -> io::Result<(u64, u64)> {
    let bytes = text_error(status, why, id, close);
    out.write_all(&bytes)?;
    out.flush()?;
    Ok((bytes.len() as u64, head_len(&bytes) as u64))
}

/// How a connection that is not closed leaves its worker, between requests (`park`, at the back
/// of the queue when `requeue`) or in the middle of a head (`pending`): into the parker; `Some`
/// when it goes on in this worker instead (refused at a stop).
pub(super) fn leave(
    mut conn: Conn,
    ctx: &Context,
    parker: &Parker,
    (pending, park, requeue): (Option<PartialHead>, bool, bool),
    since: Instant,
) -> Option<Conn> {
    // Refused only at shutdown (or if the socket cannot be watched): then closed, but for a
    // new connection that has sent nothing yet: its first request may be on the wire (a TLS
    // client sends it right after the handshake), so this worker serves it, with
    // `Connection: close`, if it comes within SHUTDOWN_GRACE (see `IdleTimers::before`).
    if let Some(head) = pending {
        let deadline =
            (!ctx.config.timeouts.header.is_zero()).then(|| head.started + ctx.config.timeouts.header);
        conn.head = Some(head);
        let back = parker.park_head(conn, deadline)?;
        if back.sent_nothing() && ctx.stopping.load(Ordering::SeqCst) {
            return Some(back);
        }
    } else if park {
        let conn = if requeue { parker.requeue(conn, since) } else { Some(conn) };
        let conn = conn?;
        if let Some(mut back) = parker.park(conn, since) {
            // Refused because the proxy stops: the client may have its next request on the
            // wire already, so this worker serves it (with `Connection: close`) within
            // SHUTDOWN_GRACE of its last response, as if it had never parked: it comes back
            // as from the parker, idle since then, not as a new connection (which would wait
            // header_ms for a first request). Otherwise (the socket cannot be watched) it is
            // closed, idle.
            if ctx.stopping.load(Ordering::SeqCst) {
                back.parked_since = Some(since);
                return Some(back);
            }
        }
    }
    None
}
