//! Simple responses the proxy composes itself (errors, admin pages, the dummy's refusals): one
//! writer, so every such response carries the same framing and an RFC 9110 `Date` header.
//!
//! A simple response is a status line, `Date`, the caller's headers, `Content-Length` and, when
//! asked, `Connection: close`, then the body. RFC 9110 §6.6.1 wants a `Date` on every response
//! from a server with a clock; nginx and HAProxy both send one on their own error pages.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use super::reason;
use crate::error::{Answer, Failure};

/// The proxy's own short text error, dated now: `"{status} {reason}: {why}"` as the body, the
/// request id when known, `Retry-After: 1` on a 503. Every error the proxy answers itself takes
/// this form, whichever thread writes it (a worker, or the parker at `header_ms`).
/// With `[proxy] error_pages`, the page for `status` replaces the text, as `text/html`.
pub fn text_error(status: u16, why: &str, id: Option<&str>, close: bool) -> Vec<u8> {
    text_error_with(status, why, id, close, None)
}

/// [`text_error`] with a `Retry-After` of `retry_after` seconds (a 429's).
pub fn text_error_with(
    status: u16,
    why: &str,
    id: Option<&str>,
    close: bool,
    retry_after: Option<u64>,
) -> Vec<u8> {
    let page = PAGES.read().get(&status).cloned();
    let text;
    let (body, kind): (&[u8], _) = match &page {
        Some(page) => (page, "text/html; charset=utf-8"),
        None => {
            text = format!("{status} {}: {why}\n", reason(status));
            (text.as_bytes(), "text/plain")
        }
    };
    let mut headers = vec![("Content-Type", kind)];
    if page.is_none() {
        // The text may quote the request (a 404 names its path): never to be read as HTML.
        headers.push(("X-Content-Type-Options", "nosniff"));
    }
    if let Some(id) = id {
        headers.push(("X-Request-ID", id));
    }
    let retry = retry_after.map(|s| s.to_string());
    if let Some(secs) = &retry {
        headers.push(("Retry-After", secs));
    } else if status == 503 {
        headers.push(("Retry-After", "1"));
    }
    SimpleResponse { status, headers: &headers, body, close }.to_bytes()
}

/// The statuses an error page can replace (`[proxy] error_pages`).
pub const PAGE_STATUSES: [u16; 11] = [400, 403, 404, 408, 413, 414, 429, 431, 502, 503, 504];

/// Error pages by status, read once (start, reload), never per request.
pub type Pages = BTreeMap<u16, Arc<[u8]>>;

static PAGES: RwLock<Pages> = RwLock::new(BTreeMap::new());

/// Reads `DIR/NNN.html` for each of [`PAGE_STATUSES`]; a missing file keeps the built-in text.
/// An unreadable directory or file is an error naming it.
pub fn load_pages(dir: &Path) -> Result<Pages, String> {
    std::fs::read_dir(dir).map_err(|e| format!("error_pages {}: {e}", dir.display()))?;
    let mut pages = Pages::new();
    for status in PAGE_STATUSES {
        let path = dir.join(format!("{status}.html"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                pages.insert(status, bytes.into());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("error page {}: {e}", path.display())),
        }
    }
    Ok(pages)
}

/// Installs the error pages every later answer uses.
pub fn set_pages(pages: Pages) {
    *PAGES.write() = pages;
}

/// The answer to a request head refused before any backend was asked (a rule broken, too large,
/// too slow): its status and wording from the [`Failure`], then close.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The response, as [`text_error`] writes it.
    pub bytes: Vec<u8>,
}

/// The length of the head at the start of a response the proxy wrote (all of it if no blank
/// line ends one).
pub fn head_len(bytes: &[u8]) -> usize {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes.len(), |end| end + 4)
}

/// The answer to `f`, or `None` when it gets no answer but the close.
pub fn refusal(f: &Failure) -> Option<Refusal> {
    match f.answer() {
        Answer::Status(status) => {
            Some(Refusal { status, bytes: text_error(status, &f.to_string(), None, true) })
        }
        Answer::Close => None,
    }
}

/// A complete response with a small in-memory body; see [`SimpleResponse::to_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct SimpleResponse<'a> {
    /// The status code; its reason phrase comes from [`reason`].
    pub status: u16,
    /// Extra header fields, in order (`Content-Type`, `X-Request-ID`, `Retry-After`, ...).
    /// `Date`, `Content-Length` and `Connection` are written by the writer, not taken from here.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body, sent as is.
    pub body: &'a [u8],
    /// Whether to send `Connection: close` (the caller then closes).
    pub close: bool,
}

impl<'a> SimpleResponse<'a> {
    /// A response with no extra headers, an empty body and the connection kept open.
    pub fn new(status: u16) -> SimpleResponse<'a> {
        SimpleResponse { status, headers: &[], body: b"", close: false }
    }

    /// The whole response as bytes, dated `now`.
    ///
    /// A header whose name or value holds CR, LF or NUL is left out rather than written: a
    /// value echoed from a client (an X-Request-ID) must never split the response. 1xx, 204
    /// and 304 responses get neither a body nor a `Content-Length` (RFC 9110 §8.6, §15.3.5).
    pub fn to_bytes_at(&self, now: SystemTime) -> Vec<u8> {
        let bodiless = self.status < 200 || self.status == 204 || self.status == 304;
        let body: &[u8] = if bodiless { b"" } else { self.body };
        let mut out = Vec::with_capacity(160 + body.len());
        // Writes into a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let _ = write!(out, "Date: {}\r\n", httpdate::fmt_http_date(now));
        for (name, value) in self.headers {
            let unsafe_byte = |s: &str| s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
            if name.is_empty() || unsafe_byte(name) || unsafe_byte(value) {
                continue;
            }
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if !bodiless {
            let _ = write!(out, "Content-Length: {}\r\n", body.len());
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    /// The whole response as bytes, dated now.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_at(SystemTime::now())
    }

    /// Writes the response in one `write_all` and flushes; returns the bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let bytes = self.to_bytes();
        out.write_all(&bytes)?;
        out.flush()?;
        Ok(bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_text_error_names_its_status_and_carries_the_id_and_retry_after_where_due() {
        let text = String::from_utf8(text_error(503, "no backend is up", Some("id-7"), false)).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\nDate: "), "{text}");
        assert!(text.contains("X-Request-ID: id-7\r\n") && text.contains("Retry-After: 1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n503 Service Unavailable: no backend is up\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain\r\nX-Content-Type-Options: nosniff\r\n"), "{text}");
        let text = String::from_utf8(text_error(408, "request head timeout", None, true)).expect("utf8");
        assert!(text.contains("Connection: close\r\n") && !text.contains("Retry-After"), "{text}");
    }

    struct Parsed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn parse(bytes: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(bytes).expect("valid response") {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("incomplete head: {:?}", String::from_utf8_lossy(bytes)),
        };
        Parsed {
            status: resp.code.expect("status"),
            headers: resp
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
            body: bytes[len..].to_vec(),
        }
    }

    fn header<'p>(p: &'p Parsed, name: &str) -> Option<&'p str> {
        p.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn date_is_an_rfc9110_imf_fixdate_of_the_given_time() {
        let when = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let p = parse(&SimpleResponse::new(200).to_bytes_at(when));
        let date = header(&p, "date").expect("a Date header");
        // RFC 9110 §5.6.7's own example.
        assert_eq!(date, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(httpdate::parse_http_date(date).expect("parses"), when);
    }

    #[test]
    fn date_now_parses_and_is_current() {
        let p = parse(&SimpleResponse::new(503).to_bytes());
        let date = httpdate::parse_http_date(header(&p, "date").expect("Date")).expect("parses");
        let skew = SystemTime::now().duration_since(date).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "Date is {skew:?} away from now");
    }

    #[test]
    fn content_length_matches_the_body_and_headers_keep_their_order() {
        let body = b"503 Service Unavailable: no backend\n";
        let r = SimpleResponse {
            status: 503,
            headers: &[("Content-Type", "text/plain"), ("X-Request-ID", "abc"), ("Retry-After", "1")],
            body,
            close: true,
        };
        let bytes = r.to_bytes();
        assert!(bytes.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        let p = parse(&bytes);
        assert_eq!(p.status, 503);
        assert_eq!(header(&p, "content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(p.body, body);
        assert_eq!(header(&p, "connection"), Some("close"));
        let names: Vec<&str> = p.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Date", "Content-Type", "X-Request-ID", "Retry-After", "Content-Length", "Connection"]
        );
    }

    #[test]
    fn keep_alive_sends_no_connection_header_and_an_empty_body_has_length_zero() {
        let p = parse(&SimpleResponse::new(200).to_bytes());
        assert_eq!(header(&p, "connection"), None);
        assert_eq!(header(&p, "content-length"), Some("0"));
        assert!(p.body.is_empty());
    }

    #[test]
    fn header_values_with_line_breaks_are_dropped_not_written() {
        let r = SimpleResponse {
            headers: &[("X-Request-ID", "a\r\nSet-Cookie: x=1"), ("X-Ok", "fine"), ("Bad\nName", "v")],
            ..SimpleResponse::new(400)
        };
        let p = parse(&r.to_bytes());
        assert_eq!(header(&p, "x-request-id"), None);
        assert_eq!(header(&p, "set-cookie"), None);
        assert_eq!(header(&p, "x-ok"), Some("fine"));
        assert_eq!(p.headers.len(), 3, "Date, X-Ok, Content-Length: {:?}", p.headers);
    }

    #[test]
    fn no_content_and_not_modified_carry_no_body_or_length() {
        for status in [204, 304] {
            let r = SimpleResponse { body: b"ignored", ..SimpleResponse::new(status) };
            let p = parse(&r.to_bytes());
            assert_eq!(header(&p, "content-length"), None, "{status}");
            assert!(p.body.is_empty(), "{status}");
        }
    }

    #[test]
    fn write_to_writes_everything_and_counts_it() {
        let mut out = Vec::new();
        let r = SimpleResponse { body: b"ok\n", close: true, ..SimpleResponse::new(200) };
        let n = r.write_to(&mut out).expect("write to a Vec");
        assert_eq!(n, out.len() as u64);
        assert_eq!(parse(&out).body, b"ok\n");
    }
}
