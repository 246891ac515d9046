//! The proxy process: listener, acceptor thread ([`acceptor`]), worker pools, signals
//! ([`signals`]), reload and DNS ([`discovery`]), handing the listeners to a new process
//! ([`takeover`]), and graceful shutdown.
//!
//! ```text
//! acceptor --(bounded channel: `queue`)--> workers (fixed pool) --balancer--> backends
//! ```
//!
//! A worker owns its connection to the end: in TCP mode it relays both directions itself,
//! blocked in `poll(2)` on the two sockets (see [`crate::relay`]), so a connection costs one
//! thread. Every worker thread is started before the acceptor accepts anything; if the system
//! cannot start them all (thread or memory map limits), `run` fails with [`Error::Resource`].
//! When every worker is busy, accepted connections wait in the channel; when the channel is
//! full the acceptor blocks, so the kernel's listen backlog holds the rest (backpressure,
//! nothing dropped). Shutdown stops accepting at once, lets in-flight connections finish until
//! `drain_timeout_ms`, then closes what remains; a second Ctrl-C (or SIGTERM) closes them at
//! once.

pub mod acceptor;
pub mod discovery;
pub mod signals;
pub mod takeover;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use self::discovery::Discovery;
use self::signals::Signals;
use self::takeover::Handoff;
use crate::admin;
use crate::backend::{self, summary_line};
use crate::balancer::checker;
use crate::balancer::Balancer;
use crate::config::{Config, ConfigError, Mode};
use crate::conn::{Conn, Greeting, Registry};
use crate::error::Error;
use crate::http::context::HttpContext;
use crate::http::proxy as http_proxy;
use crate::net::{bind, bind_with};
use crate::park::Parker;
use crate::stats::ProxyCounters;
use crate::tcp::{self, TcpContext};
use crate::threads::pool::WorkerPool;
use crate::tls::{Backends, Listener};

/// At shutdown, keep-alive clients idle this long are closed at once (see
/// [`Registry::close_idle`]); an HTTP worker closes its own once it has idled this long.
const IDLE_CLOSE_AFTER: Duration = crate::threads::stack::TRIM_AFTER;

/// What the proxy did, reported at exit.
#[derive(Debug)]
pub struct Summary {
    /// Connections accepted.
    pub connections: u64,
    /// Connections still open at the drain deadline and closed by force.
    pub forced: usize,
    /// One line per backend (see [`backend::summary_line`]).
    pub backends: Vec<String>,
}

/// Re-reads the configuration for a reload (file and the same command-line flags).
pub type Loader = Box<dyn Fn() -> Result<Config, Vec<ConfigError>> + Send>;

/// A bound proxy, ready to run.
pub struct Server {
    config: Config,
    /// The listener's TLS material when `[tls]` has cert and key.
    tls: Option<Arc<Listener>>,
    /// TLS to backends marked `tls`.
    backend_tls: Option<Arc<Backends>>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    local_addr: SocketAddr,
    /// When taking over from a running proxy: the line to tell it this one accepts.
    handoff: Option<Handoff>,
}

impl Server {
    /// Binds the configured addresses (proxy and admin). Nothing else starts until [`Server::run`].
    pub fn bind(config: Config) -> Result<Server, Error> {
        let addr = config.listen;
        let listener =
            bind_with(addr, config.scale.reuse_port).map_err(|source| Error::Listen { addr, source })?;
        let admin = match config.admin {
            Some(addr) => Some(bind(addr).map_err(|source| Error::Listen { addr, source })?),
            None => None,
        };
        Server::with(config, listener, admin, None)
    }

    /// Takes the listening sockets of the proxy running with `control_socket = path` (the
    /// `listen` and admin addresses of `config` are theirs, whatever the file says). The old
    /// process stops accepting once [`Server::run`] has started accepting here.
    pub fn take_over(config: Config, path: &std::path::Path) -> Result<Server, Error> {
        let addr = config.listen;
        let handoff = takeover::receive(path).map_err(|source| Error::Listen { addr, source })?;
        let mut received = handoff.listeners.iter().map(|l| l.try_clone());
        let listener = match received.next() {
            Some(l) => l.map_err(|source| Error::Listen { addr, source })?,
            None => {
                return Err(Error::Listen { addr, source: std::io::Error::other("no listener received") })
            }
        };
        let admin = match (received.next(), config.admin) {
            (Some(l), Some(_)) => Some(l.map_err(Error::Resource)?),
            (None, Some(addr)) => Some(bind(addr).map_err(|source| Error::Listen { addr, source })?),
            (_, None) => None,
        };
        Server::with(config, listener, admin, Some(handoff))
    }

    fn with(
        config: Config,
        listener: TcpListener,
        admin: Option<TcpListener>,
        handoff: Option<Handoff>,
    ) -> Result<Server, Error> {
        let tls = Listener::load(&config.tls, &config.file, config.mode == Mode::Http)
            .map_err(Error::Config)?
            .map(Arc::new);
        let backend_tls = Some(Arc::new(Backends::load(&config).map_err(Error::Config)?));
        let addr = config.listen;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        Ok(Server { config, tls, backend_tls, listener, admin, local_addr, handoff })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `signals.stop` yields (or disconnects), reloading on `signals.reload` with
    /// `loader`; then drains and returns the summary.
    pub fn run(self, signals: Signals, loader: Loader) -> Result<Summary, Error> {
        let Server { config, tls, backend_tls, listener, admin, local_addr, handoff } = self;
        let balancer = Arc::new(Balancer::new(
            backend::build(&config.backends),
            config.algorithm,
            config.health.clone(),
        ));
        let counters = Arc::new(ProxyCounters::default());
        let registry = Registry::new();
        let stopping = Arc::new(AtomicBool::new(false));
        // Background threads (health, resolver, stats, drain timers) stop when this drops.
        let (background_tx, background_rx) = crossbeam_channel::bounded::<()>(0);
        // Idle keep-alive connections, unfinished heads and quiet relays wait in the parker,
        // not in a worker.
        let parker = Parker::new(config.timeouts.idle).map_err(Error::Resource)?;
        parker.count_into(counters.clone());
        let parker = Some(parker);
        let workers = match config.mode {
            Mode::Tcp => {
                let ctx = TcpContext {
                    config: config.clone(),
                    balancer: balancer.clone(),
                    tls: tls.clone(),
                    backend_tls: backend_tls.clone(),
                    counters: counters.clone(),
                    parker: parker.clone(),
                };
                start_workers(&config, ctx, parker.clone(), tcp::serve)
            }
            Mode::Http => {
                let ctx = HttpContext {
                    config: config.clone(),
                    balancer: balancer.clone(),
                    counters: counters.clone(),
                    stopping: stopping.clone(),
                    tls: tls.clone(),
                    backend_tls: backend_tls.clone(),
                    parker: parker.clone(),
                };
                start_workers(&config, ctx, parker.clone(), http_proxy::serve)
            }
        }
        .map_err(|e| {
            let hint = "lower [proxy] workers or raise the thread limits (ulimit -u, vm.max_map_count)";
            Error::Resource(std::io::Error::new(e.kind(), format!("{e}; {hint}")))
        })?;
        let job_tx = workers.sender();
        let (queue, gauges, parked) = (workers.receiver(), workers.gauges(), parker.clone());
        let _ = counters.live.set(crate::stats::LiveGauges(Box::new(move || crate::stats::Live {
            waiting_for_worker: queue.len(),
            parked: parked.as_ref().map_or(0, |p| p.len()),
            workers: gauges.size(),
            workers_busy: gauges.busy(),
            worker_threads: gauges.running(),
            worker_panics: gauges.panics(),
        })));
        let parker_thread = match &parker {
            Some(p) => Some(p.spawn(workers.sender(), workers.receiver()).map_err(Error::Resource)?),
            None => None,
        };
        // Every worker runs: now say so. What matters first, so `listening on` is the first line
        // a newcomer sees; the full effective configuration only at debug level and in `--check`.
        for line in crate::config::show::startup_lines(&config, local_addr) {
            log::info!("{line}");
        }
        for line in config.to_string().lines() {
            log::debug!("config: {line}");
        }

        checker::spawn_checker(balancer.clone(), background_rx.clone(), backend_tls.clone())
            .map_err(Error::Resource)?;
        let discovery = Arc::new(Discovery::new(
            config.clone(),
            balancer.clone(),
            registry.clone(),
            background_rx.clone(),
        ));
        discovery.spawn_resolver().map_err(Error::Resource)?;
        if let Some(every) = config.stats_interval {
            spawn_stats_logger(balancer.clone(), every, background_rx.clone()).map_err(Error::Resource)?;
        }
        let admin = match admin {
            Some(l) => {
                let addr = l.local_addr().map_err(Error::Resource)?;
                log::info!("admin listening on {addr} (dashboard at /, /events, /stats, /metrics, /health, POST /backends/NAME/ACTION)");
                let l = Arc::new(l);
                let served = crate::admin::Admin {
                    balancer: balancer.clone(),
                    counters: counters.clone(),
                    token: config.admin_token.clone(),
                };
                admin::spawn(l.clone(), served, stopping.clone()).map_err(Error::Resource)?;
                Some(l)
            }
            None => None,
        };

        let (halt_tx, halt_rx) = crossbeam_channel::bounded::<()>(0);
        let (wake_rx, wake_tx) = rustix::pipe::pipe().map_err(|e| Error::Resource(e.into()))?;
        listener.set_nonblocking(true).map_err(Error::Resource)?;
        let listener = Arc::new(listener);
        let acceptor = {
            let acceptor = crate::server::acceptor::Acceptor {
                listener: listener.clone(),
                wake: wake_rx,
                jobs: job_tx,
                halt: halt_rx,
                stopping: stopping.clone(),
                registry: registry.clone(),
                counters: counters.clone(),
                workers: config.workers,
            };
            thread::Builder::new()
                .name("acceptor".into())
                .spawn(move || acceptor.run())
                .map_err(Error::Resource)?
        };
        if let Some(handoff) = handoff {
            // Our acceptor runs: the old process may stop accepting now.
            match handoff.confirm() {
                Ok(()) => log::info!("takeover: accepting; the old process drains and exits"),
                Err(e) => log::warn!("takeover: telling the old process we accept: {e}"),
            }
        }
        let (taken_tx, taken_rx) = crossbeam_channel::bounded::<()>(1);
        if let Some(path) = &config.scale.control_socket {
            let shared = std::iter::once(listener.clone()).chain(admin.clone()).collect();
            if let Err(e) = takeover::serve(path.clone(), shared, taken_tx, stopping.clone()) {
                log::error!("{e}; upgrades in place (--takeover) are off");
            }
        }
        let mut taken_over = false;

        let why = loop {
            select! {
                recv(signals.stop) -> why => break why.unwrap_or("shutdown"),
                recv(taken_rx) -> r => if r.is_ok() {
                    taken_over = true;
                    break "takeover";
                },
                recv(signals.reload) -> r => match r {
                    Ok(()) => {
                        log::info!("SIGHUP: reloading {}", config.file);
                        let reloaded = loader();
                        if let Ok(new) = &reloaded {
                            reload_tls(tls.as_deref(), backend_tls.as_deref(), new);
                        }
                        discovery.reload(reloaded);
                    }
                    Err(_) => break "shutdown",
                },
                default(Duration::from_secs(1)) => crate::threads::stack::trim_heap_if_wanted(),
            }
        };
        // Stop accepting at once: the closed wake pipe ends the acceptor's poll. Unless another
        // process took the listening sockets over, they are shut down too, so new connects are
        // refused rather than left in a backlog nobody serves. After a takeover they are the
        // new process's too: shutting them down would break it, and connections that keep
        // arriving go to it.
        stopping.store(true, Ordering::SeqCst);
        drop(halt_tx);
        drop(wake_tx);
        if !taken_over {
            let _ = socket2::SockRef::from(&*listener).shutdown(std::net::Shutdown::Both);
            if let Some(l) = &admin {
                let _ = socket2::SockRef::from(&**l).shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = acceptor.join();
        drop(listener);
        // Parked idle keep-alive connections close now, as nginx and HAProxy close idle
        // keep-alive connections at a graceful stop; quiet relays drain with the rest.
        if let Some(running) = &parker_thread {
            running.stop_parking();
        }
        // Keep-alive clients idle a while are closed; busy ones are not cut between two requests
        // (the next could be on its way) but get their next response with `Connection: close`.
        let idle_closed = registry.close_idle(IDLE_CLOSE_AFTER);
        let in_flight = registry.len().saturating_sub(idle_closed);
        let again = if taken_over { "" } else { " (Ctrl-C again to cut it short)" };
        log::warn!(
            "{why}: stopped accepting; draining {in_flight} connection(s) for up to {} ms{again}",
            config.drain_timeout.as_millis()
        );
        let forced = drain(&registry, &signals.stop, Instant::now() + config.drain_timeout);
        drop(parker_thread);
        drop(background_tx);
        workers.join();

        let members = balancer.members();
        let summary = Summary {
            connections: counters.accepted.load(Ordering::Relaxed),
            forced,
            backends: members.iter().map(|b| summary_line(b)).collect(),
        };
        log::info!("served {} connection(s) ({} cut before they finished)", summary.connections, forced);
        for line in &summary.backends {
            log::info!("backend {line}");
        }
        Ok(summary)
    }
}

/// Swaps in the certificates `new` names; a broken one is refused and the running ones stay.
fn reload_tls(tls: Option<&Listener>, backends: Option<&Backends>, new: &Config) {
    if let Some(b) = backends {
        if let Err(errors) = b.reload(new) {
            for e in &errors {
                log::error!("SIGHUP: {e}");
            }
            log::error!("SIGHUP: backend TLS settings not reloaded; keeping the running ones");
        }
    }
    let Some(tls) = tls else { return };
    match tls.reload(&new.tls, &new.file) {
        Ok(()) => log::info!("SIGHUP: TLS certificates reloaded; new connections get them"),
        Err(errors) => {
            for e in &errors {
                log::error!("SIGHUP: {e}");
            }
            log::error!("SIGHUP: TLS certificates not reloaded; keeping the running ones");
        }
    }
}

/// Waits for the in-flight connections to finish until `deadline`, then closes what remains.
/// A second stop signal (Ctrl-C twice, as most servers and CLIs take it) closes them at once.
/// Returns how many were cut.
fn drain(registry: &Registry, stop: &Receiver<&'static str>, deadline: Instant) -> usize {
    // Short slices so a second Ctrl-C is seen within a blink; bounded by the deadline.
    const SLICE: Duration = Duration::from_millis(50);
    let forced = loop {
        if registry.wait_empty((Instant::now() + SLICE).min(deadline)) {
            return 0;
        }
        if let Ok(again) = stop.try_recv() {
            let forced = registry.close_all();
            log::warn!("{again} again: stopping now; cut {forced} connection(s)");
            break forced;
        }
        if Instant::now() >= deadline {
            let forced = registry.close_all();
            log::warn!("drain timeout: closed {forced} remaining connection(s)");
            break forced;
        }
    };
    registry.wait_empty(Instant::now() + Duration::from_secs(5));
    forced
}

/// Starts the worker pool of either mode: each worker notes a long wait for a worker, reads a
/// PROXY header when one is expected, then serves the connection with `serve`.
fn start_workers<C, S>(
    config: &Config,
    ctx: C,
    parker: Option<Arc<Parker>>,
    serve: fn(Conn, &C, &mut S),
) -> std::io::Result<WorkerPool<Conn>>
where
    C: Send + Sync + 'static,
    S: Default + 'static,
{
    let ctx = Arc::new(ctx);
    let config = Arc::new(config.clone());
    WorkerPool::start("worker", config.workers, config.queue, move |mut conn: Conn, scratch: &mut S| {
        // A connection back from the parker was greeted (and its PROXY header read) before.
        if conn.was_parked() {
            return serve(conn, &ctx, scratch);
        }
        if conn.greeting.is_none() {
            note_wait(&conn, config.workers);
        }
        match conn.greet(&config) {
            Greeting::Ready => serve(conn, &ctx, scratch),
            // The rest of the header waits in the parker, until header_ms from accept.
            Greeting::Waiting => {
                if let Some(parker) = &parker {
                    let limit = config.timeouts.header;
                    let deadline = (!limit.is_zero()).then(|| conn.accepted + limit);
                    parker.park_head(conn, deadline);
                }
            }
            Greeting::Refused => {}
        }
    })
}

static SLOW_PICKUP: crate::logging::RateLimit = crate::logging::RateLimit::new();

/// Says so when a connection waited long for a free worker: every worker was busy (in TCP mode
/// each connection holds one; in HTTP mode each request in progress, or a client idle less than
/// `PARK_AFTER`), so `workers` is too small for the load.
fn note_wait(conn: &Conn, workers: usize) {
    let waited = conn.accepted.elapsed();
    if waited >= Duration::from_secs(1) {
        if let Some(n) = SLOW_PICKUP.check() {
            log::warn!(
                "conn {} waited {} ms for a free worker (all {workers} busy; raise [proxy] workers){}",
                conn.id,
                waited.as_millis(),
                crate::logging::held_back(n)
            );
        }
    }
}

/// Logs a one-line summary per backend every `every`.
fn spawn_stats_logger(balancer: Arc<Balancer>, every: Duration, stop: Receiver<()>) -> std::io::Result<()> {
    thread::Builder::new().name("stats".into()).spawn(move || {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
            for b in balancer.members().iter() {
                log::info!("stats: {}", summary_line(b));
            }
        }
    })?;
    Ok(())
}
