//! Streaming a body from a [`Wire`] to a writer: decoded, re-framed and size-limited, written
//! out before every read that may wait, and the write buffer ([`Coalesce`]) that lets a head
//! and a small body leave in one syscall.

use std::io::{self, Read, Write};

use super::{trailers, BodyKind, Wire, MAX_HEAD, SMALL_BUFFER};

/// A chunk-size line (`1a;ext=v\r\n`), as `httparse::parse_chunk_size`, but a bare LF or any
/// other control byte before the CRLF is refused: httparse reads an extension on to the CRLF,
/// where HAProxy and nginx end the line at the LF, so the chunk would end in a different place
/// for a proxy or backend beside this one.
pub fn parse_chunk_line(buf: &[u8]) -> Result<httparse::Status<(usize, u64)>, httparse::InvalidChunkSize> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    // The CR that ends the line: right before its LF, or the last byte so far.
    let body = line.strip_suffix(b"\r").unwrap_or(line);
    let control = |&b: &u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    if body.iter().any(control) || (line_end.is_some() && body.len() == line.len()) {
        return Err(httparse::InvalidChunkSize);
    }
    httparse::parse_chunk_size(buf)
}

/// Which end of a body copy failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading or decoding the source failed (bad chunk, early EOF, reset, timeout), after this
    /// many body bytes had gone to the destination (a truncated body: the access log counts them).
    Source(io::Error, u64),
    /// Writing to the destination failed, after this many body bytes had been handed to it
    /// (the failed write's not among them; up to a [`Coalesce`] buffer of them may not have
    /// left): the access log counts them, as nginx's `$bytes_sent` counts what went out.
    Sink(io::Error, u64),
    /// The body is larger than the limit.
    TooLarge,
}

/// A writer that applies chunked framing (when `chunked`), enforces a size limit, and remembers
/// whether an error came from the destination.
struct Framed<'a, W: Write> {
    inner: &'a mut W,
    chunked: bool,
    limit: Option<u64>,
    written: u64,
    sink_error: Option<io::Error>,
    too_large: bool,
}

impl<W: Write> Write for Framed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.written += buf.len() as u64;
        if self.limit.is_some_and(|l| self.written > l) {
            self.too_large = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        let result = if self.chunked {
            let size = format!("{:x}\r\n", buf.len());
            self.inner
                .write_all(size.as_bytes())
                .and_then(|()| self.inner.write_all(buf))
                .and_then(|()| self.inner.write_all(b"\r\n"))
        } else {
            self.inner.write_all(buf)
        };
        result.map_err(|e| {
            let kind = e.kind();
            self.sink_error = Some(e);
            self.written -= buf.len() as u64;
            io::Error::new(kind, "sink")
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| {
            let kind = e.kind();
            self.sink_error = Some(e);
            io::Error::new(kind, "sink")
        })
    }
}

impl<S: Read> Wire<S> {
    /// Copies a body of kind `kind` to `sink` (decoded, for chunked), through the buffer, and
    /// returns its length. Trailers are checked and dropped (see [`Wire::forward_body`] for a
    /// copy that keeps them).
    ///
    /// Flush before you block: before every read that may wait, `sink` is flushed, so what has
    /// arrived goes on at once (Server-Sent Events, long polls, progress output); only what is
    /// already buffered is coalesced.
    pub fn copy_body(&mut self, kind: BodyKind, sink: &mut impl Write) -> io::Result<u64> {
        self.copy_body_keeping(kind, sink, &mut Vec::new())
    }

    /// [`Wire::copy_body`], appending the allowed trailer fields of a chunked body to `trailers`.
    fn copy_body_keeping(
        &mut self,
        kind: BodyKind,
        sink: &mut impl Write,
        trailers: &mut Vec<u8>,
    ) -> io::Result<u64> {
        match kind {
            BodyKind::Empty => Ok(0),
            BodyKind::Length(n) => self.copy_exact(n, sink),
            BodyKind::UntilClose => {
                let mut total = 0u64;
                loop {
                    if self.buffered().is_empty() && self.refill(MAX_HEAD, sink)? == 0 {
                        return Ok(total);
                    }
                    let n = self.buffered().len();
                    sink.write_all(self.buffered())?;
                    self.consume(n);
                    total += n as u64;
                }
            }
            BodyKind::Chunked => {
                let mut total = 0u64;
                loop {
                    let size = self.chunk_size(sink)?;
                    if size == 0 {
                        self.trailers(sink, trailers)?;
                        return Ok(total);
                    }
                    total += self.copy_exact(size, sink)?;
                    self.expect_crlf(sink)?;
                }
            }
        }
    }

    /// Reads more after what is buffered, first writing out what `sink` holds.
    fn refill(&mut self, limit: usize, sink: &mut impl Write) -> io::Result<usize> {
        sink.flush()?;
        // So much buffered and more wanted: one unfinished chunk-size line (trailers check
        // their own), which `fill` would call a head too large.
        if self.buffered().len() >= limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk size line too long"));
        }
        self.fill(limit)
    }

    fn copy_exact(&mut self, mut n: u64, sink: &mut impl Write) -> io::Result<u64> {
        let want = n;
        while n > 0 {
            if self.buffered().is_empty() && self.refill(MAX_HEAD, sink)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early"));
            }
            let take = (self.buffered().len() as u64).min(n) as usize;
            sink.write_all(&self.buffered()[..take])?;
            self.consume(take);
            n -= take as u64;
        }
        Ok(want)
    }

    fn chunk_size(&mut self, sink: &mut impl Write) -> io::Result<u64> {
        loop {
            match parse_chunk_line(self.buffered()) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.consume(used);
                    return Ok(size);
                }
                Ok(httparse::Status::Partial) => {
                    if self.refill(4096, sink)? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk size"));
                    }
                }
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")),
            }
        }
    }

    fn expect_crlf(&mut self, sink: &mut impl Write) -> io::Result<()> {
        while self.buffered().len() < 2 {
            if self.refill(MAX_HEAD, sink)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunk end"));
            }
        }
        if &self.buffered()[..2] != b"\r\n" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk not followed by CRLF"));
        }
        self.consume(2);
        Ok(())
    }

    /// Reads the trailer section after the last chunk, up to its blank line; a malformed one
    /// is `InvalidData`. The fields a trailer may carry are appended to `kept`.
    fn trailers(&mut self, sink: &mut impl Write, kept: &mut Vec<u8>) -> io::Result<()> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("trailers: {why}"));
        loop {
            let mark = kept.len();
            match trailers::parse(self.buffered(), kept) {
                Ok(Some(len)) => {
                    self.consume(len);
                    return Ok(());
                }
                Ok(None) if self.buffered().len() >= MAX_HEAD => return Err(invalid("too large")),
                Ok(None) => {
                    kept.truncate(mark);
                    if self.refill(MAX_HEAD, sink)? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "trailers"));
                    }
                }
                Err(why) => return Err(invalid(why)),
            }
        }
    }
}

impl<S: Read> Wire<S> {
    /// Streams a body of kind `kind` from this wire to `dst` through the buffer, re-framed as
    /// chunked when `chunk_out` (else written as is), refusing more than `limit` bytes.
    /// Returns the body's length. A chunked body's trailers go on when both sides are chunked
    /// (as HAProxy forwards them), without the fields a trailer must not carry; they are
    /// dropped when the body is re-framed otherwise.
    pub fn forward_body(
        &mut self,
        kind: BodyKind,
        dst: &mut impl Write,
        chunk_out: bool,
        limit: Option<u64>,
    ) -> Result<u64, BodyError> {
        let large = match kind {
            BodyKind::Length(n) => n > SMALL_BUFFER as u64,
            BodyKind::Chunked | BodyKind::UntilClose => true,
            BodyKind::Empty => false,
        };
        if large {
            self.grow_for_body();
        }
        let mut framed =
            Framed { inner: dst, chunked: chunk_out, limit, written: 0, sink_error: None, too_large: false };
        let mut kept = Vec::new();
        let result = self.copy_body_keeping(kind, &mut framed, &mut kept);
        let (written, sink_error, too_large) = (framed.written, framed.sink_error.take(), framed.too_large);
        match result {
            Ok(n) => {
                if chunk_out {
                    dst.write_all(b"0\r\n")
                        .and_then(|()| dst.write_all(&kept))
                        .and_then(|()| dst.write_all(b"\r\n"))
                        .map_err(|e| BodyError::Sink(e, written))?;
                }
                debug_assert_eq!(n, written);
                Ok(n)
            }
            Err(_) if too_large => Err(BodyError::TooLarge),
            Err(_) if sink_error.is_some() => {
                Err(BodyError::Sink(sink_error.unwrap_or_else(|| io::Error::other("sink")), written))
            }
            Err(e) => Err(BodyError::Source(e, written)),
        }
    }
}

/// A write buffer over a borrowed `Vec`, so a head and a small body leave in one syscall and
/// the allocation is reused across requests. Writes larger than the buffer go straight through.
pub struct Coalesce<'a, W: Write> {
    inner: W,
    buf: &'a mut Vec<u8>,
}

/// Size at which [`Coalesce`] flushes.
pub const COALESCE: usize = 16 * 1024;

impl<'a, W: Write> Coalesce<'a, W> {
    /// Buffers writes to `inner` in `buf` (cleared first).
    pub fn new(inner: W, buf: &'a mut Vec<u8>) -> Coalesce<'a, W> {
        buf.clear();
        Coalesce { inner, buf }
    }

    /// Buffers writes to `inner` after what `buf` already holds (left there by an earlier
    /// `Coalesce` that was not flushed).
    pub fn resume(inner: W, buf: &'a mut Vec<u8>) -> Coalesce<'a, W> {
        Coalesce { inner, buf }
    }
}

impl<W: Write> Write for Coalesce<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() > COALESCE {
            self.flush()?;
            if data.len() >= COALESCE {
                return self.inner.write_all(data);
            }
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = self.inner.write_all(self.buf);
            self.buf.clear();
            result?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    /// A source that hands out `pieces` one read at a time and records, at each read, what the
    /// sink had received by then: the reads that would block on a socket.
    struct Pieces {
        pieces: Vec<&'static [u8]>,
        sink: Rc<RefCell<Vec<u8>>>,
        seen_at_read: Vec<usize>,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.seen_at_read.push(self.sink.borrow().len());
            if self.pieces.is_empty() {
                return Ok(0);
            }
            let p = self.pieces.remove(0);
            buf[..p.len()].copy_from_slice(p);
            Ok(p.len())
        }
    }

    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn forward(pieces: Vec<&'static [u8]>, kind: BodyKind, chunk_out: bool) -> (Vec<u8>, Vec<usize>) {
        let sink = Rc::new(RefCell::new(b"HEAD".to_vec()));
        let mut wire = Wire::new(Pieces { pieces, sink: sink.clone(), seen_at_read: Vec::new() });
        let mut buf = Vec::new();
        let mut out = Coalesce::resume(Shared(sink.clone()), &mut buf);
        out.write_all(b"+").expect("buffered");
        wire.forward_body(kind, &mut out, chunk_out, None).expect("forwarded");
        out.flush().expect("flush");
        let seen = std::mem::take(&mut wire.stream.seen_at_read);
        let written = sink.borrow().clone();
        (written, seen)
    }

    #[test]
    fn what_has_arrived_is_written_out_before_every_read_that_may_wait() {
        // Chunked, each piece in its own read: before each later read, everything decoded so far
        // (and the head before the body) has reached the sink, none of it held for coalescing,
        // re-chunked as it came.
        let (out, seen) =
            forward(vec![b"3\r\nab", b"c\r\n", b"2\r\nde\r\n", b"0\r\n\r\n"], BodyKind::Chunked, true);
        assert_eq!(out, b"HEAD+2\r\nab\r\n1\r\nc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(seen, [5, 12, 18, 25]);
        // Until close: each piece goes on before the next read.
        let (out, seen) = forward(vec![b"data: 1\n\n", b"data: 2\n\n"], BodyKind::UntilClose, false);
        assert_eq!(out, b"HEAD+data: 1\n\ndata: 2\n\n");
        assert_eq!(seen, [5, 14, 23]);
    }

    #[test]
    fn what_is_already_buffered_is_coalesced() {
        // Head and whole body in one read: nothing is written until the caller flushes.
        let (out, seen) = forward(vec![b"5\r\nhello\r\n0\r\n\r\n"], BodyKind::Chunked, true);
        assert_eq!(out, b"HEAD+5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(seen, [5]);
    }

    #[test]
    fn trailers_go_on_between_chunked_ends_and_are_dropped_when_re_framed() {
        let body: &[u8] = b"2\r\nhi\r\n0\r\nServer-Timing: db;dur=5\r\nContent-Length: 9\r\n\r\n";
        let (out, _) = forward(vec![body], BodyKind::Chunked, true);
        assert_eq!(out, b"HEAD+2\r\nhi\r\n0\r\nServer-Timing: db;dur=5\r\n\r\n");
        let (out, _) = forward(vec![body], BodyKind::Chunked, false);
        assert_eq!(out, b"HEAD+hi");
    }

    #[test]
    fn a_malformed_trailer_is_a_source_error_and_no_clean_end_is_written() {
        let mut wire = Wire::new(&b"2\r\nhi\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..]);
        let mut out = Vec::new();
        match wire.forward_body(BodyKind::Chunked, &mut out, true, None) {
            Err(BodyError::Source(e, _)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            other => panic!("{other:?}"),
        }
        assert_eq!(out, b"2\r\nhi\r\n");
    }
}
