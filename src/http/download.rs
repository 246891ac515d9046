//! A large response body that goes to the client as the backend framed it (a
//! `Content-Length` kept): written by the worker while its client takes each piece at once,
//! then, from the first it cannot take, streamed by the relay the one way, so that a client
//! reading it slowly waits in the parker with what is held for it, not in a worker (nginx and
//! HAProxy keep such a client in their event loops too). The exchange ends when the body's
//! last byte is out: the backend connection is pooled, the access line written, and the
//! client's next request read, as after any response.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use super::client::access_log;
use super::context::{reusable, BackendStream, Exchange, Record, Scratch};
use crate::backend::Backend;
use crate::balancer::{Balancer, Pick};
use crate::conn::{Conn, PartialHead, Quiet};
use crate::context::Context;
use crate::error::{Cause, Failure, Party, Phase};
use crate::h1::request::RequestHead;
use crate::h1::response::ResponseHead;
use crate::h1::{BodyKind, Coalesce, Wire};
use crate::park::PARK_AFTER;
use crate::relay::{self, End, ParkWhen, Progress, RelayOutcome, Relayed};
use crate::tls::stream::Stream;

/// Bodies larger than this may go by the relay: a smaller one fits a new connection's send
/// buffer (16 KiB on Linux), so even a client that reads nothing holds no worker for it.
pub(super) const LARGE: u64 = 16 * 1024;

/// A body under way between turns: the backend's slot, how far it got, and what its end
/// decides.
pub(super) struct Download {
    pick: Pick,
    backend: Arc<Backend>,
    /// Its pool's: a failure after a park counts as one in the first turn does.
    balancer: Arc<Balancer>,
    progress: Progress,
    len: u64,
    /// The backend connection goes back to the pool at the end.
    reusable: bool,
    /// The client connection stays open for another request.
    keep_alive: bool,
    /// When the exchange began: the backend's latency counts to the body's end.
    began: Instant,
    /// It went by the relay, which left both sockets non-blocking.
    relays: bool,
}

/// A download gone quiet as it waits in the parker ([`Quiet::state`]): the download, what its
/// access line will say, and bytes of the client's next request already read.
pub(super) struct Parked {
    pub download: Box<Download>,
    pub head: RequestHead,
    pub record: Record,
    pub started: Instant,
    pub pipelined: Vec<u8>,
}

/// The body's length if this response goes by the relay: a large `Content-Length` body kept
/// as is, from a plain backend (a TLS one's plaintext beyond the body could not be left
/// unread), once the request was sent whole, while there is a parker.
pub(super) fn fits(
    ctx: &Context,
    resp: &ResponseHead,
    stream: &BackendStream,
    body_done: bool,
) -> Option<u64> {
    let BodyKind::Length(len) = resp.body else { return None };
    let plain = matches!(stream, Stream::Plain(_));
    (ctx.parker.is_some() && body_done && plain && resp.client_body == resp.body && len > LARGE)
        .then_some(len)
}

/// Sends the response head, then the body: while a plain client takes each piece at once, by
/// the worker's own reads and writes, as any body; from the first it cannot take, by the relay
/// until it is out or goes quiet. How that went, for [`first`] once the backend stream is free.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    ex: &Exchange<'_>,
    bw: &mut Wire<&BackendStream>,
    stream: &BackendStream,
    pick: Pick,
    resp: &ResponseHead,
    len: u64,
    scratch: &mut Scratch,
    record: &mut Record,
    began: Instant,
) -> Result<(Relayed, Box<Download>), Failure> {
    let backend = pick.guard.backend().clone();
    let client_gone = |e: io::Error| Failure::new(Party::Client, Phase::Body, Cause::Io(e));
    let mut cout = Coalesce::new(ex.client, &mut scratch.client_out);
    let head = cout.write_all(&scratch.resp_head).and_then(|()| cout.flush());
    if head.is_ok() {
        record.bytes_out += scratch.resp_head.len() as u64;
        record.head_out = scratch.resp_head.len() as u64;
    }
    backend.record_bytes(record.bytes_in, record.bytes_out);
    head.map_err(client_gone)?;
    let mut sent = 0;
    if let Stream::Plain(client) = ex.client {
        let at_once = at_once(client, bw, len, &mut sent);
        backend.record_bytes(0, sent);
        if let Err((party, e)) = at_once {
            record.bytes_out += sent;
            return Err(match party {
                Party::Backend => Failure::at(backend.name(), Party::Backend, Phase::Body, Cause::Io(e)),
                _ => client_gone(e),
            });
        }
    }
    // Bytes read beyond the body are a backend's framing error: the connection is not pooled.
    let left = usize::try_from(len - sent).unwrap_or(usize::MAX);
    let early = &bw.buffered()[..bw.buffered().len().min(left)];
    let surplus = bw.buffered().len() - early.len();
    let reusable = reusable(&ex.head.request_id, &backend, resp, surplus);
    let keep_alive = resp.client_keep_alive;
    let relays = sent < len;
    let balancer = ex.pool.balancer.clone();
    let progress = Progress::start();
    let download = Download { pick, backend, balancer, progress, len, reusable, keep_alive, began, relays };
    if !relays {
        return Ok((Relayed::Ended(RelayOutcome { up: 0, down: sent, error: None }), Box::new(download)));
    }
    let mut guard;
    let client = match ex.client {
        Stream::Plain(s) => End::plain(s),
        Stream::Tls(s, c) => {
            guard = c.lock();
            End { sock: s, tls: Some(&mut *guard), early: &[] }
        }
    };
    // A plain backend ([`fits`]).
    let up = End { sock: stream.tcp(), tls: None, early };
    let wanted = || ex.ctx.worker_wanted();
    let park = Some(ParkWhen { after: PARK_AFTER, wanted: &wanted });
    let backend = download.backend.clone();
    let tally = |up, down| backend.record_bytes(up, down);
    let idle = ex.ctx.config.timeouts.idle;
    let from = Progress { down: sent, ..Progress::body(len, ex.ctx.config.timeouts.response) };
    let relayed = relay::resume(client, up, idle, &mut scratch.relay, from, park, &tally);
    Ok((relayed, Box::new(download)))
}

/// Sends the body (`sent` of its `len` bytes so far) to a plain client while it takes each
/// piece at once, reading the backend as the worker reads any body; stops at the first piece
/// the client has no room for, its rest in the buffer. The failing side, if one fails.
fn at_once(
    client: &TcpStream,
    bw: &mut Wire<&BackendStream>,
    len: u64,
    sent: &mut u64,
) -> Result<(), (Party, io::Error)> {
    bw.grow_for_body();
    while *sent < len {
        if bw.buffered().is_empty() {
            match bw.fill(crate::h1::BODY_BUFFER) {
                Ok(0) => {
                    return Err((
                        Party::Backend,
                        io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early"),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err((Party::Backend, e)),
            }
        }
        let take = bw.buffered().len().min(usize::try_from(len - *sent).unwrap_or(usize::MAX));
        let n = match crate::net::send_now(client, &bw.buffered()[..take]) {
            Ok(n) => n,
            Err(e) if crate::net::is_timeout(&e) => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((Party::Client, e)),
        };
        bw.consume(n);
        *sent += n as u64;
        if n < take {
            return Ok(());
        }
    }
    Ok(())
}

/// After the first turn ([`start`]): `Ok(true)` when the body ended with the connection kept
/// for another request, `Ok(false)` closed; a quiet one comes back as its backend socket and
/// state, to park.
pub(super) fn first(
    ctx: &Context,
    client: &TcpStream,
    stream: BackendStream,
    (relayed, mut download): (Relayed, Box<Download>),
    record: &mut Record,
) -> Result<Result<bool, (TcpStream, Box<Download>)>, Failure> {
    let (sock, _) = stream.into_parts();
    match relayed {
        Relayed::Quiet(p) => {
            download.progress = p;
            Ok(Err((sock, download)))
        }
        Relayed::Ended(out) => ended(ctx, client, sock, *download, out, record).map(Ok),
    }
}

/// The end of a body: counted in the record; the backend connection pooled if the body came
/// whole and it may be reused; both sockets blocking again. Whether the client connection
/// stays open, or why it closes.
fn ended(
    ctx: &Context,
    client: &TcpStream,
    sock: TcpStream,
    d: Download,
    out: RelayOutcome,
    record: &mut Record,
) -> Result<bool, Failure> {
    record.bytes_out += out.down;
    let backend = d.backend.clone();
    drop(d.pick);
    if let Some(mut f) = out.error {
        if f.party == Party::Backend {
            f.backend = Some(backend.name().to_string());
        }
        f.phase = Phase::Body;
        return Err(f);
    }
    if out.down < d.len {
        // The backend closed inside the body (its end passed on): the client sees it cut.
        let cause = Cause::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early"));
        return Err(Failure::at(backend.name(), Party::Backend, Phase::Body, cause));
    }
    backend.latency().record(d.began.elapsed());
    if d.relays && client.set_nonblocking(false).is_err() {
        return Ok(false);
    }
    if d.reusable && (!d.relays || sock.set_nonblocking(false).is_ok()) {
        backend.put_idle(sock, ctx.config.http.backend_keepalive);
    }
    Ok(d.keep_alive)
}

/// Parks a quiet download with its connection; resumed by [`resume`] when the client has room
/// or the backend sends. Refused (the proxy stops): it goes on in this worker until it ends,
/// and `Some` if the connection then goes on to its next request.
pub(super) fn park(
    mut conn: Conn,
    ctx: &Context,
    sock: TcpStream,
    parked: Parked,
    scratch: &mut Scratch,
) -> Option<Conn> {
    let parker = ctx.parker.as_deref()?;
    let id = parked.download.backend.id();
    let quiet = Quiet::after(&parked.download.progress, ctx.config.timeouts.idle, sock, id);
    conn.go_quiet(quiet.with(Box::new(parked)));
    let back = parker.park_quiet(conn)?;
    run(back, ctx, false, scratch)
}

/// Whether `conn`, back from the parker, carries a download.
pub(super) fn carries(conn: &Conn) -> bool {
    conn.quiet().is_some_and(|q| q.state.is::<Parked>())
}

/// A connection back from the parker with a download: relays until it goes quiet again (parked
/// again) or ends; then the access line, and the client's next request.
pub(super) fn resume(conn: Conn, ctx: &Context, scratch: &mut Scratch) -> Option<Conn> {
    run(conn, ctx, true, scratch)
}

/// A turn of a download; `Some` when it ended and the connection goes on to its next request.
fn run(mut conn: Conn, ctx: &Context, may_park: bool, scratch: &mut Scratch) -> Option<Conn> {
    let q = conn.take_quiet()?;
    let Quiet { backend: sock, state, .. } = *q;
    let mut parked = *state.downcast::<Parked>().ok()?;
    let mut session = conn.tls_session.take();
    let wanted = || ctx.worker_wanted();
    let after = may_park.then_some(ParkWhen { after: PARK_AFTER, wanted: &wanted });
    let step = {
        let d = &mut parked.download;
        let _attached = conn.attach(&sock, d.backend.id());
        let client = End { sock: &conn.stream, tls: session.as_mut().map(|s| s.get_mut()), early: &[] };
        let backend = End::plain(&sock);
        let tally = |up, down| d.backend.record_bytes(up, down);
        let from = std::mem::replace(&mut d.progress, Progress::start());
        relay::resume(client, backend, ctx.config.timeouts.idle, &mut scratch.relay, from, after, &tally)
    };
    conn.tls_session = session;
    let out = match step {
        Relayed::Quiet(p) => {
            parked.download.progress = p;
            return park(conn, ctx, sock, parked, scratch);
        }
        Relayed::Ended(out) => out,
    };
    let Parked { download, head, mut record, started, pipelined } = parked;
    let (backend, balancer) = (download.backend.clone(), download.balancer.clone());
    let keep = match ended(ctx, &conn.stream, sock, *download, out, &mut record) {
        Ok(keep) => keep,
        // As the retry loop counts one in the first turn: passive health and least-time's cost,
        // unless the proxy's stop cut it.
        Err(_) if conn.cut() => {
            record.note = Failure::cut(backend.name(), Phase::Body).to_string();
            false
        }
        Err(f) => {
            balancer.record_failure(&backend, &f);
            if balancer.measures_time() && f.counts_against_backend() {
                backend.latency().penalize();
            }
            record.note = f.to_string();
            false
        }
    };
    access_log(&conn, &head, &record, started);
    if !keep {
        // A TLS client gets `close_notify` before the close, as after any last response.
        if let Some(session) = &conn.tls_session {
            crate::tls::stream::notify_close(&mut session.lock(), &conn.stream);
        }
        return None;
    }
    // On to the next request, as a keep-alive connection back from the parker, with what it
    // sent of it already.
    let now = Instant::now();
    conn.parked_since = Some(now);
    // While connections wait for a worker, it reads what it has and parks at once if nothing.
    conn.requeued = ctx.parker.as_ref().is_some_and(|p| p.pressed());
    if !pipelined.is_empty() {
        conn.head = Some(PartialHead { started: now, bytes: pipelined, hello: false });
    }
    Some(conn)
}
