//! Streaming a body from a [`Wire`] to a writer, re-framed and size-limited, and the write
//! buffer ([`Coalesce`]) that lets a head and a small body leave in one syscall.

use std::io::{self, Read, Write};

use super::{BodyKind, Wire, SMALL_BUFFER};

/// Which end of a body copy failed.
#[derive(Debug)]
pub enum BodyError {
    /// Reading or decoding the source failed (bad chunk, early EOF, reset, timeout).
    Source(io::Error),
    /// Writing to the destination failed.
    Sink(io::Error),
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
            io::Error::new(kind, "sink")
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Read> Wire<S> {
    /// Streams a body of kind `kind` from this wire to `dst` through the buffer, re-framed as
    /// chunked when `chunk_out` (else written as is), refusing more than `limit` bytes.
    /// Returns the body's length.
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
        let result = self.copy_body(kind, &mut framed);
        let (written, sink_error, too_large) = (framed.written, framed.sink_error.take(), framed.too_large);
        match result {
            Ok(n) => {
                if chunk_out {
                    dst.write_all(b"0\r\n\r\n").map_err(BodyError::Sink)?;
                }
                debug_assert_eq!(n, written);
                Ok(n)
            }
            Err(_) if too_large => Err(BodyError::TooLarge),
            Err(_) if sink_error.is_some() => {
                Err(BodyError::Sink(sink_error.unwrap_or_else(|| io::Error::other("sink"))))
            }
            Err(e) => Err(BodyError::Source(e)),
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
