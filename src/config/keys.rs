//! The table of configuration keys: one entry per key with its section, type, default, range,
//! flag and help. Validation, unknown-key errors, `--check`'s output and the manual's key table
//! all come from [`KEYS`], so a default is written down once.

use super::{AcceptProxy, Config, Mode};

mod admin;
mod health;
mod http;
mod limits;
mod logs;
mod routing;
mod tls;
pub use admin::{ADMIN_LISTEN, ADMIN_TOKEN, RESOLVE_MS, STICKY};
pub use health::{
    EJECT_BASE_MS, EJECT_CONSECUTIVE_5XX, EJECT_MAX_MS, EJECT_MAX_PERCENT, FAIL_WINDOW_MS, FALL,
    HEALTH_ENABLED, HEALTH_MODE, HEALTH_PATH, INTERVAL_MS, MAX_FAILS, OBSERVE_5XX, RISE, SLOWSTART_MS,
    TIMEOUT_MS,
};
pub use http::{
    BACKEND_IDLE_MS, BACKEND_KEEPALIVE, MAX_BODY_BYTES, MAX_HEAD_BYTES, RETRY_ON, UNDERSCORES_IN_HEADERS,
};
pub use limits::{ALLOW, BURST, DENY, MAX_CLIENTS, MAX_CONNS_PER_CLIENT, RATE, TRUSTED_PROXIES};
pub use logs::{ACCESS_FORMAT, ACCESS_LOG};
pub use routing::ERROR_PAGES;
pub use tls::{TLS_BACKEND_CA, TLS_CERT, TLS_KEY, TLS_MIN_VERSION, TLS_SNI_DIR, TLS_VERSIONS};

/// What values a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number in `min..=max`.
    Number { min: u64, max: u64 },
    /// Milliseconds in `min..=max`.
    Millis { min: u64, max: u64 },
    /// `true`/`false` (also yes/no, on/off, 1/0).
    Bool,
    /// One of these names.
    Choice(&'static [&'static str]),
    /// `host:port` (a listener also takes a bare port).
    Address,
    /// A file path.
    Path,
    /// Free text, checked by the key's own parser.
    Text,
}

impl Kind {
    /// The type as the manual names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Number { .. } => "number",
            Kind::Millis { .. } => "ms",
            Kind::Bool => "bool",
            Kind::Choice(_) => "choice",
            Kind::Address => "address",
            Kind::Path => "path",
            Kind::Text => "text",
        }
    }

    /// The allowed values: a numeric range, or the choices; empty otherwise.
    pub fn range(self) -> String {
        match self {
            // u64::MAX >> 1 stands for "no practical limit".
            Kind::Number { min, max } | Kind::Millis { min, max } if max >= u64::MAX >> 1 => {
                format!("{min}..")
            }
            Kind::Number { min, max } | Kind::Millis { min, max } => format!("{min}..={max}"),
            Kind::Choice(names) => names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
            _ => String::new(),
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `proxy` for `[proxy]`.
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// The value used when the key is absent, as it would be written in the file.
    pub default: &'static str,
    /// The command-line flag that overrides it, if any.
    pub flag: Option<&'static str>,
    /// One line for the manual's key table.
    pub help: &'static str,
    /// The effective value as `--check` prints it (parses back to the same setting).
    pub show: fn(&Config) -> String,
}

impl Key {
    /// `[section] name`, as errors name it.
    pub fn label(&self) -> String {
        format!("[{}] {}", self.section, self.name)
    }
}

/// The algorithm names, as written in the file and on the command line.
pub const ALGORITHMS: &[&str] =
    &["least-connections", "round-robin", "random-two", "source-hash", "header-hash", "least-time"];
/// The `accept_proxy` choices.
pub const ACCEPT_PROXY_CHOICES: &[&str] = &["off", "v1", "v2", "any"];
/// The proxy's modes.
pub const MODES: &[&str] = &["tcp", "http"];
/// The log levels.
pub const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

const fn key(
    section: &'static str,
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
    show: fn(&Config) -> String,
) -> Key {
    Key { section, name, kind, default, flag: None, help, show }
}

const fn flagged(k: Key, flag: &'static str) -> Key {
    Key { flag: Some(flag), ..k }
}

const fn millis(min: u64, max: u64) -> Kind {
    Kind::Millis { min, max }
}

const fn number(min: u64, max: u64) -> Kind {
    Kind::Number { min, max }
}

/// The widest millisecond setting: one day.
const DAY_MS: u64 = 86_400_000;

/// The name of an `accept_proxy` setting.
pub fn accept_proxy_name(a: AcceptProxy) -> &'static str {
    match a {
        AcceptProxy::Off => "off",
        AcceptProxy::V1 => "v1",
        AcceptProxy::V2 => "v2",
        AcceptProxy::Any => "any",
    }
}

fn mode_name(m: Mode) -> String {
    (if m == Mode::Tcp { "tcp" } else { "http" }).to_string()
}

/// `[proxy] listen`.
pub const LISTEN: Key = flagged(
    key(
        "proxy",
        "listen",
        Kind::Address,
        "0.0.0.0:8080",
        "address to accept clients on; a bare port means 0.0.0.0:PORT; [::]:PORT takes IPv4 too unless sysctl net.ipv6.bindv6only = 1",
        |c| c.listen.to_string(),
    ),
    "--listen",
);
/// `[proxy] mode`.
pub const MODE: Key = flagged(
    key(
        "proxy",
        "mode",
        Kind::Choice(MODES),
        "tcp",
        "`tcp`: relay bytes, balance per connection; `http`: HTTP/1.1, balance per request",
        |c| mode_name(c.mode),
    ),
    "--mode",
);
/// `[proxy] algorithm`.
pub const ALGORITHM: Key = flagged(
    key(
        "proxy",
        "algorithm",
        Kind::Choice(ALGORITHMS),
        "least-connections",
        "how the next backend is chosen (`leastconn` and `roundrobin` are accepted too)",
        |c| c.algorithm.name().to_string(),
    ),
    "--algorithm",
);
/// `[proxy] workers`.
pub const WORKERS: Key = flagged(
    key(
        "proxy",
        "workers",
        number(1, 20_000),
        "512",
        "worker threads = requests (http) or relays (tcp) in progress at once; idle clients and quiet relays park without one. By Little's law: req/s x backend seconds (5,000 x 0.1 s = 500); must fit the thread limits",
        |c| c.workers.to_string(),
    ),
    "--workers",
);
/// `[proxy] active_workers`.
pub const ACTIVE_WORKERS: Key = key(
    "proxy",
    "active_workers",
    number(0, 20_000),
    "0",
    "workers taking connections at once (0: 32 per CPU while no more connections are open, 16 beyond); one waiting long on a peer while connections queue hands its place to another, up to `workers`",
    |c| c.active_workers.to_string(),
);
/// `[proxy] queue`.
pub const QUEUE: Key = key(
    "proxy",
    "queue",
    number(1, 1_000_000),
    "1024",
    "accepted connections waiting for a worker; when full, accepting pauses",
    |c| c.queue.to_string(),
);
/// `[proxy] log_file`.
pub const LOG_FILE: Key = flagged(
    key(
        "proxy",
        "log_file",
        Kind::Path,
        "logs/proxy.log",
        "appended, directory created; empty: terminal only",
        |c| c.log_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    ),
    "--log-file",
);
/// `[proxy] log_level`.
pub const LOG_LEVEL: Key = flagged(
    key(
        "proxy",
        "log_level",
        Kind::Choice(LEVELS),
        "info",
        "`info` logs one line per connection and its end",
        |c| c.log_level.as_str().to_lowercase(),
    ),
    "--log-level",
);
/// `[proxy] drain_timeout_ms`.
pub const DRAIN_TIMEOUT_MS: Key = key(
    "proxy",
    "drain_timeout_ms",
    millis(0, DAY_MS),
    "5000",
    "on Ctrl-C/SIGTERM, how long open connections may finish",
    |c| c.drain_timeout.as_millis().to_string(),
);
/// `[proxy] stats_interval_ms`.
pub const STATS_INTERVAL_MS: Key = key(
    "proxy",
    "stats_interval_ms",
    millis(0, DAY_MS),
    "0",
    "log a one-line summary per backend this often (0: off)",
    |c| c.stats_interval.map_or(0, |d| d.as_millis()).to_string(),
);
/// `[proxy] reuse_port`.
pub const REUSE_PORT: Key = key(
    "proxy",
    "reuse_port",
    Kind::Bool,
    "false",
    "SO_REUSEPORT: several proxy processes bind the same address and the kernel spreads clients",
    |c| c.scale.reuse_port.to_string(),
);
/// `[proxy] accept_proxy`.
pub const ACCEPT_PROXY: Key = key(
    "proxy",
    "accept_proxy",
    Kind::Choice(ACCEPT_PROXY_CHOICES),
    "off",
    "every client connection starts with a PROXY protocol header (from an L4 tier) within `header_ms`; its client address is used everywhere",
    |c| accept_proxy_name(c.scale.accept_proxy).to_string(),
);
/// `[proxy] hash_header`.
pub const HASH_HEADER: Key = key(
    "proxy",
    "hash_header",
    Kind::Text,
    "X-User-Id",
    "http, `header-hash`: the request header hashed; requests without it go by least connections",
    |c| c.scale.hash_header.clone(),
);
/// `[proxy] control_socket`.
pub const CONTROL_SOCKET: Key = key(
    "proxy",
    "control_socket",
    Kind::Path,
    "",
    "unix socket where the running proxy hands its listener to `proxy_server --takeover PATH`; empty: off",
    |c| c.scale.control_socket.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
);
/// `[timeouts] connect_ms`.
pub const CONNECT_MS: Key = key(
    "timeouts",
    "connect_ms",
    millis(0, DAY_MS),
    "2000",
    "backend connect timeout; then the next backend is tried",
    |c| c.timeouts.connect.as_millis().to_string(),
);
/// `[timeouts] idle_ms`.
pub const IDLE_MS: Key =
    key("timeouts", "idle_ms", millis(0, DAY_MS), "60000", "close a connection with no bytes either way for this long (0: never); http: also idle keep-alive clients", |c| c.timeouts.idle.as_millis().to_string());
/// `[timeouts] header_ms`.
pub const HEADER_MS: Key = key(
    "timeouts",
    "header_ms",
    millis(0, DAY_MS),
    "10000",
    "http: the request head must be complete within this, else 408 and close; tcp with sni routes: the ClientHello's limit (0: idle_ms's)",
    |c| c.timeouts.header.as_millis().to_string(),
);
/// `[timeouts] response_ms`.
pub const RESPONSE_MS: Key = key(
    "timeouts",
    "response_ms",
    millis(0, DAY_MS),
    "60000",
    "http: the longest the backend may be silent while its answer is awaited, per read (nginx's \
     proxy_read_timeout): before its head is whole, 504; in its body, the body is cut",
    |c| c.timeouts.response.as_millis().to_string(),
);
/// `[timeouts] tunnel_ms`.
pub const TUNNEL_MS: Key = key(
    "timeouts",
    "tunnel_ms",
    millis(0, DAY_MS),
    "3600000",
    "http: an upgraded connection (WebSocket) with no bytes either way for this long is closed (0: never), as HAProxy's `timeout tunnel`",
    |c| c.timeouts.tunnel.as_millis().to_string(),
);
/// `[timeouts] queue_ms`.
pub const QUEUE_MS: Key = key(
    "timeouts",
    "queue_ms",
    millis(0, DAY_MS),
    "3000",
    "when every backend is at `max_conns`, wait this long for a slot, then close (tcp) or 503 (http)",
    |c| c.timeouts.queue.as_millis().to_string(),
);
/// Every key, grouped by section in the order `--check` prints them; `[backends]` comes last
/// because the backend lines follow its one key.
pub const KEYS: &[Key] = &[
    LISTEN,
    MODE,
    ALGORITHM,
    WORKERS,
    ACTIVE_WORKERS,
    QUEUE,
    LOG_FILE,
    LOG_LEVEL,
    ACCESS_LOG,
    ACCESS_FORMAT,
    DRAIN_TIMEOUT_MS,
    STATS_INTERVAL_MS,
    REUSE_PORT,
    ACCEPT_PROXY,
    HASH_HEADER,
    CONTROL_SOCKET,
    ERROR_PAGES,
    CONNECT_MS,
    IDLE_MS,
    HEADER_MS,
    RESPONSE_MS,
    QUEUE_MS,
    TUNNEL_MS,
    BACKEND_KEEPALIVE,
    BACKEND_IDLE_MS,
    MAX_HEAD_BYTES,
    MAX_BODY_BYTES,
    UNDERSCORES_IN_HEADERS,
    RETRY_ON,
    HEALTH_ENABLED,
    HEALTH_MODE,
    HEALTH_PATH,
    INTERVAL_MS,
    TIMEOUT_MS,
    RISE,
    FALL,
    MAX_FAILS,
    FAIL_WINDOW_MS,
    OBSERVE_5XX,
    SLOWSTART_MS,
    EJECT_CONSECUTIVE_5XX,
    EJECT_BASE_MS,
    EJECT_MAX_MS,
    EJECT_MAX_PERCENT,
    TLS_CERT,
    TLS_KEY,
    TLS_SNI_DIR,
    TLS_MIN_VERSION,
    TLS_BACKEND_CA,
    RATE,
    BURST,
    MAX_CONNS_PER_CLIENT,
    MAX_CLIENTS,
    ALLOW,
    DENY,
    TRUSTED_PROXIES,
    ADMIN_LISTEN,
    ADMIN_TOKEN,
    RESOLVE_MS,
    STICKY,
];

/// The key `[section] name`, if there is one.
pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The keys and sections nearest to a misspelt `name` (in `section`, else anywhere), as a hint:
/// `; did you mean 'algorithm'?`, or `; 'algorithm' is in [proxy]` when it belongs elsewhere.
pub fn did_you_mean(section: Option<&str>, name: &str) -> String {
    let close = |candidate: &str| strsim::jaro_winkler(&name.to_ascii_lowercase(), candidate) >= 0.8;
    if let Some(k) = KEYS.iter().find(|k| k.name == name && Some(k.section) != section) {
        return format!("; '{}' is in [{}]", k.name, k.section);
    }
    let mut best: Option<(f64, String)> = None;
    let mut consider = |candidate: String, score: f64| {
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, candidate));
        }
    };
    match section {
        Some(section) => {
            for k in KEYS.iter().filter(|k| k.section == section && close(k.name)) {
                consider(k.name.to_string(), strsim::jaro_winkler(name, k.name));
            }
        }
        None => {
            let sections: Vec<&str> = KEYS.iter().map(|k| k.section).collect();
            for s in sections.into_iter().filter(|s| close(s)) {
                consider(format!("[{s}]"), strsim::jaro_winkler(name, s));
            }
        }
    }
    best.map(|(_, c)| format!("; did you mean '{c}'?")).unwrap_or_default()
}

/// The section called `name`, as a static string, if it exists.
pub fn section(name: &str) -> Option<&'static str> {
    KEYS.iter().map(|k| k.section).find(|s| *s == name)
}

/// "a, b or c": the choices an error message offers.
pub fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
