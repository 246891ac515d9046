//! Starting a proxy's threads, in the order [`super::Server::run`] needs them: the state every
//! thread shares, the worker pool of the mode (every thread up before anything is accepted),
//! the background threads (health checks, DNS, housekeeping: pool sweeps and stats lines) and
//! the admin listener.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::discovery::Discovery;
use crate::admin;
use crate::backend::summary_line;
use crate::balancer::checker;
use crate::config::{Config, Mode};
use crate::conn::greet::Greeting;
use crate::conn::policy::Policy;
use crate::conn::{Conn, Registry, SHUTDOWN_GRACE};
use crate::context::Context;
use crate::error::Error;
use crate::http::proxy as http_proxy;
use crate::park::Parker;
use crate::route::{Router, Table};
use crate::stats::{Live, LiveGauges, ProxyCounters};
use crate::tcp;
use crate::threads::gate::Sizing;
use crate::threads::pool::{Demand, WorkerPool};
use crate::tls::{Backends, Listener};

/// What every thread of a running proxy shares.
pub(super) struct Shared {
    /// The pools and routes in force.
    pub router: Arc<Router>,
    /// Per-client limits and access.
    pub policy: Arc<Policy>,
    pub counters: Arc<ProxyCounters>,
    pub registry: Arc<Registry>,
    /// Set at shutdown: workers finish the current request, then close.
    pub stopping: Arc<AtomicBool>,
    /// Idle keep-alive connections, unfinished heads and quiet relays wait here, not in a worker.
    pub parker: Option<Arc<Parker>>,
    /// The listener's TLS material when `[tls]` has cert and key.
    pub tls: Option<Arc<Listener>>,
    /// TLS to backends marked `tls`.
    pub backend_tls: Option<Arc<Backends>>,
}

impl Shared {
    pub fn new(
        config: &Config,
        tls: Option<Arc<Listener>>,
        backend_tls: Option<Arc<Backends>>,
    ) -> Result<Shared, Error> {
        if let Some(dir) = &config.error_pages {
            let pages = crate::h1::respond::load_pages(dir).map_err(|message| {
                Error::Config(vec![crate::config::ConfigError {
                    file: config.file.clone(),
                    origin: crate::config::Origin::File,
                    key: crate::config::keys::ERROR_PAGES.label(),
                    message,
                }])
            })?;
            crate::h1::respond::set_pages(pages);
        }
        let router = Arc::new(Router::new(Table::build(config, None)));
        let counters = Arc::new(ProxyCounters::default());
        let parker = Parker::new(config.timeouts.idle).map_err(Error::Resource)?;
        parker.count_into(counters.clone());
        parker.name_accept_proxy(crate::config::keys::accept_proxy_name(config.scale.accept_proxy));
        Ok(Shared {
            router,
            policy: Policy::new(&config.limits),
            counters,
            registry: Registry::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            parker: Some(parker),
            tls,
            backend_tls,
        })
    }

    /// Starts the worker pool of the configured mode and shows its gauges in `/stats`.
    pub fn start_workers(&self, config: &Config) -> Result<WorkerPool<Conn>, Error> {
        let ctx = Context {
            config: config.clone(),
            router: self.router.clone(),
            policy: self.policy.clone(),
            counters: self.counters.clone(),
            stopping: self.stopping.clone(),
            tls: self.tls.clone(),
            backend_tls: self.backend_tls.clone(),
            parker: self.parker.clone(),
        };
        let workers = match config.mode {
            Mode::Tcp => pool(config, ctx, self.parker.clone(), self.registry.clone(), tcp::serve),
            Mode::Http => pool(config, ctx, self.parker.clone(), self.registry.clone(), http_proxy::serve),
        }
        .map_err(|e| {
            let hint = "lower [proxy] workers or raise the thread limits (ulimit -u, vm.max_map_count)";
            Error::Resource(std::io::Error::new(e.kind(), format!("{e}; {hint}")))
        })?;
        let (queue, gauges, parked) = (workers.receiver(), workers.gauges(), self.parker.clone());
        let _ = self.counters.live.set(LiveGauges(Box::new(move || Live {
            waiting_for_worker: queue.len(),
            parked: parked.as_ref().map_or(0, |p| p.len()),
            workers: gauges.size(),
            workers_busy: gauges.busy(),
            worker_threads: gauges.running(),
            worker_panics: gauges.panics(),
            workers_active: gauges.active(),
            workers_reserve: gauges.reserve(),
            worker_handoffs: gauges.handoffs(),
        })));
        Ok(workers)
    }

    /// Starts the health checker, the DNS resolver and the housekeeping; they stop when `stop`
    /// disconnects. The discovery is what a reload goes through.
    pub fn start_background(&self, config: &Config, stop: &Receiver<()>) -> Result<Arc<Discovery>, Error> {
        let router = self.router.clone();
        let pools = move || router.table().pools().iter().map(|p| p.balancer.clone()).collect();
        checker::spawn_checker(pools, stop.clone(), self.backend_tls.clone()).map_err(Error::Resource)?;
        let discovery = Arc::new(Discovery::new(
            config.clone(),
            self.router.clone(),
            self.policy.clone(),
            self.registry.clone(),
            stop.clone(),
        ));
        discovery.spawn_resolver().map_err(Error::Resource)?;
        let chores = Chores { stats_every: config.stats_interval, backend_idle: config.http.backend_idle };
        spawn_housekeeping(self.router.clone(), chores, stop.clone()).map_err(Error::Resource)?;
        Ok(discovery)
    }

    /// Serves the dashboard and API on `listener`, when `[admin]` has one.
    pub fn serve_admin(
        &self,
        config: &Config,
        listener: Option<TcpListener>,
    ) -> Result<Option<Arc<TcpListener>>, Error> {
        let Some(l) = listener else { return Ok(None) };
        let addr = l.local_addr().map_err(Error::Resource)?;
        log::info!("admin listening on {addr} (dashboard at /, /events, /stats, /metrics, /health, POST /backends/NAME/ACTION)");
        let l = Arc::new(l);
        let served = admin::Admin {
            router: self.router.clone(),
            policy: self.policy.clone(),
            counters: self.counters.clone(),
            token: config.admin_token.clone(),
        };
        admin::spawn(l.clone(), served, self.stopping.clone()).map_err(Error::Resource)?;
        Ok(Some(l))
    }
}

/// Starts the worker pool of either mode: each worker notes a long wait for a worker, reads a
/// PROXY header when one is expected, then serves the connection with `serve`.
fn pool<C, S>(
    config: &Config,
    ctx: C,
    parker: Option<Arc<Parker>>,
    registry: Arc<Registry>,
    serve: fn(Conn, &C, &mut S),
) -> std::io::Result<WorkerPool<Conn>>
where
    C: Send + Sync + 'static,
    S: Default + 'static,
{
    let ctx = Arc::new(ctx);
    let config = Arc::new(config.clone());
    let demand: Demand = Box::new(move || registry.len());
    let (few, many) = config.takers();
    let sizing = (Sizing { few, many }, demand);
    WorkerPool::start_gated(
        "worker",
        config.workers,
        sizing,
        config.queue,
        move |mut conn: Conn, scratch: &mut S| {
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
                        // Refused at a stop: the header may be on its way; it gets
                        // SHUTDOWN_GRACE here, as a new connection does for its first request.
                        if let Some(mut back) = parker.park_head(conn, deadline) {
                            if back.greet_within(&config, SHUTDOWN_GRACE) == Greeting::Ready {
                                serve(back, &ctx, scratch);
                            }
                        }
                    }
                }
                Greeting::Refused => {}
            }
        },
    )
}

static SLOW_PICKUP: crate::logging::RateLimit = crate::logging::RateLimit::new();

/// Says so when a connection waited long for a free worker: every worker taking connections was
/// busy (in TCP mode each connection holds one; in HTTP mode each request in progress, or a
/// client idle less than `PARK_AFTER`), so `workers` or `active_workers` is too small.
fn note_wait(conn: &Conn, workers: usize) {
    let waited = conn.accepted.elapsed();
    if waited >= Duration::from_secs(1) {
        if let Some(n) = SLOW_PICKUP.check() {
            log::warn!(
                "conn {} waited {} ms for a free worker (every one taking connections was busy, of {workers}; see [proxy] workers and active_workers){}",
                conn.id,
                waited.as_millis(),
                crate::logging::held_back(n)
            );
        }
    }
}

/// What the housekeeping thread does, and how often.
struct Chores {
    /// Log a one-line summary per backend this often (`stats_interval_ms`; `None`: never).
    stats_every: Option<Duration>,
    /// Close pooled backend connections idle longer than this (`backend_idle_ms`).
    backend_idle: Duration,
}

/// The housekeeping thread, until `stop` disconnects: closes pooled backend connections past
/// `backend_idle_ms` (or closed by their backend) within a second of it, or within
/// `backend_idle_ms` if shorter, rather than at the next request, as nginx's upstream
/// `keepalive_timeout` does; and logs the stats line per backend every `stats_interval_ms`.
fn spawn_housekeeping(router: Arc<Router>, chores: Chores, stop: Receiver<()>) -> std::io::Result<()> {
    let sweep_every = chores.backend_idle.clamp(Duration::from_millis(10), Duration::from_secs(1));
    thread::Builder::new().name("housekeeping".into()).spawn(move || {
        let mut next_sweep = Instant::now() + sweep_every;
        // The stats lines' interval, and when the next is due.
        let mut stats = chores.stats_every.map(|every| (every, Instant::now() + every));
        loop {
            let next = stats.map_or(next_sweep, |(_, log)| log.min(next_sweep));
            if stop.recv_deadline(next) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                return;
            }
            let table = router.table();
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + sweep_every;
                for (_, b) in crate::stats::members(&table) {
                    b.sweep_idle(chores.backend_idle);
                }
            }
            if let Some((every, at)) = &mut stats {
                if now >= *at {
                    *at = now + *every;
                    for (_, b) in crate::stats::members(&table) {
                        log::info!("stats: {}", summary_line(&b));
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// Says what the descriptor limit allows: raised (info), or too low for `workers` requests in
/// flight, each of which holds a client's and a backend's descriptor (warn, as nginx warns that
/// `worker_connections` exceed it).
pub(super) fn log_descriptors((before, after): (Option<u64>, Option<u64>), workers: usize) {
    let Some(limit) = after else { return };
    if before != after {
        let was = before.map_or("unlimited".to_string(), |b| b.to_string());
        log::info!("descriptor limit (ulimit -n) raised from {was} to {limit}, its hard limit");
    }
    let needed = 2 * workers as u64 + 64;
    if limit < needed {
        log::warn!(
            "descriptor limit (ulimit -n) is {limit}: {workers} workers need about {needed} for their \
             requests alone (a client and a backend descriptor each), and idle clients one each; \
             raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
        );
    }
}
