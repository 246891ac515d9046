//! Request heads: parsed by httparse, checked against request smuggling, and rewritten for the
//! backend (hop-by-hop headers removed, framing re-established, forwarding headers added).
//!
//! Anything ambiguous is rejected before a byte reaches a backend: both Content-Length and
//! Transfer-Encoding, a repeated or invalid Content-Length, a Transfer-Encoding whose final
//! coding is not `chunked`, whitespace before a colon, obs-fold, invalid bytes in names, values
//! or target, a missing or repeated Host in HTTP/1.1, and unsupported versions (505; a later
//! HTTP/1 minor version is served as 1.1).

use super::edits::{stripped, take_cookie, Edits, Routed, Router};
use super::framing::framing;
use super::target::{check_target, split_absolute, valid_host};
use super::{has_token, BodyKind, MAX_HEADERS};

use crate::error::Rejection;

const fn reject(status: u16, why: &'static str) -> Rejection {
    Rejection::new(status, why)
}

/// What the proxy needs to know about a request after its head was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Length of the head in the buffer.
    pub len: usize,
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent with a body: forwarded, and the backend's answer decides
    /// whether the body follows (see `http::interim`).
    pub expect_continue: bool,
    /// The client's `X-Request-ID`, or a new UUID v4.
    pub request_id: String,
    /// Safe to send twice: an idempotent method or an `Idempotency-Key` header.
    pub retryable: bool,
    /// `Connection: upgrade` with `Upgrade: <protocols>` (h2c removed): forwarded with both
    /// headers, and a `101` may turn the connection into a tunnel.
    pub upgrade: Option<String>,
    /// `Upgrade: h2c` was asked for and stripped (the h2c request-smuggling route).
    pub h2c_stripped: bool,
    /// Headers dropped for an underscore in their name (see [`Forwarding::underscores`]).
    pub underscored: usize,
    /// Where the `hash_header` value lies in the parsed buffer (see [`Forwarding::hash_header`]).
    pub hash_value: Option<std::ops::Range<usize>>,
    /// The route that matched (its position in the table [`Forwarding::route`] consulted).
    pub route: Option<u32>,
    /// The host as sent, kept when the proxy answers itself ([`Routed::answer`]); else empty.
    pub host: String,
    /// Every `X-Forwarded-For` value, joined, when [`Forwarding::keep_forwarded`]; else empty.
    pub forwarded_for: String,
    /// The sticky cookie's value, when the pool is sticky ([`Routed::cookie`]) and it came.
    pub sticky: Option<String>,
    /// `User-Agent` and `Referer`, when [`Forwarding::agents`] asks for them (else empty).
    pub user_agent: Vec<u8>,
    pub referer: Vec<u8>,
}

/// Where a request came from and how the proxy names itself, for the forwarding headers.
#[derive(Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address as text (formatted once per connection), for `X-Forwarded-For`.
    pub client: &'a str,
    /// Gives the `Host` for an HTTP/1.0 request that has none (the address the client reached);
    /// called only then, so the common case costs no `getsockname`.
    pub local_host: &'a dyn Fn() -> String,
    /// `X-Forwarded-Proto`: `http` or `https` (the listener speaks TLS).
    pub proto: &'a str,
    /// The header whose value the balancer hashes (`hash_header` under header-hash), if any:
    /// found in this one parse, see [`RequestHead::hash_value`].
    pub hash_header: Option<&'a str>,
    /// Forward headers whose names contain `_`. Off (nginx's default), they are dropped: a
    /// CGI, WSGI or PHP backend maps `_` and `-` alike, so `X_Forwarded_For` would pass for the
    /// proxy's own `X-Forwarded-For`.
    pub underscores: bool,
    /// Decides the request's route from its host and target (`None`: no routes).
    pub route: Option<&'a Router<'a>>,
    /// Keep the client's `X-Forwarded-For`, and its `X-Forwarded-Proto` when that says `http`
    /// or `https` (it comes from a trusted proxy).
    pub keep_forwarded: bool,
    /// Keep `User-Agent` and `Referer` for the access line.
    pub agents: bool,
}

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "transfer-encoding"];

/// Whether `name` is hop-by-hop, either always or because `Connection` names it (`named`: the
/// message has a `Connection` header at all, checked once per message). `Host` and
/// `Content-Length` are end-to-end whatever `Connection` says: naming them there must not
/// strip routing or framing.
pub fn is_hop_by_hop(name: &str, headers: &[httparse::Header<'_>], named: bool) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (named
            && !name.eq_ignore_ascii_case("host")
            && !name.eq_ignore_ascii_case("content-length")
            && has_token(headers, "connection", name))
}

/// Whether any header is `Connection`.
pub fn has_connection_header(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection"))
}

/// Appends `name: value\r\n`.
pub(crate) fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `Content-Length: n\r\n` without allocating.
pub(crate) fn length_line(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "Content-Length: {n}\r\n");
}

/// A UUID v4 for a request without an ID, from fastrand's per-thread generator (as HAProxy's
/// `uuid()`, non-cryptographic: an ID must be unique, not unguessable), written without `fmt`.
fn new_request_id() -> String {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more (unless `buf`
/// already holds `max_head` bytes: then 431). On success the head rewritten for the backend is
/// appended to `out`.
// Not inlined: its hundred header slots must not sit in an idle worker's live frame.
#[inline(never)]
pub fn parse(
    buf: &[u8],
    max_head: usize,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, Rejection> {
    // Uninitialized: httparse writes only the slots it fills (zeroing all costs 3 KiB of stores).
    let mut slots = [std::mem::MaybeUninit::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(Rejection::HEAD_TOO_LARGE),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(Rejection::too_large(buf)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many headers")),
        // A later HTTP/1 (RFC 9112 2.3): served as 1.1, the highest this implements, as nginx and
        // HAProxy serve HTTP/1.2. Rare: the head is copied with its version rewritten.
        Err(httparse::Error::Version) if let Some(at) = newer_minor(buf) => {
            let mut copy = buf.to_vec();
            copy[at] = b'1';
            return parse(&copy, max_head, fwd, out);
        }
        Err(httparse::Error::Version) if looks_like_version(buf) => {
            return Err(reject(505, "HTTP version not supported"))
        }
        Err(_) => return Err(reject(400, "malformed request")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(reject(400, "malformed request line"));
    };
    let headers = &*req.headers;
    check_target(method, target)?;
    // Absolute form: the authority is the host (RFC 9112 3.2.2); forward origin form.
    let absolute = split_absolute(target);
    if let Some((authority, _)) = absolute {
        if !valid_host(authority.as_bytes()) {
            return Err(reject(400, "invalid authority in request target"));
        }
    }
    let body = framing(version, headers)?;
    let hosts = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).count();
    if hosts > 1 {
        return Err(reject(400, "repeated Host"));
    }
    if hosts == 0 && version == 1 {
        return Err(reject(400, "missing Host"));
    }
    if let Some(host) = super::header(headers, "host") {
        if !valid_host(host) {
            return Err(reject(400, "invalid Host"));
        }
    }
    let expect = super::header(headers, "expect");
    let continues = expect.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    if expect.is_some() && !continues {
        return Err(reject(417, "unsupported expectation"));
    }
    // An HTTP/1.0 client's `100-continue` is ignored (RFC 9110 10.1.1): it must never see a 1xx,
    // and the backend is not asked for one, as nginx and HAProxy do.
    let expect_continue = continues && version == 1;
    let keep_alive = super::keep_alive(version, headers);
    // One a log line could not carry whole (empty, over 200 bytes, not visible ASCII) is
    // replaced, not refused: the request is good, only its label is not.
    let request_id = match super::header(headers, "x-request-id") {
        Some(id) if valid_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => new_request_id(),
    };
    let retryable = matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
        || super::header(headers, "idempotency-key").is_some();

    // An upgrade is forwarded only when `Connection` names it and `Upgrade` offers something
    // other than h2c: h2c is never forwarded, since a backend that takes it would tunnel
    // requests past the proxy's checks (h2c smuggling).
    let mut h2c_stripped = false;
    let mut upgrade = None;
    if let Some(offered) = super::header(headers, "upgrade") {
        let offered = String::from_utf8_lossy(offered);
        let kept: Vec<&str> = offered
            .split(',')
            .map(str::trim)
            .filter(|p| {
                let h2c = p.eq_ignore_ascii_case("h2c");
                h2c_stripped |= h2c;
                !h2c && !p.is_empty()
            })
            .collect();
        // Never on HTTP/1.0, which has no Upgrade (RFC 9110 7.8: ignored there).
        let upgrades = version == 1 && super::has_token(headers, "connection", "upgrade");
        if !kept.is_empty() && upgrades && body == BodyKind::Empty {
            upgrade = Some(kept.join(", "));
        }
    }

    let (local, rooted);
    let (host, path) = match absolute {
        // `http://host` and `http://host?q` ask for `/` and `/?q` (RFC 9112 3.2.1), as nginx.
        Some((authority, rest)) if !rest.starts_with('/') => {
            rooted = format!("/{rest}");
            (Some(authority), rooted.as_str())
        }
        Some((authority, path)) => (Some(authority), path),
        None if hosts == 0 => {
            local = (fwd.local_host)();
            (Some(local.as_str()), target)
        }
        None => (None, target),
    };
    // The host as the client named it (a Host header, or an absolute target's authority).
    let sent = || host.map(str::as_bytes).or_else(|| super::header(headers, "host")).unwrap_or(b"");
    let routed = match fwd.route {
        Some(route) => route(std::str::from_utf8(sent()).unwrap_or(""), path),
        None => Routed::default(),
    };
    let answer_host = if routed.answer { sent() } else { b"" };
    let outgoing = Outgoing {
        method,
        target: &stripped(path, routed.strip),
        headers,
        body,
        host,
        request_id: &request_id,
        upgrade: upgrade.as_deref(),
        expect_continue: expect_continue && body != BodyKind::Empty,
        edits: routed.edits,
        cookie: routed.cookie,
    };
    let sticky = routed.cookie.and_then(|name| {
        let cookies = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cookie"));
        let value = cookies.filter_map(|h| take_cookie(h.value, name).0).next()?;
        Some(String::from_utf8_lossy(value).into_owned())
    });
    write_backend_head(out, &outgoing, fwd);
    Ok(Some(RequestHead {
        len,
        method: method.to_string(),
        target: target.to_string(),
        version,
        body,
        keep_alive,
        expect_continue: expect_continue && body != BodyKind::Empty,
        request_id,
        retryable,
        upgrade,
        h2c_stripped,
        underscored: if fwd.underscores {
            0
        } else {
            headers.iter().filter(|h| h.name.contains('_')).count()
        },
        hash_value: fwd.hash_header.and_then(|name| {
            let h = headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
            // Where the value lies in `buf`, so the caller hashes it without a second parse.
            let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            Some(start..start + h.value.len())
        }),
        route: routed.route,
        host: String::from_utf8_lossy(answer_host).into_owned(),
        forwarded_for: if fwd.keep_forwarded {
            let values = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
            let values: Vec<String> = values.map(|h| String::from_utf8_lossy(h.value).into_owned()).collect();
            values.join(", ")
        } else {
            String::new()
        },
        sticky,
        user_agent: agent(fwd.agents, headers, "user-agent"),
        referer: agent(fwd.agents, headers, "referer"),
    }))
}

/// Header `name`'s value if `keep`, else empty.
fn agent(keep: bool, headers: &[httparse::Header<'_>], name: &str) -> Vec<u8> {
    match super::header(headers, name) {
        Some(v) if keep => v.to_vec(),
        _ => Vec::new(),
    }
}

/// `HTTP/<digit>.<digit>` in the request line: a real but unsupported version (505), as
/// opposed to garbage (400).
fn looks_like_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Method, target and version: a line with more parts has spaces in its target (400, as
    // nginx answers), not an unknown version.
    if line.split(|&b| b == b' ').count() != 3 {
        return false;
    }
    let Some(v) = line.rsplit(|&b| b == b' ').next() else { return false };
    v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit()
}

/// Where the minor digit is in a request line whose version is `HTTP/1.2` to `HTTP/1.9`.
fn newer_minor(buf: &[u8]) -> Option<usize> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let minor = line.len().checked_sub(1)?;
    (looks_like_version(buf) && line[minor - 2] == b'1' && (b'2'..=b'9').contains(&line[minor]))
        .then_some(minor)
}

fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 200 && id.iter().all(|b| (0x21..0x7f).contains(b))
}

/// The request as it goes to the backend: origin-form target, the Host to send (when the
/// client's is replaced), and the request id.
struct Outgoing<'a> {
    method: &'a str,
    target: &'a str,
    headers: &'a [httparse::Header<'a>],
    body: BodyKind,
    host: Option<&'a str>,
    request_id: &'a str,
    upgrade: Option<&'a str>,
    expect_continue: bool,
    /// The route's request rules.
    edits: Edits<'a>,
    /// The sticky cookie, removed from `Cookie` (HAProxy's `indirect`).
    cookie: Option<&'a str>,
}

/// The `X-Forwarded-Proto` a trusted proxy sent (its last), when it names `http` or `https`.
fn trusted_proto(headers: &[httparse::Header<'_>]) -> Option<&'static str> {
    let sent = headers.iter().rev().find(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto"))?;
    ["https", "http"].into_iter().find(|p| sent.value.trim_ascii().eq_ignore_ascii_case(p.as_bytes()))
}

fn write_backend_head(out: &mut Vec<u8>, req: &Outgoing<'_>, fwd: &Forwarding<'_>) {
    let Outgoing { method, target, headers, body, host, request_id, upgrade, expect_continue, edits, cookie } =
        *req;
    let host = edits.set_value("host").or(host);
    let line = header_line;
    let named = has_connection_header(headers);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Vec<u8> = Vec::new();
    for h in headers {
        let name = h.name;
        if (host.is_some() && name.eq_ignore_ascii_case("host"))
            || (!fwd.underscores && name.contains('_'))
            || is_hop_by_hop(name, headers, named)
            || ["content-length", "expect", "x-request-id", "x-forwarded-proto"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            || edits.drops(name)
        {
            continue;
        }
        if let Some(sticky) = cookie.filter(|_| name.eq_ignore_ascii_case("cookie")) {
            if let (_, Some(rest)) = take_cookie(h.value, sticky) {
                line(out, name, &rest);
            }
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(h.value.trim_ascii());
            continue;
        }
        line(out, name, h.value);
    }
    if let Some(host) = host {
        line(out, "Host", host.as_bytes());
    }
    edits.write(out, "host");
    line(out, "X-Request-ID", request_id.as_bytes());
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(fwd.client.as_bytes());
    line(out, "X-Forwarded-For", &forwarded_for);
    // A trusted proxy in front (one that terminates TLS) knows its client's scheme.
    let proto = fwd.keep_forwarded.then(|| trusted_proto(headers)).flatten().unwrap_or(fwd.proto);
    line(out, "X-Forwarded-Proto", proto.as_bytes());
    if expect_continue {
        line(out, "Expect", b"100-continue");
    }
    if let Some(protocols) = upgrade {
        line(out, "Connection", b"upgrade");
        line(out, "Upgrade", protocols.as_bytes());
    }
    match body {
        BodyKind::Length(n) => length_line(out, n),
        BodyKind::Chunked => line(out, "Transfer-Encoding", b"chunked"),
        BodyKind::Empty | BodyKind::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "request_properties.rs"]
mod properties;
