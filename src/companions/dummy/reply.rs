//! The dummy's HTTP responses as values: a status, a body (bytes, or a generated pattern that
//! never sits in memory) and how to frame it. Written whole for ordinary requests, or in
//! pieces by the fault lab ([`super::fault`]), which needs a head with a chosen
//! Content-Length and byte ranges of the body.

use std::io::{self, Write};

use crate::h1 as h;
use crate::h1::respond::SimpleResponse;

/// A response about to be written.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Sent as `X-Served-By`.
    pub served_by: String,
    /// Echoed as `X-Request-ID` when the request had one.
    pub request_id: Option<Vec<u8>>,
    /// False: `Connection: close` is sent and the connection ends after this response.
    pub keep_alive: bool,
    /// The request was HEAD: the head says what the body would be, but no body follows.
    pub head_only: bool,
    /// Send the body chunked (ordinary responses only; faults always use Content-Length).
    pub chunked: bool,
    /// The body.
    pub body: Payload,
}

/// A response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `n` bytes of the [`pattern_byte`] pattern, generated as they are written (`?bytes=N`).
    Pattern(u64),
}

/// How a head frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n` (which a fault may set to something other than the body's length).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Payload {
    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Pattern(n) => *n,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes bytes `from..to` of the body (clamped to its length), unframed.
    pub fn write_range(&self, out: &mut (impl Write + ?Sized), from: u64, to: u64) -> io::Result<()> {
        let to = to.min(self.len());
        if from >= to {
            return Ok(());
        }
        match self {
            Payload::Bytes(b) => out.write_all(&b[from as usize..to as usize]),
            Payload::Pattern(_) => {
                // A block is a whole number of pattern periods, so one built from `from` serves
                // every later offset too.
                let block: Vec<u8> = (from..from + (to - from).min(64 * 26)).map(pattern_byte).collect();
                let mut at = from;
                while at < to {
                    let take = (to - at).min(block.len() as u64) as usize;
                    out.write_all(&block[..take])?;
                    at += take as u64;
                }
                Ok(())
            }
        }
    }
}

impl Reply {
    /// The head, ending with the blank line, framing the body as `framing` says.
    pub fn head(&self, framing: Framing) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nX-Served-By: {}\r\n",
            self.status,
            h::reason(self.status),
            self.served_by
        );
        if let Some(id) = &self.request_id {
            head.push_str(&format!("X-Request-ID: {}\r\n", String::from_utf8_lossy(id)));
        }
        head.push_str("Content-Type: text/plain\r\n");
        match framing {
            Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
            Framing::Length(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// Writes the whole response, correctly framed (no body after a HEAD request).
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let framing = if self.chunked { Framing::Chunked } else { Framing::Length(self.body.len()) };
        out.write_all(&self.head(framing))?;
        if self.head_only {
            return out.flush();
        }
        if !self.chunked {
            return self.body.write_range(out, 0, self.body.len());
        }
        let mut chunk = ChunkWriter(out);
        self.body.write_range(&mut chunk, 0, self.body.len())?;
        chunk.0.write_all(b"0\r\n\r\n")
    }
}

/// Frames each write as one chunk.
struct ChunkWriter<'a, W: Write>(&'a mut W);

impl<W: Write> Write for ChunkWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.0.write_all(format!("{:x}\r\n", buf.len()).as_bytes())?;
        self.0.write_all(buf)?;
        self.0.write_all(b"\r\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes a complete error response that closes the connection (the shared simple-response
/// writer, so it carries a `Date` like the proxy's own).
pub fn write_error(out: &mut impl Write, served_by: &str, status: u16, why: &str) -> io::Result<()> {
    let body = format!("{why}\n");
    let headers = [("X-Served-By", served_by), ("Content-Type", "text/plain")];
    SimpleResponse { status, headers: &headers, body: body.as_bytes(), close: true }.write_to(out).map(drop)
}

/// FNV-1a (64-bit) of everything written: lets tests check that a body arrived intact.
#[derive(Debug, Clone, Copy)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }
}

impl Write for Checksum {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The byte at offset `i` of a `?bytes=N` body: a repeating a..z pattern, so checksums differ
/// with length and position.
pub fn pattern_byte(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: Payload, chunked: bool) -> Reply {
        Reply {
            status: 200,
            served_by: "t".into(),
            request_id: None,
            keep_alive: true,
            head_only: false,
            chunked,
            body,
        }
    }

    #[test]
    fn pattern_ranges_match_the_pattern_at_any_offset() {
        let p = Payload::Pattern(5000);
        let mut out = Vec::new();
        p.write_range(&mut out, 7, 4000).expect("write");
        let want: Vec<u8> = (7..4000).map(pattern_byte).collect();
        assert_eq!(out, want);
        out.clear();
        p.write_range(&mut out, 4990, 9999).expect("write");
        assert_eq!(out.len(), 10, "clamped to the body's length");
    }

    #[test]
    fn chunked_replies_frame_every_write_and_end_with_a_last_chunk() {
        let mut out = Vec::new();
        reply(Payload::Bytes(b"hello".to_vec()), true).write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    }

    #[test]
    fn head_requests_get_the_length_but_no_body() {
        let mut r = reply(Payload::Pattern(10), false);
        r.head_only = true;
        let mut out = Vec::new();
        r.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with("Content-Length: 10\r\n\r\n"), "{text}");
    }
}
