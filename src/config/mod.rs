//! Configuration: INI text -> raw settings -> validated [`Config`], with every error named.
//!
//! The pipeline has two stages, as sozu documents its own:
//! 1. [`RawConfig::parse`] reads INI text from any reader and keeps each `key = value` with the
//!    line it came from. Syntax errors, unknown sections, unknown or repeated keys are collected.
//! 2. [`RawConfig::validate`] turns strings into typed values and reports every bad value.
//!
//! Precedence: built-in defaults < the file < command-line flags ([`RawConfig::set_flag`]).
//! Every error names where the value came from: `config.ini:12: [proxy] workers: ...` for the
//! file, `--workers: ...` for a flag.
//!
//! Every key, its type, default, range and help is one entry of [`keys::KEYS`]; validation,
//! `--check`'s output and the manual's key table come from it.
//!
//! Files: [`raw`] (stage one), `validate.rs` (stage two), [`keys`] (the table), [`show`]
//! (`--check`'s output and the manual's table). Addresses are parsed by [`crate::net::addr`].
//!
//! Comments are whole lines starting with `#` or `;`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

pub mod access;
pub mod keys;
pub mod raw;
mod routing;
mod shadow;
pub mod show;
mod validate;
mod values;

pub use crate::net::proxy_protocol::{Accept as AcceptProxy, Version as ProxyVersion};
pub use raw::RawConfig;
pub use routing::{HeaderRules, HostPattern, PoolSpec, Redirect, RouteAction, RouteSpec, DEFAULT_POOL};

/// The largest weight of a backend, in the file as through the admin API (0 there: no new
/// traffic). HAProxy stops at 256, nginx has no limit.
pub const MAX_WEIGHT: u32 = 1000;

/// The default configuration file, looked up in the current directory.
pub const DEFAULT_PATH: &str = "config.ini";

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file (1-based).
    Line(u32),
    /// A command-line flag such as `--workers`.
    Flag(&'static str),
    /// A `--set SECTION.KEY=VALUE` flag, as given.
    Set(String),
    /// A flag and its value as given, for a setting the user did not name (`--backend
    /// localhost`: its `[backends]` name is made up).
    Given(String),
    /// The file as a whole (for example: no backends at all).
    File,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the configuration was read from.
    pub file: String,
    /// Where in it (or which flag).
    pub origin: Origin,
    /// `[section] key`, or empty when the problem is not about one key.
    pub key: String,
    /// What is wrong, in a few words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Line(line) => write!(f, "{}:{line}: ", self.file)?,
            Origin::Flag(flag) => write!(f, "{flag}: ")?,
            Origin::Set(given) => write!(f, "--set {given}: ")?,
            Origin::Given(given) => write!(f, "{given}: ")?,
            Origin::File => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Which protocol the proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay bytes; balance per connection.
    Tcp,
    /// HTTP/1.1 reverse proxy; balance per request.
    Http,
}

/// How the next backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Fewest active connections relative to weight; ties go round-robin.
    LeastConnections,
    /// Smooth weighted round-robin, as nginx.
    RoundRobin,
    /// Power of two random choices on weighted least connections.
    RandomTwo,
    /// Consistent hashing of the client IP.
    SourceHash,
    /// Consistent hashing of a request header (`[proxy] hash_header`, HTTP mode); a request
    /// without it goes by least connections.
    HeaderHash,
    /// The lowest peak-EWMA response time × (active + 1) / weight (nginx's `least_time`,
    /// Linkerd's balancer).
    LeastTime,
}

impl Algorithm {
    /// The name used in the config file, flags and logs.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::LeastConnections => "least-connections",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::RandomTwo => "random-two",
            Algorithm::SourceHash => "source-hash",
            Algorithm::HeaderHash => "header-hash",
            Algorithm::LeastTime => "least-time",
        }
    }
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// The name used in logs and stats.
    pub name: String,
    /// `host:port` as written.
    pub target: String,
    /// The host part as written.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Every address the host resolved to (one for an IP literal).
    pub addrs: Vec<SocketAddr>,
    /// Whether the host is a DNS name (resolved again every `resolve_ms`).
    pub dns: bool,
    /// Relative share of traffic, 1..=1000.
    pub weight: u32,
    /// Most connections (TCP) or requests (HTTP) at once; 0: no limit.
    pub max_conns: usize,
    /// `tls`: connect over TLS, verified against `[tls] backend_ca`; `Some` holds the name
    /// sent as SNI and verified (`sni=NAME`, else the host as written).
    pub tls: Option<String>,
    /// Start each backend connection with a PROXY header of this version (`send_proxy=`).
    pub send_proxy: Option<ProxyVersion>,
}

/// Timeouts, named by phase (`[timeouts]`; defaults in [`keys::KEYS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a backend (`connect_ms`).
    pub connect: Duration,
    /// No bytes in either direction for this long closes the connection (`idle_ms`).
    pub idle: Duration,
    /// HTTP: the request head must be complete within this (`header_ms`).
    pub header: Duration,
    /// HTTP: the backend's response head must arrive within this (`response_ms`).
    pub response: Duration,
    /// How long a connection or request waits for a slot when every backend is full
    /// (`queue_ms`).
    pub queue: Duration,
    /// HTTP: an upgraded connection's idle limit (`tunnel_ms`).
    pub tunnel: Duration,
}

/// A file named in `[tls]`, with where it was named, so a bad file is reported as
/// `config.ini:12: [tls] cert: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: PathBuf,
    pub origin: Origin,
    /// `[tls] cert`.
    pub key: &'static str,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// TLS (`[tls]`): the listener's certificates, and the CA for TLS backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Option<TlsFile>,
    pub key: Option<TlsFile>,
    pub sni_dir: Option<TlsFile>,
    pub min_version: TlsVersion,
    pub backend_ca: Option<TlsFile>,
}

impl TlsSettings {
    /// Whether the listener speaks TLS (`cert` and `key` both given).
    pub fn listener(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// Health checking (`[health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    pub enabled: bool,
    pub mode: Mode,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Live-traffic failures within `fail_window` that mark a backend down (0: off).
    pub max_fails: u32,
    pub fail_window: Duration,
    pub observe_5xx: bool,
    pub slowstart: Duration,
    /// Outlier ejection: failures in a row that eject a member (0: off), for how long, and the
    /// largest share of a pool out at once.
    pub eject_consecutive_5xx: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
    pub eject_max_percent: u32,
}

/// HTTP-mode settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Idle persistent connections kept per backend (`backend_keepalive`).
    pub backend_keepalive: usize,
    /// How long a pooled connection may stay idle and still be reused (`backend_idle_ms`).
    pub backend_idle: Duration,
    /// Largest request head (`max_head_bytes`); larger gets 431.
    pub max_head_bytes: usize,
    /// Largest request body (`max_body_bytes`, 0 = no limit); larger gets 413.
    pub max_body_bytes: Option<u64>,
    /// Forward request headers with `_` in their names (`underscores_in_headers`); off, they
    /// are dropped.
    pub underscores_in_headers: bool,
    /// Statuses after which an idempotent request is tried once more on another member.
    pub retry_on: Vec<u16>,
}

/// Per-client policy (`[limits]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSettings {
    /// Requests (tcp: connections) per period, per client address; `None`: off.
    pub rate: Option<(u32, Duration)>,
    /// Allowed at once above the rate.
    pub burst: u32,
    /// Concurrent connections per client address; 0: no limit.
    pub max_conns_per_client: usize,
    /// Client addresses whose rate is tracked at once.
    pub max_clients: usize,
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub file: String,
    pub listen: SocketAddr,
    pub mode: Mode,
    pub algorithm: Algorithm,
    pub workers: usize,
    /// `[proxy] active_workers`; 0: [`Config::takers`] picks.
    pub active_workers: usize,
    pub queue: usize,
    /// `None`: log to the terminal only.
    pub log_file: Option<PathBuf>,
    pub log_level: LevelFilter,
    /// `[proxy] access_log`: the main log, off, or a file of its own.
    pub access_log: access::Destination,
    /// `[proxy] access_format`.
    pub access_format: access::Format,
    pub drain_timeout: Duration,
    pub timeouts: Timeouts,
    pub http: HttpSettings,
    pub health: HealthSettings,
    pub tls: TlsSettings,
    pub limits: LimitSettings,
    /// Admin listener for /stats, /metrics, /health; `None`: off.
    pub admin: Option<SocketAddr>,
    /// `[admin] token`: the bearer token every admin POST must carry; `None`: no check.
    pub admin_token: Option<String>,
    /// A per-backend summary line this often; `None`: off.
    pub stats_interval: Option<Duration>,
    /// How often DNS names in `[backends]` are resolved again.
    pub resolve_interval: Duration,
    /// The default pool's members (`[backends]`; may be empty when `[pool.NAME]`s exist).
    pub backends: Vec<BackendSpec>,
    /// `[backends] sticky = cookie NAME`: the default pool's cookie, if sticky.
    pub sticky: Option<String>,
    /// `[pool.NAME]` sections, in file order.
    pub pools: Vec<PoolSpec>,
    /// `[route.NAME]` sections, in file order: the first that matches wins.
    pub routes: Vec<RouteSpec>,
    /// Problems that don't stop the proxy (a pool no route reaches), logged at start and reload.
    pub warnings: Vec<ConfigError>,
    /// `[proxy] error_pages`: `DIR/NNN.html` replaces the body of the proxy's own answers.
    pub error_pages: Option<PathBuf>,
    /// Running beside sibling instances (`reuse_port`, `accept_proxy`, `hash_header`,
    /// `control_socket`).
    pub scale: ScaleSettings,
    /// Where each setting that was written came from, by `[section] key`: `config.ini:12`,
    /// `--workers` or `--set proxy.workers=8` (absent: the built-in default). `--check` shows it.
    pub origins: std::collections::BTreeMap<String, String>,
}

/// Settings for running several instances and upgrading in place (`[proxy]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSettings {
    /// `SO_REUSEPORT` on the listener, so sibling processes share the port (`reuse_port`).
    pub reuse_port: bool,
    /// Which PROXY protocol header every client connection must start with (`accept_proxy`).
    pub accept_proxy: AcceptProxy,
    /// The request header `header-hash` hashes (`hash_header`).
    pub hash_header: String,
    /// Where the running proxy hands its listener to a `--takeover` process (`control_socket`).
    pub control_socket: Option<PathBuf>,
}

impl fmt::Display for Config {
    /// The effective settings, one `key = value` per line for every key in [`keys::KEYS`] and
    /// then the backends, as `--check` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show::write_effective(self, f)
    }
}

/// A pool as the rest of the proxy sees it, whether `[backends]` or a `[pool.NAME]`.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    pub name: &'a str,
    pub algorithm: Algorithm,
    /// The pool's own `[health] path`, if it has one.
    pub health_path: Option<&'a str>,
    /// The sticky cookie's name, if sticky.
    pub sticky: Option<&'a str>,
    pub backends: &'a [BackendSpec],
}

impl Config {
    /// Workers taking connections at once, `(few, many)`: many while no more connections are
    /// open, few beyond. `active_workers` both; by default 16 and 32 per CPU.
    pub fn takers(&self) -> (usize, usize) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (few, many) = match self.active_workers {
            0 => (16 * cpus, 32 * cpus),
            n => (n, n),
        };
        (few.min(self.workers), many.min(self.workers))
    }

    /// Every backend line, of `[backends]` and of every `[pool.NAME]`.
    pub fn every_backend(&self) -> impl Iterator<Item = &BackendSpec> {
        self.every_pool().flat_map(|p| p.backends.iter())
    }

    /// Every pool, the default one (`[backends]`, possibly without members) first.
    pub fn every_pool(&self) -> impl Iterator<Item = PoolView<'_>> {
        let default = PoolView {
            name: DEFAULT_POOL,
            algorithm: self.algorithm,
            health_path: None,
            sticky: self.sticky.as_deref(),
            backends: &self.backends,
        };
        std::iter::once(default).chain(self.pools.iter().map(|p| PoolView {
            name: &p.name,
            algorithm: p.algorithm,
            health_path: p.health_path.as_deref(),
            sticky: p.sticky.as_deref(),
            backends: &p.backends,
        }))
    }
}

/// A timeout setting as a socket timeout: 0 means no limit.
pub fn as_limit(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Helpers for the tests of the layers that use settings.
#[cfg(test)]
pub(crate) mod testing {
    /// The default health settings, as a config that sets none gets them.
    pub fn health() -> super::HealthSettings {
        let raw = super::RawConfig::parse(&b"[backends]\na = 127.0.0.1:1\n"[..], "t").expect("parse");
        raw.validate().expect("valid").health
    }
}
