//! What every worker shares, in either mode: the configuration it started with, the route
//! table (pools and their balancers), the counters, the stop flag, the listener's and the backends' TLS, and the parker.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
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
