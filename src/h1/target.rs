//! The request target: the forms a request line may carry (origin, absolute, `*` for
//! OPTIONS; never CONNECT's authority form), and an absolute form's parts.

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
