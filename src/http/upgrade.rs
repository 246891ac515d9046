//! HTTP upgrades (WebSocket): after a backend's `101` to a request that asked for one, the
//! head goes to the client and the connection becomes a two-way tunnel ([`crate::relay::tunnel`]),
//! idle-limited by `tunnel_ms`, counted per backend in /stats. A tunnel that goes quiet waits
//! in the parker with both sockets watched, and a worker resumes it when either side speaks;
//! its access line is written when it ends.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use super::client::access_log;
use super::context::{BackendStream, Exchange, Record, Scratch};
use crate::backend::Backend;
use crate::backend::TunnelGuard;
use crate::balancer::Pick;
use crate::conn::accept::ClientStream;
use crate::conn::{Conn, Quiet};
use crate::context::Context;
use crate::error::{Cause, Failure, Party, Phase};
use crate::h1::request::RequestHead;
use crate::h1::{Coalesce, Wire};
use crate::park::PARK_AFTER;
use crate::relay::{self, End, ParkWhen, Progress, Relayed};
use crate::tls::stream::Stream;

/// A tunnel's backend side between turns: its slot, its TLS state, its count in /stats and how
/// far it got.
pub(super) struct Tunnel {
    pick: Pick,
    backend: Arc<Backend>,
    tls: Option<rustls::Connection>,
    _open: TunnelGuard,
    progress: Progress,
}

/// A quiet tunnel as it waits in the parker ([`Quiet::state`]): the tunnel and what its
/// access line will say.
pub(super) struct Parked {
    pub tunnel: Box<Tunnel>,
    pub head: RequestHead,
    pub record: Record,
    pub started: Instant,
}

/// How the first turn of a tunnel ended.
pub(super) enum Switched {
    /// The tunnel is over (logged in the record).
    Ended,
    /// It went quiet: its progress, and its count in /stats still held.
    Quiet(Progress, TunnelGuard),
}

/// After a `101`: the head goes to the client, then bytes flow both ways (those already
/// buffered on either side first) until both sides close, an error, `tunnel_ms` idle, or (with
/// a parker) it goes quiet. The pick stays held, so the tunnel counts as one active connection.
#[allow(clippy::too_many_arguments)]
pub(super) fn switch(
    ex: &Exchange<'_>,
    cw: &mut Wire<&ClientStream<'_>>,
    bw: &mut Wire<&BackendStream>,
    stream: &BackendStream,
    backend: &Arc<Backend>,
    scratch: &mut Scratch,
    record: &mut Record,
) -> Result<Switched, Failure> {
    let client_gone = |e: io::Error| Failure::new(Party::Client, Phase::Body, Cause::Io(e));
    // Counted before the 101 leaves, so whoever sees the switch also sees the tunnel in /stats.
    let open = backend.open_tunnel();
    let mut cout = Coalesce::new(ex.client, &mut scratch.client_out);
    cout.write_all(&scratch.resp_head).and_then(|()| cout.flush()).map_err(client_gone)?;
    record.bytes_out += scratch.resp_head.len() as u64;
    record.head_out = scratch.resp_head.len() as u64;
    log::debug!("req {}: {} switched protocols; tunnelling", ex.head.request_id, backend.name());
    let mut guard;
    let (sock, tls) = match ex.client {
        Stream::Plain(s) => (*s, None),
        Stream::Tls(s, c) => {
            guard = c.lock();
            (*s, Some(&mut *guard))
        }
    };
    let client = End { sock, tls, early: cw.buffered() };
    let mut backend_guard;
    let up = match stream {
        Stream::Plain(s) => End { sock: s, tls: None, early: bw.buffered() },
        Stream::Tls(s, c) => {
            backend_guard = c.lock();
            End { sock: s, tls: Some(&mut *backend_guard), early: bw.buffered() }
        }
    };
    let wanted = || ex.ctx.worker_wanted();
    let park = parks(ex.ctx).then_some(ParkWhen { after: PARK_AFTER, wanted: &wanted });
    let tally = |up, down| backend.record_bytes(up, down);
    match relay::resume(
        client,
        up,
        ex.ctx.config.timeouts.tunnel,
        &mut scratch.relay,
        Progress::start(),
        park,
        &tally,
    ) {
        Relayed::Quiet(p) => Ok(Switched::Quiet(p, open)),
        Relayed::Ended(out) => {
            ended(&ex.head.request_id, backend, record, out);
            Ok(Switched::Ended)
        }
    }
}

/// Whether a tunnel may wait in the parker: at a stop too, through the drain (the parker
/// refuses it after, and it relays on in its worker).
fn parks(ctx: &Context) -> bool {
    ctx.parker.is_some()
}

/// Puts a tunnel's end in its record (the relay counted its bytes on the backend as they went).
fn ended(request_id: &str, backend: &Backend, record: &mut Record, out: crate::relay::RelayOutcome) {
    record.bytes_in += out.up;
    record.bytes_out += out.down;
    match out.error {
        None => {}
        Some(f) if matches!(f.cause, Cause::Timeout) => {
            record.note = "tunnel idle timeout".into();
            log::info!("req {request_id}: tunnel to {} idle for tunnel_ms, closed", backend.name());
        }
        Some(f) => {
            let by = if f.party == Party::Client { "client" } else { "backend" };
            record.note = format!("tunnel ended by {by} error: {}", f.cause);
        }
    }
}

/// A tunnel gone quiet in its first turn, with the backend stream and pick it ran on.
pub(super) fn quiet(
    stream: BackendStream,
    pick: Pick,
    progress: Progress,
    open: TunnelGuard,
) -> (TcpStream, Box<Tunnel>) {
    let backend = pick.guard.backend().clone();
    let (sock, tls) = stream.into_parts();
    (sock, Box::new(Tunnel { pick, backend, tls, _open: open, progress }))
}

/// Parks a quiet tunnel with its connection; resumed by [`resume`] when either side speaks.
/// Refused (the proxy stops): it goes on in this worker until it ends.
pub(super) fn park(mut conn: Conn, ctx: &Context, sock: TcpStream, parked: Parked, scratch: &mut Scratch) {
    let Some(parker) = ctx.parker.as_deref() else { return };
    let id = parked.tunnel.backend.id();
    let quiet = Quiet::after(&parked.tunnel.progress, ctx.config.timeouts.tunnel, sock, id);
    conn.go_quiet(quiet.with(Box::new(parked)));
    if let Some(back) = parker.park_quiet(conn) {
        run(back, ctx, false, scratch);
    }
}

/// A connection back from the parker with a quiet tunnel: relays until it goes quiet again
/// (parked again) or ends (logged). False when `conn` carries no tunnel.
pub(super) fn resume(conn: Conn, ctx: &Context, scratch: &mut Scratch) -> bool {
    if conn.quiet().is_none() {
        return false;
    }
    run(conn, ctx, parks(ctx), scratch);
    true
}

fn run(mut conn: Conn, ctx: &Context, may_park: bool, scratch: &mut Scratch) {
    let Some(q) = conn.take_quiet() else { return };
    let Quiet { backend: sock, state, .. } = *q;
    let Ok(parked) = state.downcast::<Parked>() else { return };
    let mut parked = *parked;
    let mut session = conn.tls_session.take();
    let wanted = || ctx.worker_wanted();
    let after = may_park.then_some(ParkWhen { after: PARK_AFTER, wanted: &wanted });
    let step = {
        let t = &mut parked.tunnel;
        let _attached = conn.attach(&sock, t.backend.id());
        let client = End { sock: &conn.stream, tls: session.as_mut().map(|s| s.get_mut()), early: &[] };
        let backend = End { sock: &sock, tls: t.tls.as_mut(), early: &[] };
        let tally = |up, down| t.backend.record_bytes(up, down);
        relay::resume(
            client,
            backend,
            ctx.config.timeouts.tunnel,
            &mut scratch.relay,
            std::mem::replace(&mut t.progress, Progress::start()),
            after,
            &tally,
        )
    };
    match step {
        Relayed::Quiet(p) => {
            parked.tunnel.progress = p;
            conn.tls_session = session;
            park(conn, ctx, sock, parked, scratch);
        }
        Relayed::Ended(out) => {
            let Parked { tunnel, head, mut record, started } = parked;
            ended(&head.request_id, &tunnel.backend, &mut record, out);
            drop(tunnel.pick);
            access_log(&conn, &head, &record, started);
        }
    }
}
