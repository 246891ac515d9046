//! The HTTP/1.1 wire format, shared by every HTTP speaker here (proxy, checker, admin, dummy,
//! client): a buffered socket reader that keeps
//! pipelined bytes, head reading with a size limit, and body framing (Content-Length, chunked,
//! until close) streamed through a fixed buffer. Heads are parsed by httparse, never by hand.

mod body;
pub mod edits;
mod framing;
pub mod head;
pub mod request;
pub mod respond;
pub mod response;
mod target;
mod trailers;

pub use body::{parse_chunk_line, BodyError, Coalesce, COALESCE};

use std::io::{self, Read};

/// Largest request or response head accepted by default.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers parsed in one head.
pub const MAX_HEADERS: usize = 100;

/// A connection's read buffer to begin with.
pub const SMALL_BUFFER: usize = 4 * 1024;

/// The read buffer while a large body streams through.
pub const BODY_BUFFER: usize = 64 * 1024;

/// A socket with a read buffer. Bytes read past the current message stay buffered for the
/// next one (pipelining).
#[derive(Debug)]
pub struct Wire<S> {
    /// The underlying stream; writes go to it directly.
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl<S: Read> Wire<S> {
    /// Wraps `stream` with a small buffer (grown as heads or bodies need).
    pub fn new(stream: S) -> Wire<S> {
        Wire::with_buffer(stream, Vec::new())
    }

    /// Wraps `stream`, reusing `buf`'s allocation (at least [`SMALL_BUFFER`]). Buffers start
    /// small because a worker holding an idle keep-alive connection keeps them: thousands of
    /// idle connections must stay cheap.
    pub fn with_buffer(stream: S, mut buf: Vec<u8>) -> Wire<S> {
        if buf.len() < SMALL_BUFFER {
            buf.resize(SMALL_BUFFER, 0);
        }
        Wire { stream, buf, start: 0, end: 0 }
    }

    /// Grows the buffer to [`BODY_BUFFER`] for streaming a large body: fewer, larger reads.
    pub fn grow_for_body(&mut self) {
        if self.buf.len() < BODY_BUFFER {
            self.buf.resize(BODY_BUFFER, 0);
        }
    }

    /// Frees the buffer while nothing is buffered (an idle connection need not hold one); the
    /// next [`Wire::fill`] allocates a small one again.
    pub fn release_buffer(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the buffer back for reuse (its contents are dropped).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `n` bytes from the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Runs `f` on this wire with its stream swapped for `via` (a reader that also watches
    /// something else while it waits, say): the bytes buffered before stay, and so do those
    /// `f` leaves.
    pub fn reading_through<T, R>(&mut self, via: T, f: impl FnOnce(&mut Wire<T>) -> R) -> R {
        let mut other =
            Wire { stream: via, buf: std::mem::take(&mut self.buf), start: self.start, end: self.end };
        let result = f(&mut other);
        (self.buf, self.start, self.end) = (other.buf, other.start, other.end);
        result
    }

    /// Puts `bytes` back in front of anything read later: the start of a head that waited in
    /// the parker (see `crate::park`) without a worker.
    pub fn preload(&mut self, bytes: &[u8]) {
        self.consume(self.end - self.start);
        if self.buf.len() < bytes.len() {
            self.buf.resize(bytes.len().max(SMALL_BUFFER), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.end = bytes.len();
    }

    /// Reads more bytes after those buffered, growing the buffer up to `limit` bytes.
    /// Returns 0 at end of stream; an error when the buffer is already `limit` bytes.
    /// The read is a wait on a peer, which may hand this worker's place on if it lasts
    /// (see [`crate::threads::gate`]).
    pub fn fill(&mut self, limit: usize) -> io::Result<usize> {
        self.fill_by(limit, |stream, buf| crate::threads::gate::waiting(|| stream.read(buf)))
    }

    /// [`Wire::fill`], reading with `read` (a non-blocking read, say) instead of the stream's
    /// own `read`.
    pub fn fill_by(
        &mut self,
        limit: usize,
        mut read: impl FnMut(&mut S, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, HeadTooLarge));
            }
            let grown = (self.buf.len() * 2).max(SMALL_BUFFER).min(limit);
            self.buf.resize(grown, 0);
        }
        loop {
            match read(&mut self.stream, &mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Buffers until a complete line (ending in `\n`) is available and returns its length
    /// including the newline; `None` at end of stream with nothing buffered. At end of stream
    /// after a partial line, returns that partial line's length.
    pub fn line_len(&mut self, limit: usize) -> io::Result<Option<usize>> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buffered()[scanned..].iter().position(|&b| b == b'\n') {
                return Ok(Some(scanned + i + 1));
            }
            scanned = self.buffered().len();
            if self.fill(limit)? == 0 {
                return Ok((scanned > 0).then_some(scanned));
            }
        }
    }

    /// Reads until `parse` recognises a complete head at the start of the buffer, consumes it,
    /// and returns what `parse` made of it. `parse` answers `Ok(None)` for "incomplete" and
    /// `Ok(Some((head length, value)))` once complete; the buffer grows up to `limit`.
    pub fn read_head<T>(
        &mut self,
        limit: usize,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, String>,
    ) -> Result<T, HeadError> {
        loop {
            if !self.buffered().is_empty() {
                if let Some((len, value)) = parse(self.buffered()).map_err(HeadError::Invalid)? {
                    self.consume(len);
                    return Ok(value);
                }
            }
            match self.fill(limit) {
                Ok(0) if self.buffered().is_empty() => return Err(HeadError::Closed),
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside the head");
                    return Err(HeadError::Io(e));
                }
                Ok(_) => {}
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }
}

/// The error of a [`Wire::fill`] whose buffer reached its limit: a head too large, told apart
/// from other `InvalidData` (a TLS record rustls refused, say).
#[derive(Debug)]
struct HeadTooLarge;

impl std::fmt::Display for HeadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("head too large")
    }
}

impl std::error::Error for HeadTooLarge {}

/// Whether `buf` holds only empty lines, which begin no message (RFC 9112 2.2).
pub fn empty_lines(buf: &[u8]) -> bool {
    buf.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// Whether `e` is [`Wire::fill`]'s "head too large".
pub fn is_head_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<HeadTooLarge>())
}

/// Why [`Wire::read_head`] returned no head.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed before sending a byte of it.
    Closed,
    /// Reading failed, the head outgrew its limit, or the peer closed inside it.
    Io(io::Error),
    /// The head is malformed (the parser's words).
    Invalid(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Closed => f.write_str("connection closed before a head"),
            HeadError::Io(e) => write!(f, "{e}"),
            HeadError::Invalid(why) => f.write_str(why),
        }
    }
}

/// The value of the first header named `name` (case-insensitive).
pub fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Whether a comma-separated header (e.g. `Connection`) lists `token`.
pub fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a message keeps its connection open (RFC 9112 9.3): HTTP/1.1 unless it says
/// `Connection: close`; HTTP/1.0 only when it says `Connection: keep-alive`. The one copy of
/// this rule, for requests and responses alike.
pub fn keep_alive(version: u8, headers: &[httparse::Header<'_>]) -> bool {
    if version == 1 {
        !has_token(headers, "connection", "close")
    } else {
        has_token(headers, "connection", "keep-alive")
    }
}

/// How a request's body is framed (for well-formed requests: chunked wins, then
/// Content-Length, else none). Returns an error text for an unusable Content-Length.
pub fn request_body(headers: &[httparse::Header<'_>]) -> Result<BodyKind, &'static str> {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(BodyKind::Chunked);
    }
    match header(headers, "content-length") {
        None => Ok(BodyKind::Empty),
        Some(v) => parse_length(v).map(BodyKind::Length).ok_or("invalid Content-Length"),
    }
}

/// How a response's body is framed, given the request method and the status.
pub fn response_body(method: &str, status: u16, headers: &[httparse::Header<'_>]) -> BodyKind {
    // Methods are case-sensitive (RFC 9110 9.1): `head` is not HEAD, and its answer has a body.
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return BodyKind::Empty;
    }
    if has_token(headers, "transfer-encoding", "chunked") {
        return BodyKind::Chunked;
    }
    match header(headers, "content-length").and_then(parse_length) {
        Some(n) => BodyKind::Length(n),
        None => BodyKind::UntilClose,
    }
}

/// Parses a Content-Length value: ASCII digits only.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The reason phrase for `status`, as RFC 9110 names it; `Status` for a code no table names.
pub fn reason(status: u16) -> &'static str {
    match status {
        // RFC 9110 renamed these; the http crate's table has the older names.
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        _ => http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status the proxy or the admin listener writes has its name (they sent `405 Status`).
    #[test]
    fn reason_phrases_are_rfc_9110s() {
        let named = [
            (200, "OK"),
            (307, "Temporary Redirect"),
            (401, "Unauthorized"),
            (405, "Method Not Allowed"),
            (413, "Content Too Large"),
            (417, "Expectation Failed"),
            (429, "Too Many Requests"),
            (501, "Not Implemented"),
            (599, "Status"),
        ];
        for (status, name) in named {
            assert_eq!(reason(status), name, "{status}");
        }
    }

    /// A method is case-sensitive (RFC 9110 9.1): only `HEAD` has a bodiless answer. Framing a
    /// `head`'s answer as HEAD's left its body on the backend connection, where the next
    /// client's request would have read it as its own answer.
    #[test]
    fn only_head_in_capitals_frames_an_answer_without_a_body() {
        let length = [httparse::Header { name: "Content-Length", value: b"6" }];
        assert_eq!(response_body("HEAD", 200, &length), BodyKind::Empty);
        for method in ["head", "Head", "GET"] {
            assert_eq!(response_body(method, 200, &length), BodyKind::Length(6), "{method}");
        }
    }

    #[test]
    fn chunked_bodies_decode_and_pipelined_bytes_stay() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let mut wire = Wire::new(&raw[..]);
        let mut out = Vec::new();
        assert_eq!(wire.copy_body(BodyKind::Chunked, &mut out).expect("body"), 11);
        assert_eq!(out, b"hello world");
        assert_eq!(wire.buffered(), b"NEXT");
    }

    #[test]
    fn bad_chunks_and_short_bodies_are_errors() {
        let mut sink = Vec::new();
        let mut wire = Wire::new(&b"zz\r\n"[..]);
        assert!(wire.copy_body(BodyKind::Chunked, &mut sink).is_err());
        let mut wire = Wire::new(&b"abc"[..]);
        assert!(wire.copy_body(BodyKind::Length(5), &mut sink).is_err());
        // A later chunk's size line (its extension) longer than a head may be: named as such.
        let mut raw = b"1\r\nx\r\n1;ext=".to_vec();
        raw.resize(MAX_HEAD * 2, b'e');
        let e = Wire::new(&raw[..]).copy_body(BodyKind::Chunked, &mut sink).expect_err("too long");
        assert_eq!(
            (e.kind(), e.to_string()),
            (io::ErrorKind::InvalidData, "chunk size line too long".into())
        );
        // A bare LF (or another control byte) inside an extension: HAProxy and nginx end the
        // line there, httparse would read on to the CRLF. Refused, so no one frames it apart.
        for bad in
            [&b"3;x\nABC\r\n0\r\n\r\n"[..], b"5;a\nhello\r\n0\r\n\r\n", b"3;x\x00y\r\nabc\r\n0\r\n\r\n"]
        {
            assert!(Wire::new(bad).copy_body(BodyKind::Chunked, &mut sink).is_err(), "{bad:?}");
            assert!(parse_chunk_line(bad).is_err(), "{bad:?}");
        }
        assert!(parse_chunk_line(b"3;x\r").is_ok_and(|s| s.is_partial()));
        assert!(parse_chunk_line(b"3;x\rA").is_err());
        assert_eq!(parse_chunk_line(b"3;x=\"a\tb\"\r\nabc"), Ok(httparse::Status::Complete((11, 3))));
    }

    #[test]
    fn content_length_must_be_digits() {
        assert_eq!(parse_length(b" 12 "), Some(12));
        assert_eq!(parse_length(b"+12"), None);
        assert_eq!(parse_length(b"1,2"), None);
        assert_eq!(parse_length(b""), None);
    }

    #[test]
    fn lines_and_limits() {
        let mut wire = Wire::new(&b"ab\ncd"[..]);
        assert_eq!(wire.line_len(1024).expect("line"), Some(3));
        wire.consume(3);
        assert_eq!(wire.line_len(1024).expect("partial"), Some(2));
        wire.consume(2);
        assert_eq!(wire.line_len(1024).expect("eof"), None);
        let long = vec![b'x'; 100_000];
        let mut wire = Wire::new(&long[..]);
        assert!(wire.line_len(32 * 1024).is_err());
    }
}

#[cfg(test)]
#[path = "properties.rs"]
mod properties;
