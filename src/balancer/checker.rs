//! The health checker: a background thread that checks every backend each `interval`, in
//! parallel, feeds the results to each backend's [`crate::backend::health::Health`], and logs the
//! transitions. It waits on its stop channel between rounds, so shutdown is immediate. A
//! backend marked `tls` is checked over TLS (verified as traffic to it is).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use crate::backend::health::Transition;
use crate::backend::{AdminState, Backend};
use crate::balancer::Balancer;
use crate::config::{HealthSettings, Mode, ProxyVersion};
use crate::h1::{head, HeadError, Wire};
use crate::logging::{held_back, RateLimit};
use crate::net::proxy_protocol;
use crate::net::{describe, is_local_resource};
use crate::tls::stream::Stream;
use crate::tls::Backends;
use rustls::ClientConfig;

/// Why a check could not even start: the proxy's own shortage (no descriptor, no local port,
/// no memory), which says nothing about the backend.
pub struct Skipped(pub String);

/// Checks one backend once, within `timeout_ms` in all (HAProxy's `timeout check`: a backend
/// that drips its answer fails, and cannot hold up the next round's checks of the others);
/// `tls` (client configuration, server name) for a `tls` backend.
/// `Err(Skipped)` when this host could not open the connection (as a proxied connect failing
/// so never counts against a backend, neither does such a check).
/// With `proxy` (the backend's `send_proxy=`), a check that speaks starts with a PROXY header
/// saying it is the proxy's own connection (v1 UNKNOWN, v2 LOCAL), as HAProxy's
/// `check-send-proxy`, since such a backend refuses a connection without one.
pub fn check(
    addr: SocketAddr,
    host: &str,
    s: &HealthSettings,
    tls: Option<(Arc<ClientConfig>, String)>,
    proxy: Option<ProxyVersion>,
    overdue: &Overdue,
) -> Result<Result<(), String>, Skipped> {
    let until = Instant::now() + s.timeout;
    let stream = match TcpStream::connect_timeout(&addr, s.timeout) {
        Ok(stream) => stream,
        Err(e) if is_local_resource(&e) => return Err(Skipped(describe(&e))),
        Err(e) => return Ok(Err(describe(&e))),
    };
    // Watched while the check runs, and closed with it: a backend that waits for the peer's
    // FIN (gunicorn's sync worker does) is not held until the next round.
    let _watched = overdue.watch(until, &stream);
    // Past its deadline, whatever went wrong, it ran out of time (cut, or read to the end).
    Ok(probe(stream, host, s, tls, proxy, until).map_err(|why| {
        if Instant::now() >= until {
            "timed out".to_string()
        } else {
            why
        }
    }))
}

/// The sockets of a round's checks, each with its deadline, for the checker thread to shut
/// when a check outlives it: over TLS, rustls reads on until a record is whole, so no timeout
/// per read bounds a backend that drips its records.
#[derive(Default)]
pub struct Overdue {
    /// Each watched socket under its own number (a descriptor's could be reused by the next
    /// check once this one's was closed).
    open: Mutex<Vec<(u64, Instant, TcpStream)>>,
    next: AtomicU64,
}

impl Overdue {
    /// Watches a check's socket until the guard drops, when the check is over.
    fn watch(&self, until: Instant, stream: &TcpStream) -> Option<Watched<'_>> {
        let sock = stream.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().push((id, until, sock));
        Some(Watched { overdue: self, id })
    }

    /// Shuts the sockets whose checks are past their deadline.
    fn shut_due(&self, now: Instant) {
        self.open.lock().retain(|(_, until, sock)| {
            let due = *until <= now;
            if due {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            !due
        });
    }
}

/// A check's socket in [`Overdue`]; dropped, the socket leaves it and is closed.
struct Watched<'a> {
    overdue: &'a Overdue,
    id: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.overdue.open.lock().retain(|(id, _, _)| *id != self.id);
    }
}

/// Reads from a check's stream until its deadline, however the bytes trickle.
struct Until<'a> {
    stream: &'a Stream<TcpStream>,
    until: Instant,
}

impl Read for Until<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// The check over a connected `stream`.
fn probe(
    stream: TcpStream,
    host: &str,
    s: &HealthSettings,
    tls: Option<(Arc<ClientConfig>, String)>,
    proxy: Option<ProxyVersion>,
    until: Instant,
) -> Result<(), String> {
    let _ = stream.set_read_timeout(Some(s.timeout));
    let _ = stream.set_write_timeout(Some(s.timeout));
    if let Some(version) = proxy.filter(|_| s.mode == Mode::Http || tls.is_some()) {
        (&stream).write_all(&proxy_protocol::encode_local(version)).map_err(|e| describe(&e))?;
    }
    let stream = match tls {
        Some((config, name)) => crate::tls::stream::connect(stream, config, &name)?,
        None => Stream::Plain(stream),
    };
    if s.mode == Mode::Tcp {
        return Ok(());
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbproxy-health\r\nConnection: close\r\n\r\n",
        s.path
    );
    (&stream).write_all(request.as_bytes()).map_err(|e| describe(&e))?;
    let status = Wire::new(Until { stream: &stream, until })
        .read_head(16 * 1024, |buf| Ok(head::parse_response(buf, "GET")?.map(|(len, r)| (len, r.status))));
    match status {
        Ok(status) if (200..400).contains(&status) => Ok(()),
        Ok(status) => Err(format!("status {status}")),
        Err(HeadError::Closed) => Err("connection closed before a response".to_string()),
        Err(HeadError::Io(e)) => Err(describe(&e)),
        Err(HeadError::Invalid(why)) => Err(why),
    }
}

static SKIPPED: RateLimit = RateLimit::new();
/// Says a check is over when it drops, however it ended (a panic too).
struct Done(crossbeam_channel::Sender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// How often the checker looks for checks past their deadline while a round runs.
const OVERDUE_TICK: Duration = Duration::from_millis(25);
static NO_THREAD: RateLimit = RateLimit::new();

/// Starts the checker: every `interval` (plus up to 10% jitter) it checks every member of every
/// pool that `pools` gives (asked each round, so a reload's new pools are checked), in parallel,
/// each under its pool's settings, and logs transitions. Returns when `stop` yields or
/// disconnects.
pub fn spawn_checker(
    pools: impl Fn() -> Vec<Arc<Balancer>> + Send + 'static,
    stop: Receiver<()>,
    tls: Option<Arc<Backends>>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("health".into()).spawn(move || loop {
        let balancers = pools();
        let Some(first) = balancers.first() else { return };
        let interval = first.health_settings().interval;
        // Each enabled pool's settings and members, fixed for the round.
        let rounds: Vec<_> = balancers
            .iter()
            .map(|b| (b, b.health_settings(), b.members()))
            .filter(|(_, s, _)| s.enabled)
            .collect();
        let overdue = Overdue::default();
        let (done, finished) = crossbeam_channel::unbounded::<()>();
        thread::scope(|scope| {
            let mut running = 0usize;
            for (balancer, s, members) in &rounds {
                // A backend in maintenance is not checked: its state is the operator's.
                for b in members.iter().filter(|b| b.admin_state() != AdminState::Maint) {
                    let member_tls = || tls.as_ref().and_then(|t| t.get(b.spec()));
                    let (own, its_tls) = (thread::Builder::new().stack_size(64 * 1024), member_tls());
                    let (overdue, done) = (&overdue, Done(done.clone()));
                    let spawned = own.spawn_scoped(scope, move || {
                        let _done = done;
                        check_member(balancer, b, s, its_tls, overdue);
                    });
                    // Its `Done` drops once, spawned or not.
                    running += 1;
                    if let Err(e) = spawned {
                        // No thread for it (a reload grew the pools past the thread limit): it
                        // is checked here, after the others started, so it is still checked.
                        if let Some(n) = NO_THREAD.check() {
                            log::warn!(
                                "health check of {}: cannot start a thread: {e}; checking in turn{}",
                                b.name(),
                                held_back(n)
                            );
                        }
                        check_member(balancer, b, s, member_tls(), overdue);
                    }
                }
            }
            // Until every check is done: each past its deadline is cut.
            while running > 0 {
                match finished.recv_timeout(OVERDUE_TICK) {
                    Ok(()) => running -= 1,
                    Err(RecvTimeoutError::Timeout) => overdue.shut_due(Instant::now()),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        let jitter = Duration::from_millis(fastrand::u64(..=(interval.as_millis() as u64 / 10)));
        match stop.recv_timeout(interval + jitter) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    })
}

/// Checks `b` once and feeds the outcome to its health, logging a transition.
fn check_member(
    balancer: &Balancer,
    b: &Backend,
    s: &HealthSettings,
    tls: Option<(Arc<ClientConfig>, String)>,
    overdue: &Overdue,
) {
    let outcome = match check(b.addr(), &b.check_host(), s, tls, b.send_proxy(), overdue) {
        Ok(outcome) => outcome,
        Err(Skipped(why)) => {
            if let Some(n) = SKIPPED.check() {
                log::warn!(
                    "health check of {} skipped: {why} (this host's shortage, not the backend's){}",
                    b.name(),
                    held_back(n)
                );
            }
            return;
        }
    };
    if outcome.is_ok() {
        b.check_passed();
    }
    if let Some(t) = b.health().observe_check(outcome, s) {
        b.log_transition(&t);
        if matches!(t, Transition::Up(_)) {
            balancer.wake();
        }
    }
}
