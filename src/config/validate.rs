//! Stage two: [`RawConfig`] -> typed [`Config`]. Each key is read through its entry in
//! [`keys::KEYS`] (range, default), and every bad value is reported, not just the first.

use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use super::keys::{self, Key, Kind};
use super::raw::{RawConfig, Setting};
use super::routing;
use super::values::{
    parse_algorithm, parse_backend, parse_bool, parse_control_socket, parse_header_name, parse_nets,
    parse_number, parse_path, parse_rate, parse_statuses, parse_sticky,
};
use super::{
    AcceptProxy, Algorithm, BackendSpec, Config, ConfigError, HealthSettings, HttpSettings, LimitSettings,
    Mode, Origin, ScaleSettings, Timeouts, TlsFile, TlsSettings, TlsVersion,
};
use crate::net::addr;

impl RawConfig {
    /// Checks every value and returns the typed configuration, or every problem found.
    pub fn validate(&self) -> Result<Config, Vec<ConfigError>> {
        let mut v = Validator { raw: self, errors: self.errors.clone() };
        // Every key is read (and every bad value reported) before any is used.
        let listen = v.get(&keys::LISTEN, addr::parse_listen);
        let mode = v.get(&keys::MODE, parse_mode);
        let algorithm = v.get(&keys::ALGORITHM, parse_algorithm);
        let workers = v.number(&keys::WORKERS);
        let active_workers = v.number(&keys::ACTIVE_WORKERS);
        let queue = v.number(&keys::QUEUE);
        let log_file = v.get(&keys::LOG_FILE, |s| Ok((!s.is_empty()).then(|| PathBuf::from(s))));
        let log_level = v.get(&keys::LOG_LEVEL, parse_level);
        let access_log = v.get(&keys::ACCESS_LOG, |s| Ok(crate::config::access::destination(s)));
        let access_format = v.get(&keys::ACCESS_FORMAT, |s| {
            crate::config::access::Format::parse(s)
                .ok_or_else(|| "expected main, combined or json".to_string())
        });
        let drain_timeout = v.millis(&keys::DRAIN_TIMEOUT_MS);
        let stats_interval = v.millis(&keys::STATS_INTERVAL_MS);
        let connect = v.millis(&keys::CONNECT_MS);
        let idle = v.millis(&keys::IDLE_MS);
        let header = v.millis(&keys::HEADER_MS);
        let response = v.millis(&keys::RESPONSE_MS);
        let queue_wait = v.millis(&keys::QUEUE_MS);
        let tunnel = v.millis(&keys::TUNNEL_MS);
        let tls = v.tls();
        let backend_keepalive = v.number(&keys::BACKEND_KEEPALIVE);
        let backend_idle = v.millis(&keys::BACKEND_IDLE_MS);
        let max_head_bytes = v.number(&keys::MAX_HEAD_BYTES);
        let max_body = v.number(&keys::MAX_BODY_BYTES);
        let underscores = v.get(&keys::UNDERSCORES_IN_HEADERS, parse_bool);
        let enabled = v.get(&keys::HEALTH_ENABLED, parse_bool);
        // Empty (the default): check the way the proxy speaks.
        let health_mode =
            v.get(&keys::HEALTH_MODE, |s| if s.is_empty() { Ok(None) } else { parse_mode(s).map(Some) });
        let path = v.get(&keys::HEALTH_PATH, parse_path);
        let interval = v.millis(&keys::INTERVAL_MS);
        let timeout = v.millis(&keys::TIMEOUT_MS);
        let rise = v.number(&keys::RISE);
        let fall = v.number(&keys::FALL);
        let max_fails = v.number(&keys::MAX_FAILS);
        let fail_window = v.millis(&keys::FAIL_WINDOW_MS);
        let observe_5xx = v.get(&keys::OBSERVE_5XX, parse_bool);
        let slowstart = v.millis(&keys::SLOWSTART_MS);
        let eject_consecutive = v.number(&keys::EJECT_CONSECUTIVE_5XX);
        let eject_base = v.millis(&keys::EJECT_BASE_MS);
        let eject_max = v.millis(&keys::EJECT_MAX_MS);
        let eject_max_percent = v.number(&keys::EJECT_MAX_PERCENT);
        let retry_on = v.get(&keys::RETRY_ON, parse_statuses);
        let admin = v.get(&keys::ADMIN_LISTEN, |s| {
            if s.is_empty() {
                Ok(None)
            } else {
                addr::parse_socket_addr(s, true).map(Some)
            }
        });
        let admin_token = v.get(&keys::ADMIN_TOKEN, parse_token);
        let resolve_interval = v.millis(&keys::RESOLVE_MS);
        let reuse_port = v.get(&keys::REUSE_PORT, parse_bool);
        let accept_proxy = v.get(&keys::ACCEPT_PROXY, parse_accept_proxy);
        let hash_header = v.get(&keys::HASH_HEADER, parse_header_name);
        let sticky = v.get(&keys::STICKY, parse_sticky);
        if sticky.as_ref().is_some_and(Option::is_some) && mode == Some(Mode::Tcp) {
            v.errors.push(ConfigError {
                file: self.file.clone(),
                origin: self.origin("backends", "sticky"),
                key: keys::STICKY.label(),
                message: "sticky cookies need mode = http (in tcp mode use algorithm = source-hash)"
                    .to_string(),
            });
        }
        let rate = v.get(&keys::RATE, parse_rate);
        let burst = v.number(&keys::BURST);
        let max_conns_per_client = v.number(&keys::MAX_CONNS_PER_CLIENT);
        let max_clients = v.number(&keys::MAX_CLIENTS);
        let allow = v.get(&keys::ALLOW, parse_nets);
        let deny = v.get(&keys::DENY, parse_nets);
        let trusted_proxies = v.get(&keys::TRUSTED_PROXIES, parse_nets);
        let error_pages = v.get(&keys::ERROR_PAGES, |s| Ok((!s.is_empty()).then(|| PathBuf::from(s))));
        let control_socket = v.get(&keys::CONTROL_SOCKET, parse_control_socket);
        // `None` exactly when some value was bad (and reported).
        let built = (|| {
            Some(Config {
                origins: self.origins(),
                file: self.file.clone(),
                listen: listen?,
                mode: mode?,
                algorithm: algorithm?,
                workers: workers? as usize,
                active_workers: active_workers? as usize,
                queue: queue? as usize,
                log_file: log_file?,
                log_level: log_level?,
                access_log: access_log?,
                access_format: access_format?,
                drain_timeout: drain_timeout?,
                timeouts: Timeouts {
                    connect: connect?,
                    idle: idle?,
                    // 0: idle_ms bounds a head instead, as HAProxy's `timeout client` does
                    // when `timeout http-request` is unset.
                    header: match header? {
                        h if h.is_zero() => idle?,
                        h => h,
                    },
                    response: response?,
                    queue: queue_wait?,
                    tunnel: tunnel?,
                },
                http: HttpSettings {
                    backend_keepalive: backend_keepalive? as usize,
                    backend_idle: backend_idle?,
                    max_head_bytes: max_head_bytes? as usize,
                    max_body_bytes: max_body.map(|m| (m > 0).then_some(m))?,
                    underscores_in_headers: underscores?,
                    retry_on: retry_on?,
                },
                health: HealthSettings {
                    enabled: enabled?,
                    mode: health_mode?.or(mode)?,
                    path: path?,
                    interval: interval?,
                    timeout: timeout?,
                    rise: rise? as u32,
                    fall: fall? as u32,
                    max_fails: max_fails? as u32,
                    fail_window: fail_window?,
                    observe_5xx: observe_5xx?,
                    slowstart: slowstart?,
                    eject_consecutive_5xx: eject_consecutive? as u32,
                    eject_base: eject_base?,
                    eject_max: eject_max?,
                    eject_max_percent: eject_max_percent? as u32,
                },
                tls: tls?,
                limits: LimitSettings {
                    rate: rate?,
                    burst: burst? as u32,
                    max_conns_per_client: max_conns_per_client? as usize,
                    max_clients: max_clients? as usize,
                    allow: allow?,
                    deny: deny?,
                    trusted_proxies: trusted_proxies?,
                },
                admin: admin?,
                admin_token: admin_token?,
                stats_interval: stats_interval.map(|d| (!d.is_zero()).then_some(d))?,
                resolve_interval: resolve_interval?,
                backends: Vec::new(),
                sticky: sticky?,
                pools: Vec::new(),
                routes: Vec::new(),
                warnings: Vec::new(),
                error_pages: error_pages?,
                scale: ScaleSettings {
                    reuse_port: reuse_port?,
                    accept_proxy: accept_proxy?,
                    hash_header: hash_header?,
                    control_socket: control_socket?,
                },
            })
        })();
        if algorithm == Some(Algorithm::HeaderHash) && mode == Some(Mode::Tcp) {
            v.errors.push(ConfigError {
                file: self.file.clone(),
                origin: self.origin("proxy", "algorithm"),
                key: keys::ALGORITHM.label(),
                message: "header-hash hashes an HTTP request header: it needs mode = http".to_string(),
            });
        }
        let mut backends = Vec::new();
        for s in self
            .settings
            .iter()
            .filter(|s| s.section == "backends" && keys::find("backends", &s.key).is_none())
        {
            match parse_backend(&s.key, &s.value) {
                Ok(b) => backends.push((b, s.origin.clone())),
                Err(message) => v.error(s, message),
            }
        }
        let mut warnings = Vec::new();
        let (pools, routes) = routing::read(self, mode, algorithm, &backends, &mut v.errors, &mut warnings);
        let warning = |origin, key, message| ConfigError { file: self.file.clone(), origin, key, message };
        for (b, a) in super::shadow::shadowed(&routes) {
            let (b, a) = (&routes[b], &routes[a]);
            warnings.push(warning(
                Origin::Line(b.line),
                format!("[route.{}]", b.name),
                format!(
                    "never matches: [route.{}] (line {}), tried first, matches every request it does",
                    a.name, a.line
                ),
            ));
        }
        let backends: Vec<BackendSpec> = backends.into_iter().map(|(b, _)| b).collect();
        let backend_error =
            |e: &ConfigError| e.key.starts_with("[backends]") || matches!(e.origin, Origin::Given(_));
        if backends.is_empty() && pools.is_empty() && !v.errors.iter().any(backend_error) {
            v.errors.push(ConfigError {
                file: self.file.clone(),
                origin: Origin::File,
                key: "[backends]".to_string(),
                message: "no backends configured (add 'name = host:port' lines or --backend)".to_string(),
            });
        }
        if let Some(c) = built.as_ref().filter(|c| c.active_workers > c.workers) {
            warnings.push(warning(
                self.origin("proxy", "active_workers"),
                "[proxy] active_workers".to_string(),
                format!(
                    "{} is more than workers ({}): {} take connections",
                    c.active_workers, c.workers, c.workers
                ),
            ));
        }
        // As nginx warns "low address bits of 10.0.0.1/8 are meaningless".
        if let Some(c) = built.as_ref() {
            let l = &c.limits;
            // Named as written: an IPv4-mapped block is compared in its IPv4 form, which the
            // operator never wrote.
            for key in [&keys::ALLOW, &keys::DENY, &keys::TRUSTED_PROXIES] {
                let blocks = self.setting(key).map_or("", |s| s.value.as_str()).split(',');
                let nets = blocks.filter_map(|w| w.trim().parse::<ipnet::IpNet>().ok());
                for n in nets.filter(|n| n.addr() != n.network()) {
                    let message =
                        format!("low address bits of {n} are meaningless: it stands for {}", n.trunc());
                    warnings.push(warning(self.origin(key.section, key.name), key.label(), message));
                }
            }
            let trusted = &keys::TRUSTED_PROXIES;
            let mut trust_warning = |message: &str| {
                let origin = self.origin(trusted.section, trusted.name);
                warnings.push(warning(origin, trusted.label(), message.to_string()));
            };
            if c.mode == Mode::Tcp && !l.trusted_proxies.is_empty() {
                trust_warning("has no effect in mode = tcp, which reads no X-Forwarded-For (a proxy in front can send a PROXY header: accept_proxy)");
            }
            if l.trusted_proxies.iter().any(|n| n.prefix_len() == 0) {
                trust_warning("trusts every client (of its address family): any client may name its own address in X-Forwarded-For, and so choose what allow, deny and the per-client limits see");
            }
        }
        let mut errors = v.errors;
        match built {
            Some(config) if errors.is_empty() => Ok(Config { backends, pools, routes, warnings, ..config }),
            _ => {
                errors.sort_by_key(|e| match e.origin {
                    Origin::Line(l) => (0, l),
                    Origin::Flag(_) | Origin::Set(_) | Origin::Given(_) => (1, 0),
                    Origin::File => (2, 0),
                });
                Err(errors)
            }
        }
    }
}

struct Validator<'a> {
    raw: &'a RawConfig,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// The value of `key` parsed by `parse`, or its default (from the table) when absent. A bad
    /// value is recorded as an error and gives `None`.
    fn get<T>(&mut self, key: &Key, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        match self.raw.setting(key) {
            Some(s) => match parse(&s.value) {
                Ok(v) => Some(v),
                Err(message) => {
                    self.error(s, message);
                    None
                }
            },
            // A default that does not parse is a bug in the table (a unit test guards it);
            // say so rather than panic.
            None => match parse(key.default) {
                Ok(v) => Some(v),
                Err(message) => {
                    self.errors.push(ConfigError {
                        file: self.raw.file.clone(),
                        origin: Origin::File,
                        key: key.label(),
                        message: format!("built-in default '{}' is invalid: {message}", key.default),
                    });
                    None
                }
            },
        }
    }

    /// A number within the key's range.
    fn number(&mut self, key: &Key) -> Option<u64> {
        match key.kind {
            Kind::Number { min, max } | Kind::Millis { min, max } => {
                self.get(key, |s| parse_number(s, min, max))
            }
            _ => self.get(key, |_| Err(format!("{} is not a numeric key", key.label()))),
        }
    }

    /// Milliseconds within the key's range.
    fn millis(&mut self, key: &Key) -> Option<Duration> {
        self.number(key).map(Duration::from_millis)
    }

    /// `[tls]`: the files as named (loaded by `crate::tls`), `cert` and `key` only together.
    fn tls(&mut self) -> Option<TlsSettings> {
        let file = |v: &mut Self, key: &'static Key| {
            v.get(key, |s| Ok(PathBuf::from(s))).and_then(|path| {
                let origin = v.raw.origin(key.section, key.name);
                (!path.as_os_str().is_empty()).then_some(TlsFile { path, origin, key: key.name })
            })
        };
        let cert = file(self, &keys::TLS_CERT);
        let key = file(self, &keys::TLS_KEY);
        let sni_dir = file(self, &keys::TLS_SNI_DIR);
        let backend_ca = file(self, &keys::TLS_BACKEND_CA);
        let min_version = self.get(&keys::TLS_MIN_VERSION, |s| match s {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(format!("unknown TLS version '{s}' (expected {})", keys::one_of(keys::TLS_VERSIONS))),
        })?;
        let lone = match (&cert, &key) {
            (Some(c), None) => Some((c, "cert without key (set [tls] key or --tls-key)")),
            (None, Some(k)) => Some((k, "key without cert (set [tls] cert or --tls-cert)")),
            _ => None,
        };
        if let Some((f, why)) = lone {
            self.errors.push(ConfigError {
                file: self.raw.file.clone(),
                origin: f.origin.clone(),
                key: format!("[tls] {}", f.key),
                message: why.to_string(),
            });
            return None;
        }
        if sni_dir.is_some() && cert.is_none() {
            let origin = self.raw.origin("tls", "sni_dir");
            self.errors.push(ConfigError {
                file: self.raw.file.clone(),
                origin,
                key: "[tls] sni_dir".to_string(),
                message: "sni_dir needs a default cert and key".to_string(),
            });
            return None;
        }
        Some(TlsSettings { cert, key, sni_dir, min_version, backend_ca })
    }

    fn error(&mut self, s: &Setting, message: String) {
        // A made-up name (`--backend`'s) would only confuse: the value as given says it all.
        let key = match s.origin {
            Origin::Given(_) => String::new(),
            _ => s.label(),
        };
        self.errors.push(ConfigError { file: self.raw.file.clone(), origin: s.origin.clone(), key, message });
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "tcp" => Ok(Mode::Tcp),
        "http" => Ok(Mode::Http),
        "https" | "tls" | "ssl" => Err(format!(
            "unknown mode '{s}' (expected {}); for HTTPS use mode http with [tls] cert and key \
             (--tls-cert and --tls-key), and see scripts/make_cert.sh",
            keys::one_of(keys::MODES)
        )),
        other => Err(format!("unknown mode '{other}' (expected {})", keys::one_of(keys::MODES))),
    }
}

/// An admin token: empty is none; otherwise visible ASCII (it travels in a header), 8 to 256
/// characters, so a one-letter typo of a secret is refused rather than trusted.
fn parse_token(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("the token must be visible ASCII without spaces".to_string());
    }
    if !(8..=256).contains(&s.len()) {
        return Err(format!("the token must be 8 to 256 characters, not {}", s.len()));
    }
    Ok(Some(s.to_string()))
}

fn parse_accept_proxy(s: &str) -> Result<AcceptProxy, String> {
    match s {
        "off" => Ok(AcceptProxy::Off),
        "v1" => Ok(AcceptProxy::V1),
        "v2" => Ok(AcceptProxy::V2),
        "any" => Ok(AcceptProxy::Any),
        _ => {
            Err(format!("unknown accept_proxy '{s}' (expected {})", keys::one_of(keys::ACCEPT_PROXY_CHOICES)))
        }
    }
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        "off" => Ok(LevelFilter::Off),
        _ => Err(format!("unknown log level '{s}' (expected {})", keys::one_of(keys::LEVELS))),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
