//! Chunked trailers: parsed by httparse as the header fields they must be, and filtered to the
//! fields a trailer may carry (RFC 9110 6.5.1), as HAProxy forwards them.

use super::request::header_line;
use super::MAX_HEADERS;

/// Fields that must never travel in a trailer: framing, routing, request modifiers,
/// authentication, response control, content description, and hop-by-hop fields. A sender may
/// not put them there, and a recipient that merged them into the head would be fooled.
const FORBIDDEN: &[&str] = &[
    // Framing and hop-by-hop.
    "content-length",
    "transfer-encoding",
    "trailer",
    "te",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    // Routing and request modifiers.
    "host",
    "expect",
    "max-forwards",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "cache-control",
    "pragma",
    // Authentication and state.
    "authorization",
    "proxy-authorization",
    "www-authenticate",
    "proxy-authenticate",
    "cookie",
    "set-cookie",
    // Response control data and content description.
    "age",
    "date",
    "expires",
    "location",
    "retry-after",
    "vary",
    "content-encoding",
    "content-type",
    "content-range",
    // The proxy's own.
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
];

/// Whether a trailer may carry the field `name`.
pub fn allowed(name: &str) -> bool {
    !FORBIDDEN.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// Parses the trailer section at the start of `buf` (the lines after the last chunk, up to and
/// including the blank line). `Ok(None)`: incomplete. `Ok(Some(len))`: complete, the allowed
/// fields appended to `kept` as `name: value` lines. `Err`: a line that is not a header field
/// (such as a smuggled request line), or too many fields.
pub fn parse(buf: &[u8], kept: &mut Vec<u8>) -> Result<Option<usize>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((len, fields))) => {
            for f in fields.iter().filter(|f| allowed(f.name)) {
                header_line(kept, f.name, f.value);
            }
            Ok(Some(len))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err("too many fields"),
        Err(_) => Err("malformed field"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(raw: &str) -> Result<Option<(usize, String)>, &'static str> {
        let mut out = Vec::new();
        parse(raw.as_bytes(), &mut out).map(|r| r.map(|n| (n, String::from_utf8_lossy(&out).into_owned())))
    }

    #[test]
    fn an_empty_section_is_its_blank_line() {
        assert_eq!(kept("\r\nNEXT"), Ok(Some((2, String::new()))));
    }

    #[test]
    fn allowed_fields_are_kept_and_forbidden_ones_dropped() {
        let raw = "Server-Timing: db;dur=53\r\nContent-Length: 5\r\nHost: evil\r\nX-Checksum: abc\r\n\
                   Transfer-Encoding: chunked\r\nSet-Cookie: a=b\r\n\r\nNEXT";
        let (len, out) = kept(raw).expect("valid").expect("complete");
        assert_eq!(len, raw.len() - 4);
        assert_eq!(out, "Server-Timing: db;dur=53\r\nX-Checksum: abc\r\n");
    }

    #[test]
    fn a_request_line_in_the_trailers_is_malformed() {
        assert_eq!(kept("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"), Err("malformed field"));
        assert_eq!(kept("X-A: 1\r\nno colon here\r\n\r\n"), Err("malformed field"));
        assert_eq!(kept("X-A : 1\r\n\r\n"), Err("malformed field"));
    }

    #[test]
    fn an_unfinished_section_asks_for_more() {
        assert_eq!(kept("X-A: 1\r\n"), Ok(None));
        assert_eq!(kept(""), Ok(None));
    }
}
