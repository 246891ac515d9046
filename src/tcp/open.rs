//! A new tcp-mode connection, up to its relay: `[limits]`, the TLS handshake, the ClientHello
//! that SNI routes read, each waiting in the parker while the client is slow; then a pool and
//! a backend (with retries). Connections closed unserved are logged here.

use std::fmt;
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::balancer::{source_key, Pick};
use crate::conn::accept::{self, first_byte, Opened};
use crate::conn::{Conn, PartialHead};
use crate::context::Context;
use crate::error::{Cause, Party, Phase, Unavailable};
use crate::logging::access;
use crate::logging::line::Entry;
use crate::logging::{held_back, RateLimit};
use crate::net::{is_timeout, LINGER_SHORT};
use crate::park::{close_lingering, Parker};
use crate::relay::Progress;
use crate::route::sni::{self, Hello};
use crate::route::{Pool, Table};
use crate::tls::stream::Pending;
use crate::upstream::{self, tries, Limits};

struct Label<'a>(&'a Conn);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} from {}", self.0.id, self.0.peer)
    }
}

static UNAVAILABLE: RateLimit = RateLimit::new();
static NOT_CONNECTED: RateLimit = RateLimit::new();
/// Connections no pool takes: each client's, the one cause the operator's.
static NO_POOL: RateLimit = RateLimit::new();

/// A relay under way: the backend socket, its slot, both TLS states and how far it got.
pub(super) struct Relaying {
    pub pool: Arc<Pool>,
    /// The SNI route that chose the pool, for the access line (empty: none).
    pub route: String,
    pub backend: TcpStream,
    pub pick: Pick,
    /// The ClientHello read to route by SNI, sent to the backend first.
    pub early: Vec<u8>,
    pub client_tls: Option<rustls::Connection>,
    pub backend_tls: Option<rustls::Connection>,
    pub progress: Progress,
    /// How long finding and connecting a backend took (the access line's).
    pub connect: Duration,
}

/// Opens a new connection, or goes on opening one back from the parker. Whenever the client
/// owes more of its handshake or ClientHello and nothing more has come, the connection waits
/// in the parker, holding no worker, and a worker takes it again here when more arrives (or,
/// for a ClientHello, at `header_ms`). `header_ms` runs from when a worker first took it (time
/// queued for a worker is the proxy's, as for an http head); parking does not restart it.
/// `None`: closed (logged), or parked.
pub(super) fn open(mut conn: Conn, ctx: &Context) -> Option<(Conn, Relaying)> {
    // [limits] first, before the handshake and any backend; once, not again after a park.
    if conn.admitted.is_none() {
        match ctx.policy.admit(conn.peer.ip(), true) {
            Ok(slot) => conn.admitted = Some(slot),
            Err(why) => {
                ctx.refused(Label(&conn), conn.peer.ip(), why);
                // As in http mode, and as nginx's stream module logs its `deny`.
                closed_unserved(&conn, "", why.status(), why.text(), 0);
                return None;
            }
        }
    }
    let partial = conn.head.take();
    let fresh = partial.is_none();
    let started = partial.as_ref().map_or_else(Instant::now, |h| h.started);
    let header = ctx.config.timeouts.header;
    let deadline = (!header.is_zero()).then(|| started + header);
    let stopping = ctx.stopping.load(Ordering::SeqCst);
    if ctx.tls.is_some() && conn.tls_session.is_none() {
        conn = handshake(conn, ctx, stopping, started, deadline)?;
    }
    let mut table = ctx.router.table();
    let mut early = Vec::new();
    // Why the default pool, if it comes to that: the terminal says why, as for a route.
    let mut why = "no server name (SNI)";
    // A ClientHello begun before a park is read to its end even if a reload has since removed
    // every SNI route: its first bytes are read already, and go to the backend first.
    let begun = partial.filter(|p| p.hello).map(|p| p.bytes);
    let name = match &conn.tls_session {
        _ if !table.routes_sni() && begun.is_none() => None,
        Some(session) => match &*session.lock() {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => None,
        },
        None => {
            // At a stop too: the parker keeps a ClientHello under way through the drain.
            let parker = ctx.parker.as_deref();
            let hello;
            let begun = begun.unwrap_or_default();
            (conn, hello, early) = client_hello(conn, parker, fresh, (started, deadline), begun)?;
            // The table in force once the ClientHello is in (a reload may have come meanwhile).
            table = ctx.router.table();
            match hello {
                Hello::Name(name) => Some(name),
                Hello::NotTls if early.is_empty() => {
                    why = "nothing sent within header_ms";
                    None
                }
                Hello::NotTls if early.len() >= MAX_HELLO => {
                    why = "a ClientHello over 17 KiB";
                    None
                }
                Hello::NotTls => {
                    why = "not TLS (or a malformed ClientHello)";
                    None
                }
                // Shut mid-ClientHello: as HAProxy ends its inspection at the client's shutdown,
                // what came goes to the default pool, and the relay passes the half-close on.
                Hello::Incomplete => {
                    why = "closed its side before a whole ClientHello";
                    None
                }
                _ => None,
            }
        }
    };
    let (pool, route) = choose_pool(&conn, &table, name, why)?;
    let relaying = connect(&mut conn, ctx, pool, route, early)?;
    Some((conn, relaying))
}

/// The TLS handshake, its state waiting in the parker with the connection whenever the client
/// owes its next flight (each read waiting [`accept::flight_wait`] first, as in http mode);
/// without a parker it runs here, within `header_ms`. `None`: failed, refused or answered
/// (logged and counted), or parked.
fn handshake(
    mut conn: Conn,
    ctx: &Context,
    stopping: bool,
    started: Instant,
    deadline: Option<Instant>,
) -> Option<Conn> {
    let listener = ctx.tls.as_deref()?;
    let Some(parker) = ctx.parker.as_deref() else {
        let header = ctx.config.timeouts.header;
        let (_, session) = accept::open(&conn, Some(listener), header, &ctx.counters)?.into_parts();
        conn.tls_session = session.map(|c| Box::new(Mutex::new(c)));
        return Some(conn);
    };
    let state = conn.handshake.take().unwrap_or(Pending::Fresh);
    let first = accept::flight_wait(stopping, parker.pressed());
    match accept::resume(&conn, listener, state, deadline, first, &ctx.counters) {
        Opened::Ready(stream) => {
            let (_, session) = stream.into_parts();
            conn.tls_session = session.map(|c| Box::new(Mutex::new(c)));
            Some(conn)
        }
        Opened::Waiting(state) => {
            parker.park_handshake(conn, state, started, deadline);
            None
        }
        // Plain HTTP on the TLS port, answered: the client's rest is drained, in the parker.
        Opened::Answered => {
            close_lingering(conn, Some(parker), LINGER_SHORT);
            None
        }
        Opened::Closed => None,
    }
}

/// Largest ClientHello read to route by SNI (a TLS record is at most 16 KiB and some change).
const MAX_HELLO: usize = 17 * 1024;

/// Reads the ClientHello that SNI routes need, after `early` (what came before a park); the
/// bytes are relayed to the backend untouched. With a parker, reads take what has arrived (a
/// new connection's reads may wait [`first_byte`] in all) and the connection waits in the
/// parker for the rest (`None`); without one (or once a stop's drain is over), they wait here,
/// within the deadline.
/// `None` too when it is closed (logged).
fn client_hello(
    mut conn: Conn,
    parker: Option<&Parker>,
    fresh: bool,
    (started, deadline): (Instant, Option<Instant>),
    mut early: Vec<u8>,
) -> Option<(Conn, Hello, Vec<u8>)> {
    let mut reading = match parker {
        Some(p) => Reading::Brief(fresh.then(|| Instant::now() + first_byte(p.pressed()))),
        None => Reading::Blocking,
    };
    loop {
        let read = read_hello(&conn.stream, deadline, reading, &mut early);
        let _ = conn.stream.set_read_timeout(None);
        match read {
            // Gone before a byte (a port probe, a load balancer's TCP check): closed quietly,
            // as a plain listener's client that never spoke is.
            Ok(Some(Hello::Incomplete)) if early.is_empty() => {
                log::debug!("{}: closed before sending anything", Label(&conn));
                return None;
            }
            Ok(Some(hello)) => return Some((conn, hello, early)),
            Ok(None) => {}
            Err(_) if conn.cut() => {
                log::info!("{}: cut at the drain deadline before its ClientHello was complete", Label(&conn));
                return None;
            }
            // A client that failed mid-ClientHello (a reset) or stalled past header_ms is its
            // own affair: info, as nginx logs a client's reset or time-out.
            Err(why) => {
                log::info!("{}: {why}; closing", Label(&conn));
                return None;
            }
        }
        // Only brief reads stop short, and only with a parker.
        let parker = parker?;
        conn.head = Some(PartialHead { started, bytes: early, hello: true });
        // Refused (the parker is done: the drain is over): the rest is waited for here.
        let mut back = parker.park_head(conn, deadline)?;
        early = back.head.take().map(|h| h.bytes).unwrap_or_default();
        conn = back;
        reading = Reading::Blocking;
    }
}

/// How [`read_hello`] reads.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// Each read waits, until the deadline.
    Blocking,
    /// Reads may wait until then (`None`: not at all): a new connection's first flight, its
    /// ClientHello, is on its way, maybe in more than one segment. After it none waits.
    Brief(Option<Instant>),
}

/// Reads the start of the connection into `early` until it is a whole ClientHello (or clearly
/// not one), or the deadline passes. `Ok(None)`: nothing more has come (a brief read);
/// [`Hello::Incomplete`]: the client shut its side before its ClientHello was whole (maybe
/// before sending anything).
fn read_hello(
    sock: &TcpStream,
    deadline: Option<Instant>,
    reading: Reading,
    early: &mut Vec<u8>,
) -> Result<Option<Hello>, String> {
    let mut buf = [0u8; 4096];
    loop {
        match sni::server_name(early) {
            Hello::Incomplete if early.len() < MAX_HELLO => {}
            Hello::Incomplete => return Ok(Some(Hello::NotTls)),
            hello => return Ok(Some(hello)),
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return silent(early).map(Some);
        }
        let read = match reading {
            // A wait on the client: if it lasts while connections queue, a reserve worker
            // takes this one's place, as for an http head.
            Reading::Blocking => {
                let _ = sock.set_read_timeout(left);
                crate::threads::gate::waiting(|| (&*sock).read(&mut buf))
            }
            Reading::Brief(Some(until)) if Instant::now() < until => {
                let brief = until.saturating_duration_since(Instant::now());
                let brief = left.map_or(brief, |l| l.min(brief));
                match crate::threads::gate::readable_within(sock, brief) {
                    Ok(true) => crate::net::recv(sock, &mut buf, false),
                    Ok(false) => Err(std::io::ErrorKind::WouldBlock.into()),
                    Err(e) => Err(e),
                }
            }
            Reading::Brief(_) => crate::net::recv(sock, &mut buf, false),
        };
        match read {
            // The client's side ended: what it sent goes to the default pool, then its FIN.
            Ok(0) => return Ok(Some(Hello::Incomplete)),
            Ok(n) => early.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) && matches!(reading, Reading::Brief(_)) => return Ok(None),
            Err(e) if is_timeout(&e) => return silent(early).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Reset before a byte (a port probe's or a load balancer's check): as a close.
            Err(_) if early.is_empty() => return Ok(Some(Hello::Incomplete)),
            Err(e) => {
                let how = crate::net::describe(&e);
                let why = format!(
                    "client connection failed ({how}) with its ClientHello unfinished ({} bytes)",
                    early.len()
                );
                return Err(why);
            }
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

/// The pool for the server name (`why`: why there is none, for the default pool's line), and
/// the route's name (if one chose it). `None` (logged): closed, for no pool.
fn choose_pool(conn: &Conn, table: &Table, name: Option<String>, why: &str) -> Option<(Arc<Pool>, String)> {
    match table.route_sni(name.as_deref()) {
        (Some(pool), route) => {
            match (route, &name) {
                (Some(r), _) => log::info!("{}: {}", Label(conn), r.label),
                (None, _) if !table.routes_sni() => {}
                (None, Some(n)) => log::info!("{}: SNI {n} matches no route: default pool", Label(conn)),
                (None, None) => log::info!("{}: {why}: default pool", Label(conn)),
            }
            Some((pool.clone(), route.map(|r| r.name.clone()).unwrap_or_default()))
        }
        (None, _) if !table.routes_sni() => {
            if let Some(n) = NO_POOL.check() {
                let label = Label(conn);
                log::warn!(
                    "{label}: no pool takes this connection ([backends] is empty); closing{}",
                    held_back(n)
                );
            }
            None
        }
        (None, _) => {
            if let Some(n) = NO_POOL.check() {
                let sni = name.as_deref().unwrap_or("(none)");
                log::warn!(
                    "{}: no route for SNI {sni} and no default pool; closing{}",
                    Label(conn),
                    held_back(n)
                );
            }
            None
        }
    }
}

/// A backend from `pool` (with retries), connected. `None` when none could be had (logged).
fn connect(
    conn: &mut Conn,
    ctx: &Context,
    pool: Arc<Pool>,
    route: String,
    early: Vec<u8>,
) -> Option<Relaying> {
    let label = Label(conn);
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
    let (backend, backend_tls) = backend.into_parts();
    let connect = connecting.elapsed();
    pool.balancer.record_success(pick.guard.backend());
    let client_tls = conn.tls_session.take().map(|c| Mutex::into_inner(*c));
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
