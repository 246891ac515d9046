//! Parsers of single values shared by stage two's readers (`validate.rs` and the routing
//! sections'): booleans, paths, numbers, algorithms, header names and backend lines.

use super::keys;
use super::{Algorithm, BackendSpec, ProxyVersion};
use crate::net::addr;

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got '{s}'")),
    }
}

/// `502, 503, 504`: HTTP error statuses (400..=599), comma- or space-separated; empty: none.
pub(super) fn parse_statuses(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for word in s.split([',', ' ']).filter(|w| !w.is_empty()) {
        match word.parse::<u16>() {
            Ok(n) if (400..=599).contains(&n) => {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            _ => return Err(format!("'{word}' is not an HTTP error status (400 to 599)")),
        }
    }
    Ok(out)
}

pub(super) fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not a request path (expected e.g. /health)"))
    }
}

pub(super) fn parse_number(s: &str, min: u64, max: u64) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range ({min}..={max})")),
        Err(_) => Err(format!("expected a whole number, got '{s}'")),
    }
}

pub(super) fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    match s {
        "least-connections" | "leastconn" => Ok(Algorithm::LeastConnections),
        "round-robin" | "roundrobin" => Ok(Algorithm::RoundRobin),
        "random-two" => Ok(Algorithm::RandomTwo),
        "source-hash" => Ok(Algorithm::SourceHash),
        "header-hash" => Ok(Algorithm::HeaderHash),
        "least-time" => Ok(Algorithm::LeastTime),
        other => Err(format!("unknown algorithm '{other}' (expected {})", keys::one_of(keys::ALGORITHMS))),
    }
}

/// A header name: an RFC 9110 token.
pub(super) fn parse_header_name(s: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(tchar) {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not a header name"))
    }
}

pub(super) fn parse_backend(name: &str, value: &str) -> Result<BackendSpec, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("invalid backend name '{name}' (letters, digits, '-', '_', '.')"));
    }
    let mut words = value.split_whitespace();
    let target = words.next().ok_or("missing address (expected host:port)")?;
    let (host, port, addrs) = addr::parse_target(target, false)?;
    let mut weight = 1;
    let mut max_conns = 0;
    let mut tls = false;
    let mut sni = None;
    let mut send_proxy = None;
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let option = word.split_once('=').map_or(word, |(k, _)| k);
        if seen.contains(&option) {
            return Err(format!("option '{option}' given twice"));
        }
        seen.push(option);
        match word.split_once('=') {
            Some(("weight", w)) => weight = parse_number(w, 1, u64::from(super::MAX_WEIGHT))? as u32,
            Some(("max_conns", m)) => max_conns = parse_number(m, 0, 1_000_000)? as usize,
            Some(("sni", n)) if rustls_name_ok(n) => sni = Some(n.to_string()),
            Some(("sni", n)) => return Err(format!("'{n}' is not a server name for sni=")),
            None if word == "tls" => tls = true,
            Some(("send_proxy", "v1")) => send_proxy = Some(ProxyVersion::V1),
            Some(("send_proxy", "v2")) => send_proxy = Some(ProxyVersion::V2),
            Some(("send_proxy", v)) => return Err(format!("send_proxy={v}: expected v1 or v2")),
            _ => {
                return Err(format!(
                    "unknown backend option '{word}' (expected weight=N, max_conns=N, tls, sni=NAME or send_proxy=v1|v2)"
                ))
            }
        }
    }
    Ok(BackendSpec {
        name: name.to_string(),
        target: target.to_string(),
        host: host.to_string(),
        port,
        dns: !crate::net::addr::is_ip_literal(host),
        addrs,
        weight,
        max_conns,
        tls: match (tls, sni) {
            (true, sni) => Some(sni.unwrap_or_else(|| host.to_string())),
            (false, None) => None,
            (false, Some(_)) => return Err("sni= needs tls".to_string()),
        },
        send_proxy,
    })
}

/// A DNS name or IP literal that TLS can send and verify.
pub(super) fn rustls_name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 253 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
}

/// `N/s` or `N/m`.
pub(super) fn parse_rate(s: &str) -> Result<Option<(u32, std::time::Duration)>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || format!("'{s}' is not a rate (expected N/s or N/m, e.g. 100/s)");
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "s" => std::time::Duration::from_secs(1),
        "m" => std::time::Duration::from_secs(60),
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err("a rate of 0 would refuse everyone (leave rate empty for no limit)".to_string());
    }
    Ok(Some((n, per)))
}

/// A list of addresses and CIDR blocks: `10.0.0.0/8, 127.0.0.1, ::1`.
pub(super) fn parse_nets(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<ipnet::IpNet>()
                .or_else(|_| w.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(ipv4_mapped)
                .map_err(|_| {
                    format!("'{w}' is not an address or CIDR block (e.g. 10.0.0.0/8, 127.0.0.1, ::1)")
                })
        })
        .collect()
}

/// An IPv4-mapped block (`::ffff:10.0.0.0/104`) as the IPv4 block it maps, since client
/// addresses are compared in their IPv4 form (a `[::]` listener's logs show them mapped, and
/// an operator copies them from there), as nginx matches a mapped client against IPv4 rules.
fn ipv4_mapped(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// `cookie` or `cookie NAME`: the cookie's name (`lb` by default); empty: off.
pub(super) fn parse_sticky(s: &str) -> Result<Option<String>, String> {
    let mut words = s.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None, ..) => Ok(None),
        (Some("cookie"), None, _) => Ok(Some("lb".to_string())),
        (Some("cookie"), Some(name), None) if parse_header_name(name).is_ok() => Ok(Some(name.to_string())),
        _ => Err(format!("'{s}' is not a stickiness (expected `cookie` or `cookie NAME`)")),
    }
}

/// The most a unix socket's path may have, in bytes (`sun_path` is 108, its NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// `control_socket`: empty (off), or a path short enough for a unix socket (it failed only at
/// start, turning upgrades in place off). What is at the path is looked at by `--check` and the
/// start, not by reloads, which cannot change it.
pub(super) fn parse_control_socket(s: &str) -> Result<Option<std::path::PathBuf>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "'{s}' is {} bytes; a unix socket's path has at most {MAX_SOCKET_PATH}",
            s.len()
        ));
    }
    Ok(Some(std::path::PathBuf::from(s)))
}

/// A path prefix: `/api` (a trailing `/` is dropped: `/api/` matches as `/api`).
pub(super) fn parse_prefix(s: &str) -> Result<String, String> {
    let p = parse_path(s)?;
    if p.contains(['?', '#']) {
        return Err(format!("'{s}' is a path prefix: no query or fragment"));
    }
    Ok(match p.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    })
}
