//! Routing settings: `[pool.NAME]` and `[route.NAME]` sections -> [`PoolSpec`]s and
//! [`RouteSpec`]s, every bad value named by its line, as the rest of stage two does.

use std::collections::{HashMap, HashSet};

use super::raw::{Block, RawConfig, Setting};
use super::values::{
    parse_algorithm, parse_backend, parse_bool, parse_header_name, parse_path, parse_prefix, parse_sticky,
};
use super::{Algorithm, BackendSpec, ConfigError, Mode, Origin};

/// A host or SNI pattern, matched case-insensitively without the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com`, lowercased.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (at any depth, as nginx's
    /// `server_name *.example.com`); holds `.example.com`, lowercased.
    Suffix(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// Header rules of one direction, applied in this order: delete, set (replace or add), add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub del: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

impl HeaderRules {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.del.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// `redirect = CODE URL`: the answer, its `Location` a template with `{host}`, `{uri}`,
/// `{path}` and `{query}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: u16,
    pub location: String,
}

/// What a matching route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Proxies to the pool of this name (`default` is `[backends]`).
    Pool(String),
    /// Answers with a redirect, without proxying.
    Redirect(Redirect),
}

/// One `[route.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: String,
    pub line: u32,
    pub host: Option<HostPattern>,
    /// A path prefix on segment boundaries, without a trailing `/` (except `/` itself).
    pub path: Option<String>,
    pub sni: Option<HostPattern>,
    pub action: RouteAction,
    pub strip_prefix: bool,
    pub request: HeaderRules,
    pub response: HeaderRules,
}

impl RouteSpec {
    /// What it matches, as the decision line says: `host api.example.com, path /api`, or
    /// `any request`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path {p}"));
        }
        if let Some(s) = &self.sni {
            parts.push(format!("sni {s}"));
        }
        if parts.is_empty() {
            "any request".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl std::fmt::Display for RouteAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteAction::Pool(p) => write!(f, "pool {p}"),
            RouteAction::Redirect(r) => write!(f, "redirect {} {}", r.status, r.location),
        }
    }
}

/// One `[pool.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub line: u32,
    pub algorithm: Algorithm,
    /// The pool's own `[health] path`, if it has one.
    pub health_path: Option<String>,
    /// `sticky = cookie NAME`: the cookie's name, if sticky.
    pub sticky: Option<String>,
    pub backends: Vec<BackendSpec>,
}

/// The name of the pool of `[backends]`.
pub const DEFAULT_POOL: &str = "default";

/// Headers no rule may name: framing and hop-by-hop headers, which would desynchronise the
/// exchange, and the proxy's own (`X-Request-ID`, `X-Forwarded-For`, `X-Forwarded-Proto`, and
/// on responses `Via`), which the proxy sets after the rules, so a rule could never change them.
const RESERVED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
];

/// The pools and routes of `raw`, checked; problems go to `errors`, a pool no route can reach
/// to `warnings`. `backends` is the default pool (`[backends]`).
pub(super) fn read(
    raw: &RawConfig,
    mode: Option<Mode>,
    algorithm: Option<Algorithm>,
    backends: &[(BackendSpec, Origin)],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> (Vec<PoolSpec>, Vec<RouteSpec>) {
    let error = |errors: &mut Vec<ConfigError>, s: &Setting, message: String| {
        errors.push(ConfigError { file: raw.file.clone(), origin: s.origin.clone(), key: s.label(), message })
    };
    let at = |errors: &mut Vec<ConfigError>, b: &Block, message: String| {
        errors.push(ConfigError {
            file: raw.file.clone(),
            origin: Origin::Line(b.line),
            key: format!("[{}.{}]", b.kind, b.name),
            message,
        })
    };
    // Each block's settings, gathered in one pass (thousands of routes stay linear).
    let mut by_block: HashMap<(&str, &str), Vec<&Setting>> = HashMap::new();
    for s in raw.settings.iter().filter(|s| !s.block.is_empty()) {
        by_block.entry((s.section, s.block.as_str())).or_default().push(s);
    }
    let in_block = |b| settings_of(&by_block, b);
    // Backend names are unique across pools, so logs and the admin API stay unambiguous.
    let mut names: HashMap<String, String> = HashMap::new();
    let shown = |o: &Origin| match o {
        Origin::Line(l) => format!("line {l}"),
        _ => "[backends]".to_string(),
    };
    for (b, origin) in backends {
        names.insert(b.name.clone(), shown(origin));
    }
    let mut pools = Vec::new();
    for block in raw.blocks.iter().filter(|b| b.kind == "pool") {
        let mut pool = PoolSpec {
            name: block.name.clone(),
            line: block.line,
            algorithm: algorithm.unwrap_or(Algorithm::LeastConnections),
            health_path: None,
            sticky: None,
            backends: Vec::new(),
        };
        for s in in_block(block) {
            match s.key.as_str() {
                "algorithm" => match parse_algorithm(&s.value) {
                    Ok(Algorithm::HeaderHash) if mode == Some(Mode::Tcp) => {
                        error(errors, s, "header-hash hashes an HTTP request header: it needs mode = http".into())
                    }
                    Ok(a) => pool.algorithm = a,
                    Err(m) => error(errors, s, m),
                },
                "health_path" => match parse_path(&s.value) {
                    Ok(p) => pool.health_path = Some(p),
                    Err(m) => error(errors, s, m),
                },
                "sticky" => match parse_sticky(&s.value) {
                    Ok(Some(_)) if mode == Some(Mode::Tcp) => error(
                        errors,
                        s,
                        "sticky cookies need mode = http (in tcp mode use algorithm = source-hash)".into(),
                    ),
                    Ok(name) => pool.sticky = name,
                    Err(m) => error(errors, s, m),
                },
                name => match parse_backend(name, &s.value) {
                    Ok(b) => match names.get(&b.name) {
                        Some(first) => error(
                            errors,
                            s,
                            format!("backend name '{name}' is already used at {first}; names are unique across pools"),
                        ),
                        None => {
                            names.insert(b.name.clone(), shown(&s.origin));
                            pool.backends.push(b);
                        }
                    },
                    Err(m) => error(errors, s, m),
                },
            }
        }
        if pool.backends.is_empty()
            && !errors.iter().any(|e| e.key.starts_with(&format!("[pool.{}]", block.name)))
        {
            at(errors, block, "a pool needs at least one member ('name = host:port')".to_string());
        }
        pools.push(pool);
    }
    let mut routes = Vec::new();
    for block in raw.blocks.iter().filter(|b| b.kind == "route") {
        let before = errors.len();
        let mut route = RouteSpec {
            name: block.name.clone(),
            line: block.line,
            host: None,
            path: None,
            sni: None,
            action: RouteAction::Pool(String::new()),
            strip_prefix: false,
            request: HeaderRules::default(),
            response: HeaderRules::default(),
        };
        let (mut pool, mut redirect, mut redirect_given) = (None, None, false);
        for s in in_block(block) {
            let (key, header) = s.key.split_once('.').map_or((s.key.as_str(), None), |(k, h)| (k, Some(h)));
            let result = match (key, header) {
                ("host", None) => parse_host(&s.value, false).map(|h| route.host = Some(h)),
                ("sni", None) => parse_host(&s.value, true).map(|h| route.sni = Some(h)),
                ("path", None) => parse_prefix(&s.value).map(|p| route.path = Some(p)),
                ("strip_prefix", None) => parse_bool(&s.value).map(|b| route.strip_prefix = b),
                ("pool", None) => {
                    pool = Some((s.value.clone(), s));
                    Ok(())
                }
                ("redirect", None) => {
                    redirect_given = true;
                    parse_redirect(&s.value).map(|r| redirect = Some(r))
                }
                ("del_request_header" | "del_response_header", None) => {
                    let rules =
                        if key.contains("request") { &mut route.request } else { &mut route.response };
                    s.value.split(',').map(str::trim).try_for_each(|n| {
                        let n = rule_header(n, key)?;
                        rules.del.push(n);
                        Ok(())
                    })
                }
                (
                    "set_request_header"
                    | "add_request_header"
                    | "set_response_header"
                    | "add_response_header",
                    Some(h),
                ) => {
                    let request = key.contains("request");
                    rule_header(h, key).and_then(|name| {
                        if s.value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                            return Err("a header value cannot hold control characters".to_string());
                        }
                        let rules = if request { &mut route.request } else { &mut route.response };
                        let list = if key.starts_with("set") { &mut rules.set } else { &mut rules.add };
                        list.push((name, s.value.clone()));
                        Ok(())
                    })
                }
                (_, None) => Err(format!("'{key}' needs a header name: {key}.NAME = value")),
                (_, Some(_)) => Err(format!("'{key}' takes no header name: {key} = NAME, NAME")),
            };
            if let Err(m) = result {
                error(errors, s, m);
            }
        }
        match (pool, redirect) {
            (Some((name, s)), None) => {
                if name == "default" && backends.is_empty() {
                    error(errors, s, "the default pool ([backends]) has no members".to_string());
                } else if name != "default" && !pools.iter().any(|p: &PoolSpec| p.name == name) {
                    let known: Vec<&str> =
                        ["default"].into_iter().chain(pools.iter().map(|p| p.name.as_str())).collect();
                    error(errors, s, format!("unknown pool '{name}' (pools: {})", known.join(", ")));
                }
                route.action = RouteAction::Pool(name);
            }
            (None, Some(r)) => route.action = RouteAction::Redirect(r),
            (Some((_, s)), Some(_)) => {
                error(errors, s, "a route has either pool or redirect, not both".into())
            }
            // A redirect was given but did not parse: that has its own error already.
            (None, None) if redirect_given => {}
            (None, None) => at(errors, block, "a route needs 'pool = NAME' or 'redirect = ...'".to_string()),
        }
        let http_only = route.host.is_some()
            || route.path.is_some()
            || route.strip_prefix
            || !route.request.is_empty()
            || !route.response.is_empty()
            || matches!(route.action, RouteAction::Redirect(_));
        if route.sni.is_some() && http_only {
            at(errors, block, "sni routes TLS in tcp mode; host, path, header rules and redirects are http-only: don't mix them".into());
        } else if route.sni.is_some() && mode == Some(Mode::Http) {
            at(
                errors,
                block,
                "sni routes TLS without terminating it: it needs mode = tcp (in http mode route by host)"
                    .into(),
            );
        } else if route.sni.is_none() && mode == Some(Mode::Tcp) {
            at(errors, block, "in tcp mode a route needs sni (the default pool takes the rest)".into());
        } else if http_only && mode == Some(Mode::Tcp) {
            at(
                errors,
                block,
                "host, path, header rules and redirects need mode = http (in tcp mode route by sni)".into(),
            );
        }
        if route.strip_prefix && route.path.is_none() {
            at(errors, block, "strip_prefix needs a path".to_string());
        }
        if errors.len() == before {
            routes.push(route);
        }
    }
    let routed: HashSet<&str> = routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Pool(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for p in &pools {
        if !routed.contains(p.name.as_str()) {
            warnings.push(ConfigError {
                file: raw.file.clone(),
                origin: Origin::Line(p.line),
                key: format!("[pool.{}]", p.name),
                message: "no route sends requests to this pool".to_string(),
            });
        }
    }
    (pools, routes)
}

/// `api.example.com`, `*.example.com`, or an IP address (IPv6 as `[::1]` or `::1`, matched in
/// its brackets, as a `Host` carries it); for an `sni`, never an address (RFC 6066 3).
fn parse_host(s: &str, sni: bool) -> Result<HostPattern, String> {
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    let v6 = inner.parse::<std::net::Ipv6Addr>();
    if sni && (v6.is_ok() || s.parse::<std::net::Ipv4Addr>().is_ok()) {
        return Err(format!("'{s}' is an IP address, which a TLS server name never is"));
    }
    if let Ok(v6) = v6 {
        return Ok(HostPattern::Exact(format!("[{v6}]")));
    }
    let lower = s.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.is_empty() || !name.split('.').all(label) {
        return Err(format!("'{s}' is not a host name, *.domain pattern or IP address"));
    }
    Ok(if suffix { HostPattern::Suffix(format!(".{name}")) } else { HostPattern::Exact(name.to_string()) })
}

/// A header name the rule `key` may use (see [`RESERVED`]); a request's `Host` may be set
/// (nginx's `proxy_set_header Host`), not added or deleted.
fn rule_header(name: &str, key: &str) -> Result<String, String> {
    let name = parse_header_name(name)?;
    if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        return Err(format!("'{name}' is framing or the proxy's own header; no rule may change it"));
    }
    if name.eq_ignore_ascii_case("host") && key != "set_request_header" && key.contains("request") {
        return Err("a request's Host can be replaced (set_request_header.Host), not added or deleted".into());
    }
    Ok(name)
}

/// `CODE URL` or `https` (308 to `https://{host}{uri}`).
fn parse_redirect(s: &str) -> Result<Redirect, String> {
    if s.eq_ignore_ascii_case("https") {
        return Ok(Redirect { status: 308, location: "https://{host}{uri}".to_string() });
    }
    let (code, location) = s.split_once(char::is_whitespace).ok_or("expected 'CODE URL' or 'https'")?;
    let status = match code.parse::<u16>() {
        Ok(c @ (301 | 302 | 303 | 307 | 308)) => c,
        _ => return Err(format!("redirect code '{code}' is not one of 301, 302, 303, 307, 308")),
    };
    let location = location.trim();
    if location.is_empty() || location.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err("the redirect target must be visible ASCII without spaces".to_string());
    }
    let mut rest = location;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or("unclosed '{' in the redirect target")?;
        let name = &rest[open + 1..open + close];
        if !matches!(name, "host" | "uri" | "path" | "query") {
            return Err(format!(
                "unknown placeholder {{{name}}} (expected {{host}}, {{uri}}, {{path}} or {{query}})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(Redirect { status, location: location.to_string() })
}

/// A block's settings, from those gathered by block.
fn settings_of<'a>(by_block: &'a HashMap<(&str, &str), Vec<&'a Setting>>, b: &'a Block) -> &'a [&'a Setting] {
    by_block.get(&(b.kind, b.name.as_str())).map_or(&[], Vec::as_slice)
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
