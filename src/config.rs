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
//! Keys and defaults:
//!
//! | section | key | default |
//! |---|---|---|
//! | `[proxy]` | `listen` | `0.0.0.0:8080` |
//! | | `mode` | `tcp` (`tcp` or `http`) |
//! | | `algorithm` | `least-connections` (or `round-robin`) |
//! | | `workers` | `1024` |
//! | | `queue` | `1024` (accepted connections waiting for a worker) |
//! | | `log_file` | `logs/proxy.log` (empty: terminal only) |
//! | | `log_level` | `info` |
//! | | `drain_timeout_ms` | `5000` |
//! | `[timeouts]` | `connect_ms` | `2000` |
//! | | `idle_ms` | `60000` (also idle keep-alive client connections) |
//! | | `header_ms` | `10000` (http: a request head must arrive within it) |
//! | | `response_ms` | `60000` (http: the backend's response head must arrive within it) |
//! | `[http]` | `backend_keepalive` | `32` (idle pooled connections per backend) |
//! | | `max_head_bytes` | `65536` |
//! | | `max_body_bytes` | `0` (no limit) |
//! | | `queue_ms` | `3000` (wait for a free slot when every backend is at `max_conns`) |
//! | `[proxy]` | `stats_interval_ms` | `0` (off; else a per-backend summary line this often) |
//! | `[health]` | `enabled` | `true` (active checks) |
//! | | `mode` | the proxy's mode (`tcp`: connect; `http`: `GET path` expecting 2xx/3xx) |
//! | | `path` | `/health` |
//! | | `interval_ms`, `timeout_ms` | `2000`, `1000` |
//! | | `rise`, `fall` | `2`, `3` consecutive results to change state |
//! | | `max_fails`, `fail_window_ms` | `3`, `10000` (live-traffic failures that mark a backend down; 0: off) |
//! | | `observe_5xx` | `false` (count 5xx responses as failures) |
//! | | `slowstart_ms` | `0` (ramp a recovered backend's weight over this long) |
//! | `[admin]` | `listen` | empty: off (e.g. `127.0.0.1:8081` for /stats, /metrics, /health) |
//! | `[backends]` | `name = host:port [weight=N] [max_conns=N]` | none: at least one is required |
//! | | `resolve_ms` | `30000` (how often host names are resolved again) |
//!
//! Comments are whole lines starting with `#` or `;`.

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

/// The default configuration file, looked up in the current directory.
pub const DEFAULT_PATH: &str = "config.ini";

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file (1-based).
    Line(u32),
    /// A command-line flag such as `--workers`.
    Flag(&'static str),
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
}

impl Algorithm {
    /// The name used in the config file, flags and logs.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::LeastConnections => "least-connections",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::RandomTwo => "random-two",
            Algorithm::SourceHash => "source-hash",
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
}

/// Timeouts, named by phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a backend (`connect_ms`, default 2000).
    pub connect: Duration,
    /// No bytes in either direction for this long closes the connection (`idle_ms`, 60000).
    pub idle: Duration,
    /// HTTP: the request head must be complete within this (`header_ms`, 10000).
    pub header: Duration,
    /// HTTP: the backend's response head must arrive within this (`response_ms`, 60000).
    pub response: Duration,
    /// How long a connection or request waits for a slot when every backend is full
    /// (`queue_ms`, 3000).
    pub queue: Duration,
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
}

/// HTTP-mode settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Idle persistent connections kept per backend (`backend_keepalive`, 32).
    pub backend_keepalive: usize,
    /// Largest request head (`max_head_bytes`, 65536); larger gets 431.
    pub max_head_bytes: usize,
    /// Largest request body (`max_body_bytes`, 0 = no limit); larger gets 413.
    pub max_body_bytes: Option<u64>,
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
    pub queue: usize,
    /// `None`: log to the terminal only.
    pub log_file: Option<PathBuf>,
    pub log_level: LevelFilter,
    pub drain_timeout: Duration,
    pub timeouts: Timeouts,
    pub http: HttpSettings,
    pub health: HealthSettings,
    /// Admin listener for /stats, /metrics, /health; `None`: off.
    pub admin: Option<SocketAddr>,
    /// A per-backend summary line this often; `None`: off.
    pub stats_interval: Option<Duration>,
    /// How often DNS names in `[backends]` are resolved again.
    pub resolve_interval: Duration,
    pub backends: Vec<BackendSpec>,
}

impl fmt::Display for Config {
    /// The effective settings, one `key = value` per line, as `--check` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log_file = self.log_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        writeln!(f, "[proxy]")?;
        writeln!(f, "listen = {}", self.listen)?;
        writeln!(f, "mode = {}", if self.mode == Mode::Tcp { "tcp" } else { "http" })?;
        writeln!(f, "algorithm = {}", self.algorithm.name())?;
        writeln!(f, "workers = {}", self.workers)?;
        writeln!(f, "queue = {}", self.queue)?;
        writeln!(f, "log_file = {log_file}")?;
        writeln!(f, "log_level = {}", self.log_level.as_str().to_lowercase())?;
        writeln!(f, "drain_timeout_ms = {}", self.drain_timeout.as_millis())?;
        writeln!(f, "[timeouts]")?;
        writeln!(f, "connect_ms = {}", self.timeouts.connect.as_millis())?;
        writeln!(f, "idle_ms = {}", self.timeouts.idle.as_millis())?;
        writeln!(f, "header_ms = {}", self.timeouts.header.as_millis())?;
        writeln!(f, "response_ms = {}", self.timeouts.response.as_millis())?;
        writeln!(f, "queue_ms = {}", self.timeouts.queue.as_millis())?;
        writeln!(f, "[http]")?;
        writeln!(f, "backend_keepalive = {}", self.http.backend_keepalive)?;
        writeln!(f, "max_head_bytes = {}", self.http.max_head_bytes)?;
        writeln!(f, "max_body_bytes = {}", self.http.max_body_bytes.unwrap_or(0))?;
        let h = &self.health;
        writeln!(f, "[health]")?;
        writeln!(f, "enabled = {}", h.enabled)?;
        writeln!(f, "mode = {}", if h.mode == Mode::Tcp { "tcp" } else { "http" })?;
        writeln!(f, "path = {}", h.path)?;
        writeln!(f, "interval_ms = {}", h.interval.as_millis())?;
        writeln!(f, "timeout_ms = {}", h.timeout.as_millis())?;
        writeln!(f, "rise = {}", h.rise)?;
        writeln!(f, "fall = {}", h.fall)?;
        writeln!(f, "max_fails = {}", h.max_fails)?;
        writeln!(f, "fail_window_ms = {}", h.fail_window.as_millis())?;
        writeln!(f, "observe_5xx = {}", h.observe_5xx)?;
        writeln!(f, "slowstart_ms = {}", h.slowstart.as_millis())?;
        writeln!(f, "[admin]")?;
        writeln!(f, "listen = {}", self.admin.map(|a| a.to_string()).unwrap_or_default())?;
        writeln!(f, "[backends]")?;
        writeln!(f, "resolve_ms = {}", self.resolve_interval.as_millis())?;
        for b in &self.backends {
            let addrs: Vec<String> = b.addrs.iter().map(|a| a.to_string()).collect();
            write!(f, "{} = {} weight={}", b.name, b.target, b.weight)?;
            if b.max_conns > 0 {
                write!(f, " max_conns={}", b.max_conns)?;
            }
            writeln!(f, " ({})", addrs.join(", "))?;
        }
        Ok(())
    }
}

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "proxy",
        &[
            "listen",
            "mode",
            "algorithm",
            "workers",
            "queue",
            "log_file",
            "log_level",
            "drain_timeout_ms",
            "stats_interval_ms",
        ],
    ),
    ("timeouts", &["connect_ms", "idle_ms", "header_ms", "response_ms", "queue_ms"]),
    (
        "health",
        &[
            "enabled",
            "mode",
            "path",
            "interval_ms",
            "timeout_ms",
            "rise",
            "fall",
            "max_fails",
            "fail_window_ms",
            "observe_5xx",
            "slowstart_ms",
        ],
    ),
    ("admin", &["listen"]),
    ("http", &["backend_keepalive", "max_head_bytes", "max_body_bytes"]),
    ("backends", &[]),
];

#[derive(Debug, Clone)]
struct Setting {
    section: &'static str,
    key: String,
    value: String,
    origin: Origin,
}

/// Settings as written, before their values are checked.
#[derive(Debug, Clone)]
pub struct RawConfig {
    file: String,
    settings: Vec<Setting>,
    errors: Vec<ConfigError>,
}

impl RawConfig {
    /// Reads the file at `path`. A missing or unreadable file is an error naming it.
    pub fn load(path: &Path) -> Result<RawConfig, Vec<ConfigError>> {
        let file = path.display().to_string();
        let opened = std::fs::File::open(path).map_err(|e| {
            vec![ConfigError {
                file: file.clone(),
                origin: Origin::File,
                key: String::new(),
                message: format!("cannot read configuration: {e}"),
            }]
        })?;
        RawConfig::parse(opened, &file)
    }

    /// Parses INI text. Syntax problems are kept and reported by [`RawConfig::validate`]
    /// together with value problems; only unreadable input fails here.
    pub fn parse(mut reader: impl Read, file: &str) -> Result<RawConfig, Vec<ConfigError>> {
        let mut text = String::new();
        if let Err(e) = reader.read_to_string(&mut text) {
            return Err(vec![ConfigError {
                file: file.to_string(),
                origin: Origin::File,
                key: String::new(),
                message: format!("cannot read configuration: {e}"),
            }]);
        }
        // ini_core counts a line when it reads its newline; give the last line one.
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut raw = RawConfig { file: file.to_string(), settings: Vec::new(), errors: Vec::new() };
        let mut section: Option<&'static str> = None;
        let mut in_unknown_section = false;
        let mut parser = ini_core::Parser::new(&text).comment_char(b'#').auto_trim(true);
        while let Some(item) = parser.next() {
            let line = parser.line();
            match item {
                ini_core::Item::Section(name) => {
                    let name = name.trim();
                    section = SECTIONS.iter().find(|(s, _)| *s == name).map(|(s, _)| *s);
                    in_unknown_section = section.is_none();
                    if in_unknown_section {
                        raw.error_at(line, "", format!("unknown section [{name}]"));
                    }
                }
                ini_core::Item::Error(text) => {
                    raw.error_at(line, "", format!("malformed section header '{text}'"));
                }
                ini_core::Item::Property(key, _) if key.starts_with(';') => {}
                ini_core::Item::Property(key, value) => {
                    if in_unknown_section {
                        continue;
                    }
                    let Some(sec) = section else {
                        raw.error_at(line, key, "setting outside of any [section]".to_string());
                        continue;
                    };
                    let Some(value) = value else {
                        raw.error_at(line, key, "expected 'key = value'".to_string());
                        continue;
                    };
                    raw.add(sec, key.trim(), strip_inline_comment(value).trim(), Origin::Line(line));
                }
                _ => {}
            }
        }
        Ok(raw)
    }

    fn error_at(&mut self, line: u32, key: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            origin: Origin::Line(line),
            key: key.to_string(),
            message,
        });
    }

    fn add(&mut self, section: &'static str, key: &str, value: &str, origin: Origin) {
        let label = format!("[{section}] {key}");
        let known = SECTIONS.iter().find(|(s, _)| *s == section).map(|(_, keys)| *keys);
        if section != "backends" && !known.is_some_and(|keys| keys.contains(&key)) {
            let message = format!("unknown key '{key}' in [{section}]");
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: label, message });
            return;
        }
        if let Some(first) = self.settings.iter().find(|s| s.section == section && s.key == key) {
            let message = match first.origin {
                Origin::Line(l) => format!("repeated (first set at line {l})"),
                _ => "repeated".to_string(),
            };
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: label, message });
            return;
        }
        self.settings.push(Setting { section, key: key.to_string(), value: value.to_string(), origin });
    }

    /// Overrides `[section] key` with a command-line flag's value.
    pub fn set_flag(&mut self, section: &'static str, key: &str, value: &str, flag: &'static str) {
        self.settings.retain(|s| !(s.section == section && s.key == key));
        self.add(section, key, value, Origin::Flag(flag));
    }

    /// Replaces the file's backends with `--backend` values, named `app1`, `app2`, ...
    pub fn set_backends(&mut self, targets: &[String]) {
        self.settings.retain(|s| s.section != "backends");
        for (i, target) in targets.iter().enumerate() {
            self.add("backends", &format!("app{}", i + 1), target, Origin::Flag("--backend"));
        }
    }

    /// Checks every value and returns the typed configuration, or every problem found.
    pub fn validate(&self) -> Result<Config, Vec<ConfigError>> {
        let mut v = Validator { raw: self, errors: self.errors.clone() };
        let listen =
            v.get("proxy", "listen", SocketAddr::from(([0, 0, 0, 0], 8080)), |s| parse_socket_addr(s, true));
        let mode = v.get("proxy", "mode", Mode::Tcp, parse_mode);
        let algorithm = v.get("proxy", "algorithm", Algorithm::LeastConnections, parse_algorithm);
        let workers = v.get("proxy", "workers", 1024, |s| parse_number(s, 1, 20_000));
        let queue = v.get("proxy", "queue", 1024, |s| parse_number(s, 1, 1_000_000));
        let log_file = v.get("proxy", "log_file", Some(PathBuf::from("logs/proxy.log")), |s| {
            Ok((!s.is_empty()).then(|| PathBuf::from(s)))
        });
        let log_level = v.get("proxy", "log_level", LevelFilter::Info, parse_level);
        let drain_timeout = v.get("proxy", "drain_timeout_ms", ms(5000), parse_millis);
        let stats_interval = v.get("proxy", "stats_interval_ms", ms(0), parse_millis);
        let timeouts = Timeouts {
            connect: v.get("timeouts", "connect_ms", ms(2000), parse_millis),
            idle: v.get("timeouts", "idle_ms", ms(60_000), parse_millis),
            header: v.get("timeouts", "header_ms", ms(10_000), parse_millis),
            response: v.get("timeouts", "response_ms", ms(60_000), parse_millis),
            queue: v.get("timeouts", "queue_ms", ms(3000), parse_millis),
        };
        let max_body = v.get("http", "max_body_bytes", 0, |s| parse_number(s, 0, u64::MAX >> 1));
        let http = HttpSettings {
            backend_keepalive: v.get("http", "backend_keepalive", 32, |s| parse_number(s, 0, 10_000))
                as usize,
            max_head_bytes: v.get("http", "max_head_bytes", 65536, |s| parse_number(s, 1024, 1 << 20))
                as usize,
            max_body_bytes: (max_body > 0).then_some(max_body),
        };
        let health = HealthSettings {
            enabled: v.get("health", "enabled", true, parse_bool),
            mode: v.get("health", "mode", mode, parse_mode),
            path: v.get("health", "path", "/health".to_string(), |s| {
                if s.starts_with('/') && s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    Ok(s.to_string())
                } else {
                    Err(format!("'{s}' is not a request path (expected e.g. /health)"))
                }
            }),
            interval: v.get("health", "interval_ms", ms(2000), |s| parse_number(s, 10, 3_600_000).map(ms)),
            timeout: v.get("health", "timeout_ms", ms(1000), |s| parse_number(s, 1, 600_000).map(ms)),
            rise: v.get("health", "rise", 2, |s| parse_number(s, 1, 100)) as u32,
            fall: v.get("health", "fall", 3, |s| parse_number(s, 1, 100)) as u32,
            max_fails: v.get("health", "max_fails", 3, |s| parse_number(s, 0, 1000)) as u32,
            fail_window: v.get("health", "fail_window_ms", ms(10_000), parse_millis),
            observe_5xx: v.get("health", "observe_5xx", false, parse_bool),
            slowstart: v.get("health", "slowstart_ms", ms(0), parse_millis),
        };
        let admin = v.get("admin", "listen", None, |s| {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_socket_addr(s, true).map(Some)
            }
        });
        let resolve_interval =
            v.get("backends", "resolve_ms", ms(30_000), |s| parse_number(s, 100, 86_400_000).map(ms));
        let mut backends = Vec::new();
        for s in self.settings.iter().filter(|s| s.section == "backends" && s.key != "resolve_ms") {
            match parse_backend(&s.key, &s.value) {
                Ok(b) => backends.push(b),
                Err(message) => v.error(s, message),
            }
        }
        if backends.is_empty() && !v.errors.iter().any(|e| e.key.starts_with("[backends]")) {
            v.errors.push(ConfigError {
                file: self.file.clone(),
                origin: Origin::File,
                key: "[backends]".to_string(),
                message: "no backends configured (add 'name = host:port' lines or --backend)".to_string(),
            });
        }
        let mut errors = v.errors;
        if !errors.is_empty() {
            errors.sort_by_key(|e| match e.origin {
                Origin::Line(l) => (0, l),
                Origin::Flag(_) => (1, 0),
                Origin::File => (2, 0),
            });
            return Err(errors);
        }
        Ok(Config {
            file: self.file.clone(),
            listen,
            mode,
            algorithm,
            workers: workers as usize,
            queue: queue as usize,
            log_file,
            log_level,
            drain_timeout,
            timeouts,
            http,
            health,
            admin,
            stats_interval: (!stats_interval.is_zero()).then_some(stats_interval),
            resolve_interval,
            backends,
        })
    }
}

struct Validator<'a> {
    raw: &'a RawConfig,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// The value of `[section] key` parsed by `parse`; `default` when absent. A bad value is
    /// recorded as an error (and `default` stands in so validation can go on).
    fn get<T>(
        &mut self,
        section: &'static str,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let setting = self.raw.settings.iter().find(|s| s.section == section && s.key == key);
        match setting {
            None => default,
            Some(s) => match parse(&s.value) {
                Ok(v) => v,
                Err(message) => {
                    self.error(s, message);
                    default
                }
            },
        }
    }

    fn error(&mut self, s: &Setting, message: String) {
        self.errors.push(ConfigError {
            file: self.raw.file.clone(),
            origin: s.origin.clone(),
            key: format!("[{}] {}", s.section, s.key),
            message,
        });
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "tcp" => Ok(Mode::Tcp),
        "http" => Ok(Mode::Http),
        other => Err(format!("unknown mode '{other}' (expected tcp or http)")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got '{s}'")),
    }
}

/// Drops a trailing comment: `#` or `;` after whitespace (`workers = 64  # for tests`).
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    (1..bytes.len())
        .find(|&i| (bytes[i] == b'#' || bytes[i] == b';') && bytes[i - 1].is_ascii_whitespace())
        .map_or(value, |i| &value[..i])
}

fn parse_number(s: &str, min: u64, max: u64) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range ({min}..={max})")),
        Err(_) => Err(format!("expected a whole number, got '{s}'")),
    }
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    parse_number(s, 0, 86_400_000).map(Duration::from_millis)
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s {
        "least-connections" | "leastconn" => Ok(Algorithm::LeastConnections),
        "round-robin" | "roundrobin" => Ok(Algorithm::RoundRobin),
        "random-two" => Ok(Algorithm::RandomTwo),
        "source-hash" => Ok(Algorithm::SourceHash),
        other => Err(format!(
            "unknown algorithm '{other}' (expected least-connections, round-robin, random-two or source-hash)"
        )),
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
        _ => Err(format!("unknown log level '{s}' (expected error, warn, info, debug, trace or off)")),
    }
}

/// Splits `host:port` (or `[v6]:port`), checking the port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.starts_with('[')) => (h, p),
        _ => return Err(format!("'{s}' has no port (expected host:port)")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(p) => Ok((host, p)),
        Err(_) => Err(format!("invalid port '{port}' in '{s}' (expected 0..=65535)")),
    }
}

/// Resolves `host:port` to its first address; `allow_zero` permits port 0 (any free port).
pub fn parse_socket_addr(s: &str, allow_zero: bool) -> Result<SocketAddr, String> {
    parse_target(s, allow_zero).map(|(_, _, addrs)| addrs[0])
}

/// Splits and resolves `host:port`: the host, the port, and every address (at least one).
fn parse_target(s: &str, allow_zero: bool) -> Result<(&str, u16, Vec<SocketAddr>), String> {
    let (host, port) = split_host_port(s)?;
    if port == 0 && !allow_zero {
        return Err(format!("port 0 is not a valid port in '{s}'"));
    }
    Ok((host, port, resolve(host, port)?))
}

/// A timeout setting as a socket timeout: 0 means no limit.
pub fn as_limit(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn parse_backend(name: &str, value: &str) -> Result<BackendSpec, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("invalid backend name '{name}' (letters, digits, '-', '_', '.')"));
    }
    let mut words = value.split_whitespace();
    let target = words.next().ok_or("missing address (expected host:port)")?;
    let (host, port, addrs) = parse_target(target, false)?;
    let mut weight = 1;
    let mut max_conns = 0;
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let option = word.split_once('=').map_or(word, |(k, _)| k);
        if seen.contains(&option) {
            return Err(format!("option '{option}' given twice"));
        }
        seen.push(option);
        match word.split_once('=') {
            Some(("weight", w)) => weight = parse_number(w, 1, 1000)? as u32,
            Some(("max_conns", m)) => max_conns = parse_number(m, 0, 1_000_000)? as usize,
            _ => return Err(format!("unknown backend option '{word}' (expected weight=N or max_conns=N)")),
        }
    }
    Ok(BackendSpec {
        name: name.to_string(),
        target: target.to_string(),
        host: host.to_string(),
        port,
        dns: host.parse::<std::net::IpAddr>().is_err(),
        addrs,
        weight,
        max_conns,
    })
}

/// Every address `host` resolves to, in the resolver's order, without duplicates.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve '{host}': {e}"))? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("'{host}' has no address"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        RawConfig::parse(text.as_bytes(), "test.ini").and_then(|raw| raw.validate())
    }

    fn messages(text: &str) -> Vec<String> {
        parse(text).expect_err("config should be rejected").iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let c = parse("[backends]\napp1 = 127.0.0.1:9090\n").expect("valid");
        assert_eq!(c.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(c.algorithm, Algorithm::LeastConnections);
        assert_eq!(c.workers, 1024);
        assert_eq!(c.timeouts.connect, Duration::from_millis(2000));
        assert_eq!(c.backends[0].weight, 1);
    }

    #[test]
    fn every_error_is_reported_with_its_line_and_key() {
        let text = "# comment\n[proxy]\nlisten = 127.0.0.1:99999\nalgorithm = fastest\n\
                    colour = blue\n[backends]\napp1 = 127.0.0.1\napp2 = 127.0.0.1:9091 weight=0\n";
        let errs = messages(text);
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs[0].starts_with("test.ini:3: [proxy] listen: invalid port"), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("test.ini:5: [proxy] colour: unknown key")));
        assert!(errs.iter().any(|e| e.starts_with("test.ini:4: [proxy] algorithm: unknown")));
        assert!(errs.iter().any(|e| e.contains("test.ini:7: [backends] app1: '127.0.0.1' has no port")));
        assert!(errs.iter().any(|e| e.contains("test.ini:8: [backends] app2: 0 is out of range")));
    }

    #[test]
    fn syntax_errors_and_unknown_sections_are_named() {
        let errs = messages("[proxy\nworkers\n[cache]\nsize = 1\n[timeouts]\nidle_ms = 5\nidle_ms = 6\n");
        assert!(errs.iter().any(|e| e.starts_with("test.ini:1: malformed section")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("test.ini:2: workers: setting outside")));
        assert!(errs.iter().any(|e| e.starts_with("test.ini:3: unknown section [cache]")));
        assert!(errs.iter().any(|e| e.contains("test.ini:7: [timeouts] idle_ms: repeated")));
        assert!(errs.iter().any(|e| e.contains("no backends configured")));
    }

    #[test]
    fn flags_override_the_file_and_are_named_in_errors() {
        let mut raw = RawConfig::parse(&b"[proxy]\nworkers = 8\n[backends]\na = 127.0.0.1:1\n"[..], "f")
            .expect("parse");
        raw.set_flag("proxy", "workers", "16", "--workers");
        raw.set_backends(&["127.0.0.1:2".to_string(), "127.0.0.1:3".to_string()]);
        let c = raw.validate().expect("valid");
        assert_eq!(c.workers, 16);
        let names: Vec<_> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["app1", "app2"]);
        raw.set_flag("proxy", "workers", "lots", "--workers");
        let errs = raw.validate().expect_err("bad flag");
        assert_eq!(errs[0].to_string(), "--workers: [proxy] workers: expected a whole number, got 'lots'");
    }

    #[test]
    fn inline_comments_repeated_options_and_new_sections() {
        let c = parse(
            "[proxy]\nworkers = 64  # small\nalgorithm = source-hash ; sticky\n[health]\nrise = 5\n\
             [admin]\nlisten = 127.0.0.1:0\n[backends]\nresolve_ms = 500\nweb = localhost:80 weight=2 max_conns=9\n",
        )
        .expect("valid");
        assert_eq!((c.workers, c.algorithm, c.health.rise), (64, Algorithm::SourceHash, 5));
        assert_eq!(c.resolve_interval, Duration::from_millis(500));
        assert!(c.admin.is_some());
        let web = &c.backends[0];
        assert!(web.dns && !web.addrs.is_empty());
        assert_eq!((web.weight, web.max_conns), (2, 9));
        let errs = messages("[backends]\na = 127.0.0.1:1 weight=2 weight=3\n");
        assert!(errs[0].contains("option 'weight' given twice"), "{errs:?}");
        let errs = messages("[health]\nfall = 0\nmode = udp\n[backends]\na = 127.0.0.1:1\n");
        assert!(errs[0].contains("[health] fall: 0 is out of range"), "{errs:?}");
        assert!(errs[1].contains("[health] mode: unknown mode 'udp'"), "{errs:?}");
    }

    #[test]
    fn ipv6_and_host_names_resolve() {
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", 80)));
        assert!(split_host_port("::1").is_err());
        assert!(parse_socket_addr("localhost:9090", false).is_ok());
        assert!(parse_socket_addr("127.0.0.1:0", false).is_err());
    }
}
