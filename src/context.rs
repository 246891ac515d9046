//! What every worker shares, in either mode: the configuration it started with, the route
//! table (pools and their balancers), the counters, the stop flag, the listener's and the backends' TLS, and the parker.

use std::fmt::Display;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::conn::policy::{Policy, Refused};
use crate::park::Parker;
use crate::route::Router;
use crate::stats::ProxyCounters;
use crate::tls::{Backends, Listener};

/// What the workers share (one per pool; a reload starts a new pool with a new one).
pub struct Context {
    /// The configuration the workers started with (timeouts, limits).
    pub config: Config,
    /// The pools and the routes between them; each pool's balancer picks its backends.
    pub router: Arc<Router>,
    /// Per-client limits and access (`[limits]`).
    pub policy: Arc<Policy>,
    /// Requests, handshakes and other proxy-wide counts.
    pub counters: Arc<ProxyCounters>,
    /// Set at shutdown: finish the current request, then close.
    pub stopping: Arc<AtomicBool>,
    /// The listener's TLS material, when it speaks TLS: terminated here, plaintext relayed
    /// (HAProxy's `ssl` on a bind, in `mode tcp` as in `mode http`).
    pub tls: Option<Arc<Listener>>,
    /// TLS to backends marked `tls`.
    pub backend_tls: Option<Arc<Backends>>,
    /// Where idle connections wait without a worker (`None`: no parker, or not yet).
    pub parker: Option<Arc<Parker>>,
}

impl Context {
    /// Whether a worker is wanted elsewhere (connections wait for one): a quiet relay, tunnel
    /// or body then parks sooner.
    pub fn worker_wanted(&self) -> bool {
        self.parker.as_ref().is_some_and(|p| p.worker_wanted())
    }

    /// Counts a client turned away by `[limits]` and logs it, at most once per address per
    /// 10 s (with how many were not logged since), so a flood cannot flood the log.
    pub fn refused(&self, who: impl Display, ip: IpAddr, why: Refused) {
        let (counter, what) = match why {
            Refused::Denied => {
                (&self.counters.refused_denied, "not allowed ([limits] allow/deny)".to_string())
            }
            Refused::Rate(wait) => (
                &self.counters.refused_rate,
                format!("over [limits] rate (retry in {} ms)", wait.as_millis()),
            ),
            Refused::Connections => {
                (&self.counters.refused_connections, "over [limits] max_conns_per_client".to_string())
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.policy.note(ip) {
            let more =
                if held > 0 { format!(" ({held} more refused since the last line)") } else { String::new() };
            log::warn!("{who}: client {ip} refused: {what}{more}");
        }
    }
}
