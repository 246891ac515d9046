//! TCP mode: each accepted connection is routed (by its TLS server name, when routes say so)
//! and balanced once, connected (with retries), relayed, and logged at its end with bytes each
//! way and duration. A relay that goes quiet waits in the parker, both sockets watched, and a
//! worker resumes it when either side speaks; so does a new connection before its TLS handshake
//! or ClientHello is in ([`open`]).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::balancer::Pick;
use crate::conn::{Conn, Quiet};
use crate::context::Context;
use crate::error::{Cause, Failure, Party, Phase};
use crate::logging::access;
use crate::logging::line::Entry;
use crate::park::PARK_AFTER;
use crate::relay::{self, Buffers, End, ParkWhen, Progress, RelayOutcome, Relayed};
use crate::route::Pool;

mod open;

use open::Relaying;

/// A relay's side while its connection waits in the parker ([`Quiet::state`]).
struct Held {
    pool: Arc<Pool>,
    /// The SNI route that chose the pool, for the access line (empty: none).
    route: String,
    pick: Pick,
    backend_tls: Option<rustls::Connection>,
    progress: Progress,
    connect: Duration,
}

/// Serves one client connection in the calling worker, relaying both directions (see
/// [`relay`]) with `bufs`, until it ends or goes quiet: then it waits in the parker, and a
/// worker resumes it when either side speaks. Never panics on network errors; every outcome is
/// logged.
pub fn serve(mut conn: Conn, ctx: &Context, bufs: &mut Buffers) {
    let mut r = match resumed(&mut conn) {
        Some(r) => r,
        // A new connection, or one back from the parker with more of its handshake or
        // ClientHello.
        None => match open::open(conn, ctx) {
            Some((c, r)) => {
                conn = c;
                r
            }
            None => return,
        },
    };
    let idle = ctx.config.timeouts.idle;
    // Parking is refused once the drain is over: the relay then goes on here until it ends.
    let mut park = ctx.parker.as_ref();
    loop {
        let b = r.pick.guard.backend().clone();
        let attached = conn.attach(&r.backend, b.id());
        let step = {
            let client = End { sock: &conn.stream, tls: r.client_tls.as_mut(), early: &r.early };
            let backend = End { sock: &r.backend, tls: r.backend_tls.as_mut(), early: &[] };
            let tally = |up, down| b.record_bytes(up, down);
            let wanted = || park.is_some_and(|p| p.worker_wanted());
            let when = park.map(|_| ParkWhen { after: PARK_AFTER, wanted: &wanted });
            let from = std::mem::replace(&mut r.progress, Progress::start());
            relay::resume(client, backend, idle, bufs, from, when, &tally)
        };
        drop(attached);
        let p = match step {
            Relayed::Ended(outcome) => return finish(&conn, r, outcome),
            Relayed::Quiet(p) => p,
        };
        let Some(parker) = park else { return };
        conn.tls_session = r.client_tls.take().map(|c| Box::new(Mutex::new(c)));
        let quiet = Quiet::after(&p, idle, r.backend, b.id());
        let held = Held {
            pool: r.pool,
            route: r.route,
            pick: r.pick,
            backend_tls: r.backend_tls,
            progress: p,
            connect: r.connect,
        };
        conn.go_quiet(quiet.with(Box::new(held)));
        match parker.park_quiet(conn) {
            None => return,
            Some(back) => conn = back,
        }
        park = None;
        let Some(again) = resumed(&mut conn) else { return };
        r = again;
    }
}

/// The relay a connection back from the parker carries, if any.
fn resumed(conn: &mut Conn) -> Option<Relaying> {
    let q = conn.take_quiet()?;
    let Quiet { backend, state, .. } = *q;
    let held = state.downcast::<Held>().ok()?;
    let client_tls = conn.tls_session.take().map(|c| Mutex::into_inner(*c));
    let Held { pool, route, pick, backend_tls, progress, connect } = *held;
    Some(Relaying {
        pool,
        route,
        backend,
        pick,
        early: Vec::new(),
        client_tls,
        backend_tls,
        progress,
        connect,
    })
}

/// Logs a relay's end (its access line, and a warning when an error ended it); its bytes were
/// counted on the backend as they went.
fn finish(conn: &Conn, r: Relaying, outcome: RelayOutcome) {
    let Relaying { pool, route, pick, client_tls, connect, .. } = r;
    let b = pick.guard.backend().clone();
    // The connection is over: give its slot back before saying so, so that whoever reads the
    // log line sees the count already lowered.
    drop(pick);
    let elapsed = conn.accepted.elapsed();
    b.latency().record(elapsed);
    let ms = elapsed.as_millis();
    let mut entry = Entry {
        client: Some(conn.peer.ip()),
        protocol: "TCP",
        status: 200,
        bytes_in: outcome.up,
        bytes_out: outcome.down,
        body_bytes: outcome.down,
        duration: elapsed,
        connect: Some(connect),
        pool: &pool.name,
        route: &route,
        backend: b.name(),
        attempts: 1,
        tls: client_tls.as_ref().and_then(crate::tls::stream::version_name),
        ..Entry::default()
    };
    let main = || {
        let (up, down) = (outcome.up, outcome.down);
        format!(
            "conn {} closed: {} -> {} {up} bytes up, {down} bytes down, {ms} ms",
            conn.id,
            conn.peer,
            b.name()
        )
    };
    let Some(mut f) = outcome.error else {
        if access::enabled() {
            access::write(&entry, main);
        }
        return;
    };
    f.backend = Some(b.name().to_string());
    // Cut by the proxy's stop: no peer's failure.
    if conn.cut() {
        f = Failure::cut(b.name(), Phase::Relay);
    }
    pool.balancer.record_failure(&b, &f);
    // A relay's only time limit is idle_ms: say so.
    let why =
        if matches!(f.cause, Cause::Timeout) { "idle timeout".to_string() } else { f.cause.to_string() };
    let how = match f.party {
        Party::Client => format!("ended by client error ({why})"),
        Party::Backend => format!("ended by backend error ({why})"),
        Party::Local => why,
    };
    // A client that resets, leaves or idles out is its own affair: info, as nginx logs a
    // client's "Connection reset by peer" or time-out; a backend's error stays a warning.
    let level = if f.party == Party::Client { log::Level::Info } else { log::Level::Warn };
    log::log!(
        level,
        "conn {} {how}: {} -> {} {} bytes up, {} bytes down, {ms} ms",
        conn.id,
        conn.peer,
        b.name(),
        outcome.up,
        outcome.down
    );
    // The main log has the warning; a standard wording, or a file of its own, gets the line too.
    if access::adds_to_main_log() {
        entry.note = &how;
        entry.status = match f.party {
            Party::Client => 499,
            Party::Local => 503,
            Party::Backend => 502,
        };
        access::write(&entry, main);
    }
}
