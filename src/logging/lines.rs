//! One `write(2)` per log line: simplelog writes a line in pieces (the time, the level, the
//! message, about 19 writes), which costs a syscall each and lets two processes appending to one
//! file (the old and the new one during a takeover) interleave their pieces. [`Lines`] holds the
//! pieces until the line ends and writes it whole, so `O_APPEND` keeps it whole.

use std::io::{self, Write};

/// A line longer than this is written in parts rather than held.
const MOST: usize = 64 * 1024;

/// Writes to `out` whole lines at a time.
#[derive(Debug)]
pub struct Lines<W: Write> {
    out: W,
    pending: Vec<u8>,
}

impl<W: Write> Lines<W> {
    pub fn new(out: W) -> Lines<W> {
        Lines { out, pending: Vec::with_capacity(256) }
    }

    /// Writes out what is held up to (and with) its last newline, or all of it when `all`.
    fn write_held(&mut self, all: bool) -> io::Result<()> {
        let end = if all {
            self.pending.len()
        } else {
            self.pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        if end == 0 {
            return Ok(());
        }
        let written = self.out.write_all(&self.pending[..end]);
        // Written or refused, those bytes are done with: a failing disk must not grow the buffer.
        self.pending.drain(..end);
        written
    }
}

impl<W: Write> Write for Lines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.write_held(self.pending.len() > MOST)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_held(true)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write it gets.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_written_in_pieces_goes_out_in_one_write() {
        let mut l = Lines::new(Writes::default());
        for piece in ["2026-12-07 ", "[INFO]", " ", "req 1", "\n"] {
            l.write_all(piece.as_bytes()).expect("write");
        }
        l.write_all(b"two\nthr").expect("write");
        assert_eq!(l.out.0, [b"2026-12-07 [INFO] req 1\n".to_vec(), b"two\n".to_vec()]);
        l.write_all(b"ee\n").expect("write");
        assert_eq!(l.out.0.last().map(Vec::as_slice), Some(&b"three\n"[..]));
        // A line without end is not held past MOST, nor past a flush.
        l.write_all(&vec![b'x'; MOST + 1]).expect("write");
        assert_eq!(l.out.0.last().map(Vec::len), Some(MOST + 1));
        l.write_all(b"tail").expect("write");
        l.flush().expect("flush");
        assert_eq!(l.out.0.last().map(Vec::as_slice), Some(&b"tail"[..]));
    }
}
