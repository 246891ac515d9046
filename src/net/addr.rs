//! Addresses as people write them: `host:port`, `[v6]:port`, a bare port for a listener, and
//! name resolution. Every error says what was wrong and what to write instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// Splits `host:port` (or `[v6]:port`), checking the port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        // `[v6]:port`: one pair of brackets around an IPv6 address, then the port.
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("'{s}' has no closing ']' (write an IPv6 address in brackets: [::1]:8080)"));
        };
        if host.is_empty() || !host.contains(':') || host.contains('[') {
            return Err(format!("'{s}' has no IPv6 address in its brackets (e.g. [::1]:8080)"));
        }
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => {
                return Err(format!("'{s}' has no port after its address (e.g. {s}:8080)"))
            }
            None => {
                return Err(format!(
                    "'{s}' has '{after}' after its address (expected [v6]:port, e.g. [::1]:8080)"
                ))
            }
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains('[') || h.contains(']') => {
                return Err(format!("'{s}' has a stray bracket (expected host:port or [v6]:port)"))
            }
            Some((h, p)) if !h.is_empty() && !h.contains(':') => (h, p),
            // `::1` or `fe80::1:8080`: an IPv6 address needs brackets to carry a port.
            Some((h, _)) if h.contains(':') => {
                return Err(format!("'{s}' has no port (write an IPv6 address in brackets: [::1]:8080)"))
            }
            Some(("", _)) => {
                return Err(format!("'{s}' has no host (expected host:port, e.g. 127.0.0.1:8080)"))
            }
            None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("'{s}' has no host (expected host:port, e.g. 127.0.0.1:{s})"))
            }
            _ => return Err(format!("'{s}' has no port (expected host:port, e.g. 127.0.0.1:8080)")),
        }
    };
    if port.is_empty() {
        return Err(format!("'{s}' has no port after the ':' (expected host:port, e.g. 127.0.0.1:8080)"));
    }
    // Digits only: `u16::from_str` would take a `+`.
    match port.parse::<u16>() {
        Ok(p) if port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(format!("invalid port '{port}' in '{s}' (expected 0..=65535)")),
    }
}

/// Whether `host` is an IP address as written, an IPv6 one perhaps with its zone
/// (`fe80::1%eth0`), rather than a name to resolve.
pub fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || host.split_once('%').is_some_and(|(ip, zone)| !zone.is_empty() && ip.parse::<Ipv6Addr>().is_ok())
}

/// Resolves `host:port` to its first address; `allow_zero` permits port 0 (any free port).
pub fn parse_socket_addr(s: &str, allow_zero: bool) -> Result<SocketAddr, String> {
    parse_target(s, allow_zero).map(|(_, _, addrs)| addrs[0])
}

/// A listening address: `host:port`, or a bare port meaning every IPv4 interface
/// (`8080` is `0.0.0.0:8080`, as nginx reads `listen 8080`). Port 0 asks for any free port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u16>() {
            Ok(port) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            Err(_) => Err(format!("invalid port '{s}' (expected 0..=65535, or host:port)")),
        };
    }
    parse_socket_addr(s, true)
        .map_err(|e| e.replace("(expected host:port,", "(expected host:port or a port,"))
}

/// Splits and resolves `host:port`: the host, the port, and every address (at least one).
pub fn parse_target(s: &str, allow_zero: bool) -> Result<(&str, u16, Vec<SocketAddr>), String> {
    let (host, port) = split_host_port(s)?;
    if port == 0 && !allow_zero {
        return Err(format!("port 0 is not a valid port in '{s}'"));
    }
    Ok((host, port, resolve(host, port)?))
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

    #[test]
    fn ipv6_and_host_names_resolve() {
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", 80)));
        assert!(split_host_port("::1").is_err());
        assert!(parse_socket_addr("localhost:9090", false).is_ok());
        assert!(parse_socket_addr("127.0.0.1:0", false).is_err());
    }

    #[test]
    fn a_bare_port_listens_on_every_ipv4_interface() {
        assert_eq!(parse_listen("8080"), Ok("0.0.0.0:8080".parse().expect("addr")));
        assert_eq!(parse_listen("0"), Ok("0.0.0.0:0".parse().expect("addr")));
        assert_eq!(parse_listen("127.0.0.1:9000"), Ok("127.0.0.1:9000".parse().expect("addr")));
        assert_eq!(parse_listen("[::1]:9000"), Ok("[::1]:9000".parse().expect("addr")));
    }

    #[test]
    fn bad_addresses_say_what_to_write() {
        let err = |s: &str| parse_listen(s).expect_err(s);
        assert_eq!(err("70000"), "invalid port '70000' (expected 0..=65535, or host:port)");
        assert_eq!(
            err("localhost"),
            "'localhost' has no port (expected host:port or a port, e.g. 127.0.0.1:8080)"
        );
        assert_eq!(err(":8080"), "':8080' has no host (expected host:port or a port, e.g. 127.0.0.1:8080)");
        assert!(err("::1").contains("in brackets: [::1]:8080"), "{}", err("::1"));
        // A bracket left open or a bracketed address without a port: not a host named ':'.
        assert!(err("[::1").contains("in brackets: [::1]:8080"), "{}", err("[::1"));
        assert_eq!(err("[::1]"), "'[::1]' has no port after its address (e.g. [::1]:8080)");
        // Brackets doubled, unpaired or around no IPv6 address, and a signed port: refused, not
        // read as something else.
        for bad in ["[[::1]]:8080", "[::1]]:8080", "::1]:8080", "[127.0.0.1]:8080", "[]:8080", "[::1]8080"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
        assert_eq!(err("[::1]:+8080"), "invalid port '+8080' in '[::1]:+8080' (expected 0..=65535)");
        assert!(err("127.0.0.1:+80").starts_with("invalid port '+80'"));
        assert!(is_ip_literal("fe80::1%eth0") && is_ip_literal("::1") && is_ip_literal("10.0.0.1"));
        assert!(!is_ip_literal("app.internal") && !is_ip_literal("::1%") && !is_ip_literal("10.0.0.1%1"));
        assert!(err("127.0.0.1:").contains("has no port after the ':'"), "{}", err("127.0.0.1:"));
        assert!(err("127.0.0.1:http").starts_with("invalid port 'http' in '127.0.0.1:http'"));
        // Backends and clients still need a host: a bare port is not a destination.
        let target = parse_target("9090", false).expect_err("bare port");
        assert_eq!(target, "'9090' has no host (expected host:port, e.g. 127.0.0.1:9090)");
    }
}
