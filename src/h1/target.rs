//! The request target: the forms a request line may carry (origin, absolute, `*` for
//! OPTIONS; never CONNECT's authority form), an absolute form's parts, and what a host
//! (`Host`, or that form's authority) may be.

use crate::error::Rejection;

/// Splits an absolute-form target (`http://host:port/path?q`, the scheme in any case) into
/// its authority and the rest (`/path?q`, `?q` or empty); `None` for other forms.
pub fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Refuses a target no backend should see: CONNECT, bytes outside visible ASCII, a fragment, or
/// a form other than origin, absolute (http or https) and `*` for OPTIONS.
pub fn check_target(method: &str, target: &str) -> Result<(), Rejection> {
    if method == "CONNECT" {
        return Err(Rejection::new(405, "CONNECT is not supported"));
    }
    if !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(Rejection::new(400, "invalid request target"));
    }
    // RFC 9112 3.2: a request-target carries no fragment; one here is a client bug or a probe.
    if target.contains('#') {
        return Err(Rejection::new(400, "fragment in request target"));
    }
    let origin = target.starts_with('/');
    if origin || split_absolute(target).is_some() || (target == "*" && method == "OPTIONS") {
        Ok(())
    } else {
        Err(Rejection::new(400, "invalid request target"))
    }
}

/// Whether `v` is a host as a `Host` value or an absolute-form authority may name it (RFC 9110
/// 7.2 `uri-host [ ":" port ]`, RFC 3986 3.2.2): a reg-name of unreserved characters,
/// percent-escapes and sub-delims, or a bracketed IP literal, then an optional port of digits.
/// No userinfo, double quotes, stray brackets or backslashes; and no `.` alone or `..`, which
/// nginx refuses too.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => v.split_at(v.iter().rposition(|&b| b == b':').unwrap_or(v.len())),
    };
    let port_ok = port
        .split_first()
        .is_none_or(|(&colon, digits)| colon == b':' && digits.iter().all(u8::is_ascii_digit));
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => !host.is_empty() && host != b"." && reg_name(host) && !host.windows(2).any(|w| w == b".."),
    };
    host_ok && port_ok
}

/// RFC 3986's reg-name: unreserved, `%` and two hex digits, or a sub-delim.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = host.get(i) {
        match b {
            b'%' if host.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) => i += 3,
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}
