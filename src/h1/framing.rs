//! A request's body framing from its headers, refusing every ambiguous combination (the
//! request-smuggling vectors): both Content-Length and Transfer-Encoding, a repeated or invalid
//! Content-Length, Transfer-Encoding in HTTP/1.0 or not ending in `chunked`. A request coded
//! other than plainly `chunked` (`gzip, chunked`) is answered 501, as nginx does (RFC 9112 6.1).

use super::{parse_length, BodyKind};
use crate::error::Rejection;

/// The body framing, refusing every ambiguous combination.
pub(super) fn framing(version: u8, headers: &[httparse::Header<'_>]) -> Result<BodyKind, Rejection> {
    let mut length = None;
    let mut codings: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Rejection::new(400, "repeated Content-Length"));
            }
            length = Some(parse_length(h.value).ok_or(Rejection::new(400, "invalid Content-Length"))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        }
    }
    if codings.is_empty() {
        return Ok(length.map_or(BodyKind::Empty, BodyKind::Length));
    }
    if length.is_some() {
        return Err(Rejection::new(400, "both Content-Length and Transfer-Encoding"));
    }
    if version == 0 {
        return Err(Rejection::new(400, "Transfer-Encoding in HTTP/1.0"));
    }
    let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    let valid =
        |c: &[u8]| !c.is_empty() && c.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let chunked_count = codings.iter().filter(|c| chunked(c)).count();
    if !(codings.last().is_some_and(|c| chunked(c)) && chunked_count == 1 && codings.iter().all(|c| valid(c)))
    {
        return Err(Rejection::new(400, "Transfer-Encoding must end in chunked"));
    }
    // Well-formed, but a coding the backend may not know either: nginx answers 501, HAProxy 422.
    if codings.len() > 1 {
        return Err(Rejection::new(501, "a transfer coding other than chunked"));
    }
    Ok(BodyKind::Chunked)
}
