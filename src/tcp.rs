//! TCP mode: each accepted connection is routed (by its TLS server name, when routes say so)
//! and balanced once, connected (with retries), relayed, and logged at its end with bytes each
//! way and duration. A relay that goes quiet waits in the
//! parker, both sockets watched, and a worker resumes it when either side speaks.

use std::fmt;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::balancer::{source_key, Pick};
use crate::conn::accept;
use crate::conn::Conn;
use crate::conn::Quiet;
use crate::context::Context;
use crate::error::{Cause, Failure, Party, Phase, Unavailable};
use crate::logging::access;
use crate::logging::line::Entry;
use crate::logging::{held_back, RateLimit};
use crate::park::PARK_AFTER;
use crate::relay::{self, Buffers, End, Progress, RelayOutcome, Relayed};
use crate::route::sni::{self, Hello};
use crate::route::{Pool, Router};
use crate::upstream::{self, tries, Limits};

struct Label<'a>(&'a Conn);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} from {}", self.0.id, self.0.peer)
    }
}

static UNAVAILABLE: RateLimit = RateLimit::new();
static NOT_CONNECTED: RateLimit = RateLimit::new();

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

/// A relay under way: the backend socket, its slot, both TLS states and how far it got.
struct Relaying {
    pool: Arc<Pool>,
    /// The SNI route that chose the pool, for the access line (empty: none).
    route: String,
    backend: TcpStream,
    pick: Pick,
    /// The ClientHello read to route by SNI, sent to the backend first.
    early: Vec<u8>,
    client_tls: Option<rustls::Connection>,
    backend_tls: Option<rustls::Connection>,
    progress: Progress,
    /// How long finding and connecting a backend took (the access line's).
    connect: Duration,
}

/// Serves one client connection in the calling worker, relaying both directions (see
/// [`relay`]) with `bufs`, until it ends or goes quiet: then it waits in the parker, and a
/// worker resumes it when either side speaks. Never panics on network errors; every outcome is
/// logged.
pub fn serve(mut conn: Conn, ctx: &Context, bufs: &mut Buffers) {
    let mut r = match resumed(&mut conn) {
        Some(r) => r,
        None => {
            // A new connection: [limits] first, before the handshake and any backend.
            if conn.admitted.is_none() {
                match ctx.policy.admit(conn.peer.ip(), true) {
                    Ok(slot) => conn.admitted = Some(slot),
                    Err(why) => {
                        ctx.refused(Label(&conn), conn.peer.ip(), why);
                        // As in http mode, and as nginx's stream module logs its `deny`.
                        return closed_unserved(&conn, "", why.status(), why.text(), 0);
                    }
                }
            }
            match open(&conn, ctx) {
                Some(r) => r,
                None => return,
            }
        }
    };
    let idle = ctx.config.timeouts.idle;
    // Parking is refused once the proxy stops: the relay then goes on here until it ends.
    let mut park = ctx.parker.as_ref();
    loop {
        let b = r.pick.guard.backend().clone();
        let attached = conn.attach(&r.backend, b.id());
        let step = {
            let client = End { sock: &conn.stream, tls: r.client_tls.as_mut(), early: &r.early };
            let backend = End { sock: &r.backend, tls: r.backend_tls.as_mut(), early: &[] };
            let tally = |up, down| b.record_bytes(up, down);
            relay::resume(client, backend, idle, bufs, r.progress, park.map(|_| PARK_AFTER), &tally)
        };
        drop(attached);
        let p = match step {
            Relayed::Ended(outcome) => return finish(&conn, r, outcome),
            Relayed::Quiet(p) => p,
        };
        let Some(parker) = park else { return };
        conn.tls_session = r.client_tls.take().map(|c| Box::new(Mutex::new(c)));
        let held = Held {
            pool: r.pool,
            route: r.route,
            pick: r.pick,
            backend_tls: r.backend_tls,
            progress: p,
            connect: r.connect,
        };
        conn.go_quiet(Quiet::after(&p, idle, r.backend, b.id(), Box::new(held)));
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

/// A new connection: the TLS handshake, then a backend (with retries). `None` when it ended
/// there (logged).
fn open(conn: &Conn, ctx: &Context) -> Option<Relaying> {
    // The handshake comes first, within header_ms: a client that cannot finish it never
    // takes a backend slot.
    let client = accept::open(conn, ctx.tls.as_deref(), ctx.config.timeouts.header, &ctx.counters)?;
    let label = Label(conn);
    let (pool, early, route) = choose_pool(conn, &client, &ctx.router, ctx.config.timeouts.header)?;
    let limits = Limits { connect: ctx.config.timeouts.connect, queue: ctx.config.timeouts.queue };
    let key = Some(source_key(conn.peer.ip()));
    let tls = ctx.backend_tls.as_deref();
    let who = tries::Client { label: &label, conn, key, sticky: None };
    let connecting = Instant::now();
    let (backend, pick) = match upstream::connect(&pool.balancer, who, limits, tls) {
        Ok(found) => found,
        Err(f) if f.phase == Phase::Pick => {
            if let Some(n) = UNAVAILABLE.check() {
                log::warn!("{label}: {f}; closing the client{}", held_back(n));
            }
            // The backends tried, each connect failed: as many attempts.
            let tried = match f.cause {
                Cause::Unavailable(Unavailable::NoneUp { tried }) => tried as u32,
                _ => 0,
            };
            closed_unserved(conn, &pool.name, 503, &f.to_string(), tried);
            return None;
        }
        Err(f) => {
            // Every backend failed, or this host is short (503): once a second at most, with
            // the count held back (a standard access log has every client's line).
            if let Some(n) = NOT_CONNECTED.check() {
                log::error!("{label}: {f}; closing the client{}", held_back(n));
            }
            let status = if f.party == Party::Local { 503 } else { 502 };
            closed_unserved(conn, &pool.name, status, &f.to_string(), 1);
            return None;
        }
    };
    let (_, client_tls) = client.into_parts();
    let (backend, backend_tls) = backend.into_parts();
    let connect = connecting.elapsed();
    pool.balancer.record_success(pick.guard.backend());
    Some(Relaying {
        pool,
        route,
        backend,
        pick,
        early,
        client_tls,
        backend_tls,
        progress: Progress::start(),
        connect,
    })
}

/// The access line of a connection closed unserved, as nginx's stream module logs them: no
/// backend could be had (503: none up, every connect failed, or this host short of a
/// descriptor), or `[limits]` refused it (403, 429); the main log has its own line already.
fn closed_unserved(conn: &Conn, pool: &str, status: u16, note: &str, attempts: u32) {
    if access::adds_to_main_log() {
        let entry = Entry {
            client: Some(conn.peer.ip()),
            protocol: "TCP",
            status,
            duration: conn.accepted.elapsed(),
            pool,
            note,
            attempts,
            ..Entry::default()
        };
        access::write(&entry, || format!("{}: {note}; closed ({status})", Label(conn)));
    }
}

/// Largest ClientHello read to route by SNI (a TLS record is at most 16 KiB and some change).
const MAX_HELLO: usize = 17 * 1024;

/// The pool for a new connection, the bytes read to choose it, and the route's name (if one did). With SNI routes, the server
/// name comes from the ClientHello: from the handshake when the listener terminates TLS, else
/// read (within `header_ms` of a worker taking the connection) and relayed to the backend untouched. `None` (logged):
/// closed, for no pool or no complete ClientHello.
fn choose_pool(
    conn: &Conn,
    client: &accept::ClientStream,
    router: &Router,
    header: Duration,
) -> Option<(Arc<Pool>, Vec<u8>, String)> {
    let mut table = router.table();
    let mut early = Vec::new();
    // Why the default pool, if it comes to that: the terminal says why, as for a route.
    let mut why = "no server name (SNI)";
    let name = match client {
        _ if !table.routes_sni() => None,
        crate::tls::stream::Stream::Tls(_, session) => match &*session.lock() {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => None,
        },
        crate::tls::stream::Stream::Plain(sock) => {
            // From now, not from accept: time queued for a worker is the proxy's, not the
            // client's (as for an http head), and a ClientHello already here is read whole.
            let hello = read_hello(sock, Instant::now(), header, &mut early);
            let _ = sock.set_read_timeout(None);
            // The table in force once the ClientHello is in (a reload may have come meanwhile).
            table = router.table();
            match hello {
                Ok(Hello::Name(name)) => Some(name),
                Ok(hello) => {
                    why = match hello {
                        Hello::NotTls if early.is_empty() => "nothing sent within header_ms",
                        Hello::NotTls if early.len() >= MAX_HELLO => "a ClientHello over 17 KiB",
                        Hello::NotTls => "not TLS (or a malformed ClientHello)",
                        _ => why,
                    };
                    None
                }
                Err(why) => {
                    log::warn!("{}: {why}; closing", Label(conn));
                    return None;
                }
            }
        }
    };
    match table.route_sni(name.as_deref()) {
        (Some(pool), route) => {
            match (route, &name) {
                (Some(r), _) => log::info!("{}: {}", Label(conn), r.label),
                (None, _) if !table.routes_sni() => {}
                (None, Some(n)) => log::info!("{}: SNI {n} matches no route: default pool", Label(conn)),
                (None, None) => log::info!("{}: {why}: default pool", Label(conn)),
            }
            Some((pool.clone(), early, route.map(|r| r.name.clone()).unwrap_or_default()))
        }
        (None, _) if !table.routes_sni() => {
            log::warn!("{}: no pool takes this connection ([backends] is empty); closing", Label(conn));
            None
        }
        (None, _) => {
            let sni = name.as_deref().unwrap_or("(none)");
            log::warn!("{}: no route for SNI {sni} and no default pool; closing", Label(conn));
            None
        }
    }
}

/// `header_ms` passed: a client that sent nothing may wait for the server to speak first (SMTP,
/// MySQL): not TLS, so the default pool, as HAProxy after `inspect-delay`; half a ClientHello
/// is refused.
fn silent(early: &[u8]) -> Result<Hello, String> {
    if early.is_empty() {
        Ok(Hello::NotTls)
    } else {
        Err("no complete TLS ClientHello within header_ms".to_string())
    }
}

/// Reads the start of the connection into `early` until it is a whole ClientHello (or clearly
/// not one), within `header` of `started`.
fn read_hello(
    sock: &TcpStream,
    started: Instant,
    header: Duration,
    early: &mut Vec<u8>,
) -> Result<Hello, String> {
    let deadline = (!header.is_zero()).then(|| started + header);
    let mut buf = [0u8; 4096];
    loop {
        match sni::server_name(early) {
            Hello::Incomplete if early.len() < MAX_HELLO => {}
            Hello::Incomplete => return Ok(Hello::NotTls),
            hello => return Ok(hello),
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return silent(early);
        }
        let _ = sock.set_read_timeout(left);
        // A wait on the client: if it lasts while connections queue, a reserve worker takes
        // this one's place, as for an http head.
        match crate::threads::gate::waiting(|| (&*sock).read(&mut buf)) {
            Ok(0) => return Err("closed by the client before its ClientHello was complete".to_string()),
            Ok(n) => early.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return silent(early)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the ClientHello: {e}")),
        }
    }
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
    log::warn!(
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
