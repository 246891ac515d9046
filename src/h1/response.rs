//! Response heads from backends: parsed by httparse, checked, and rewritten for the client
//! (hop-by-hop headers removed, framing re-established for the client's side, request id and
//! `Via` added, `Connection` set to what the proxy will actually do).

use std::mem::MaybeUninit;

use super::edits::Edits;
use super::request::{has_connection_header, header_line, is_hop_by_hop, length_line};
use super::{parse_length, response_body, BodyKind, MAX_HEADERS};

/// A backend's response head, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the head in the buffer.
    pub len: usize,
    pub status: u16,
    /// How the backend frames the body.
    pub body: BodyKind,
    /// How the body is framed towards the client.
    pub client_body: BodyKind,
    /// Whether the backend connection may be pooled after the body.
    pub backend_reusable: bool,
    /// Whether the client connection stays open after this response.
    pub client_keep_alive: bool,
}

/// What the client side of an exchange wants, for rewriting the response.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    pub method: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub keep_alive: bool,
    pub request_id: &'a str,
    pub via: &'a str,
    /// The request asked for an upgrade: a `101` is the start of a tunnel.
    pub upgrade: bool,
    /// The route's response rules (on final responses).
    pub edits: Edits<'a>,
    /// A `Set-Cookie` value to add to the final response (a sticky pool's).
    pub set_cookie: Option<&'a str>,
}

/// Parses a response head at the start of `buf`: `Ok(None)` when incomplete, `Err` when the
/// backend's answer is unusable (the caller answers 502). Otherwise the client's head is
/// appended to `out`: for a 1xx other than 101 (`status < 200`), the informational head to
/// forward to an HTTP/1.1 client before the final one.
pub fn parse(
    buf: &[u8],
    max_head: usize,
    client: &ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, &'static str> {
    // Uninitialized slots, as in `request::parse`.
    let mut slots = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err("response head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("response head with over 100 header fields"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err("malformed status line");
    };
    let headers = &*resp.headers;
    if status == 101 && !client.upgrade {
        return Err("101 Switching Protocols without an upgrade");
    }
    if status == 101 {
        return Ok(Some(switching(len, headers, client, resp.reason.unwrap_or("Switching Protocols"), out)));
    }
    if !(100..=599).contains(&status) {
        return Err("invalid status code");
    }
    if status < 200 {
        // Written for an HTTP/1.1 client, which gets it before the final response (RFC 9110
        // 15.2: a proxy forwards 1xx); the caller never sends it to an HTTP/1.0 client.
        let named = has_connection_header(headers);
        {
            use std::io::Write as _;
            let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
        }
        for h in headers.iter().filter(|h| !is_hop_by_hop(h.name, headers, named)) {
            header_line(out, h.name, h.value);
        }
        out.extend_from_slice(b"\r\n");
        let informational = ResponseHead {
            len,
            status,
            body: BodyKind::Empty,
            client_body: BodyKind::Empty,
            backend_reusable: true,
            client_keep_alive: client.keep_alive,
        };
        return Ok(Some(informational));
    }
    let mut length = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let n = parse_length(h.value);
        match length {
            None => length = Some(n.ok_or("invalid Content-Length")?),
            Some(first) if n != Some(first) => return Err("conflicting Content-Length"),
            Some(_) => {}
        }
    }
    let te = headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let body = response_body(client.method, status, headers);
    // Only a body is framed by them (a HEAD answer, a 204 or a 304 has none). Once they are
    // valid, a `chunked` among them is the last: other codings alone delimit it by close.
    if te && body != BodyKind::Empty {
        codings_are_valid(headers)?;
    }
    let body =
        if te && body != BodyKind::Empty && body != BodyKind::Chunked { BodyKind::UntilClose } else { body };
    let backend_keep = super::keep_alive(version, headers);
    // A message with both framings is suspicious: use chunked (RFC 9112 6.3) but don't reuse.
    let backend_reusable = backend_keep && body != BodyKind::UntilClose && !(te && length.is_some());
    // HTTP/1.0 clients know no chunked coding: they get the body delimited by close.
    let client_body = match body {
        BodyKind::UntilClose if client.version == 1 => BodyKind::Chunked,
        BodyKind::Chunked if client.version == 0 => BodyKind::UntilClose,
        other => other,
    };
    let client_keep_alive = client.keep_alive && client_body != BodyKind::UntilClose;

    let line = header_line;
    let named = has_connection_header(headers);
    {
        use std::io::Write as _;
        let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    }
    // `Trailer` announces the trailer fields, which only a chunked body carries, from the
    // backend to the client; HAProxy and nginx keep it too.
    let chunked_through = body == BodyKind::Chunked && client_body == BodyKind::Chunked;
    let announces = |name: &str| chunked_through && name.eq_ignore_ascii_case("trailer");
    for h in headers {
        let skip = (is_hop_by_hop(h.name, headers, named) && !announces(h.name))
            || h.name.eq_ignore_ascii_case("x-request-id")
            // A 204 carries no Content-Length (RFC 9110 8.6), as nginx sends it; a 304's and a
            // HEAD answer's still name the representation's length.
            || (h.name.eq_ignore_ascii_case("content-length") && (body != BodyKind::Empty || status == 204))
            || client.edits.drops(h.name);
        if !skip {
            line(out, h.name, h.value);
        }
    }
    client.edits.write(out, "");
    if let Some(cookie) = client.set_cookie {
        line(out, "Set-Cookie", cookie.as_bytes());
    }
    line(out, "X-Request-ID", client.request_id.as_bytes());
    via_line(out, client.via);
    match client_body {
        BodyKind::Length(n) => length_line(out, n),
        BodyKind::Chunked => chunked_line(out, headers),
        BodyKind::Empty | BodyKind::UntilClose => {}
    }
    if !client_keep_alive {
        line(out, "Connection", b"close");
    } else if client.version == 0 {
        line(out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead { len, status, body, client_body, backend_reusable, client_keep_alive }))
}

/// The `101` as the client gets it: `Connection: upgrade` and the backend's `Upgrade` kept,
/// other hop-by-hop headers dropped. After it, the connection is a tunnel.
fn switching(
    len: usize,
    headers: &[httparse::Header<'_>],
    client: &ClientSide<'_>,
    reason: &str,
    out: &mut Vec<u8>,
) -> ResponseHead {
    let named = has_connection_header(headers);
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        if !is_hop_by_hop(h.name, headers, named) && !h.name.eq_ignore_ascii_case("x-request-id") {
            header_line(out, h.name, h.value);
        }
    }
    header_line(out, "Connection", b"upgrade");
    if let Some(up) = super::header(headers, "upgrade") {
        header_line(out, "Upgrade", up);
    }
    header_line(out, "X-Request-ID", client.request_id.as_bytes());
    via_line(out, client.via);
    out.extend_from_slice(b"\r\n");
    ResponseHead {
        len,
        status: 101,
        body: BodyKind::Empty,
        client_body: BodyKind::Empty,
        backend_reusable: false,
        client_keep_alive: false,
    }
}

/// The transfer codings a response names, in order, across its `Transfer-Encoding` fields
/// (empty list elements ignored, RFC 9110 5.6.1).
fn codings<'h>(headers: &'h [httparse::Header<'_>]) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
}

/// `Transfer-Encoding` for a body re-chunked towards the client: the backend's other codings
/// (a `gzip` the client must undo) keep their place before `chunked`, as HAProxy passes them.
/// Its own `chunked`, which [`codings_are_valid`] leaves only last, was undone by the proxy.
fn chunked_line(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    let mut codings: Vec<&[u8]> = codings(headers).filter(|c| !c.eq_ignore_ascii_case(b"chunked")).collect();
    codings.push(b"chunked");
    header_line(out, "Transfer-Encoding", &codings.join(&b", "[..]));
}

/// Refuses a response's `Transfer-Encoding` that no one can frame alike, as HAProxy (2.6)
/// answers it 502: `chunked` twice or before another coding (the body would be chunked again on its way
/// on, which RFC 9112 6.1 forbids, and a client that decodes once sees chunk sizes), or
/// `identity` (no coding since RFC 7230; HAProxy refuses it, nginx would use Content-Length).
fn codings_are_valid(headers: &[httparse::Header<'_>]) -> Result<(), &'static str> {
    let (mut chunked, mut last_chunked) = (0, false);
    for c in codings(headers) {
        if c.eq_ignore_ascii_case(b"identity") {
            return Err("Transfer-Encoding: identity");
        }
        last_chunked = c.eq_ignore_ascii_case(b"chunked");
        chunked += usize::from(last_chunked);
    }
    match (chunked, last_chunked) {
        (0, _) | (1, true) => Ok(()),
        _ => Err("Transfer-Encoding with chunked twice or not last"),
    }
}

/// Appends `Via: 1.1 <via>\r\n`.
fn via_line(out: &mut Vec<u8>, via: &str) {
    out.extend_from_slice(b"Via: 1.1 ");
    out.extend_from_slice(via.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
