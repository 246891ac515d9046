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
mod start;
mod stop;
pub mod takeover;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use self::signals::Signals;
use self::start::Shared;
use self::takeover::Handoff;
use crate::config::{Config, ConfigError, Mode};
use crate::error::Error;
use crate::net::{bind, bind_with};
use crate::tls::{Backends, Listener};

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
        let descriptors = crate::net::raise_descriptor_limit();
        let shared = Shared::new(&config, tls, backend_tls)?;
        // Background threads (health, resolver, housekeeping) stop when this drops.
        let (background, background_rx) = crossbeam_channel::bounded::<()>(0);
        let workers = shared.start_workers(&config)?;
        let parker = match &shared.parker {
            Some(p) => Some(p.spawn(workers.sender(), workers.receiver()).map_err(Error::Resource)?),
            None => None,
        };
        // Every worker runs: now say so. What matters first, so `listening on` is the first line
        // a newcomer sees; the full effective configuration only at debug level and in `--check`.
        for line in crate::config::show::startup_lines(&config, local_addr) {
            log::info!("{line}");
        }
        for w in &config.warnings {
            log::warn!("{w}");
        }
        start::log_descriptors(descriptors, config.workers);
        for line in config.to_string().lines() {
            log::debug!("config: {line}");
        }
        let discovery = shared.start_background(&config, &background_rx)?;
        let admin = shared.serve_admin(&config, admin)?;
        let accepting = acceptor::start(listener, workers.sender(), &shared, config.workers)?;
        let taking_over = handoff.is_some();
        if let Some(handoff) = handoff {
            // Our acceptor runs: the old process may stop accepting now.
            match handoff.confirm() {
                Ok(()) => log::info!("takeover: accepting; the old process drains and exits"),
                Err(e) => log::warn!("takeover: telling the old process we accept: {e}"),
            }
        }
        let (taken_tx, taken) = crossbeam_channel::bounded::<()>(1);
        // Held until the end: the socket's file is removed then, if it is still ours.
        let _control = config.scale.control_socket.as_ref().and_then(|path| {
            let listeners = std::iter::once(accepting.listener.clone()).chain(admin.clone()).collect();
            let stopping = shared.stopping.clone();
            takeover::serve(path.clone(), listeners, taken_tx, stopping, taking_over)
                .inspect_err(|e| log::error!("{e}; upgrades in place (--takeover) are off"))
                .ok()
        });

        let stop = stop::wait(&signals, &loader, &config, &shared, &discovery, &taken);
        shared.stopping.store(true, Ordering::SeqCst);
        accepting.stop(stop.taken_over, admin.as_deref());
        // Parked idle keep-alive connections close now, as nginx and HAProxy close idle
        // keep-alive connections at a graceful stop; quiet relays drain with the rest.
        if let Some(running) = &parker {
            running.stop_parking();
        }
        let forced = stop::drain_all(&config, &shared.registry, &signals, &stop);
        drop(parker);
        drop(background);
        workers.join();
        // The workers are done: what they logged goes to the access log's file now.
        crate::logging::access::finish();
        Ok(stop::summary(&shared, forced))
    }
}
