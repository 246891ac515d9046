//! One `write(2)` per log line in the log file: simplelog's file logger writes a line in pieces
//! (the time, the level, the message, about 19 writes), which costs a syscall each and lets two
//! processes appending to one file (the old and the new one during a takeover) interleave their
//! pieces. [`Lines`] holds the pieces until the line ends and writes it whole, so `O_APPEND`
//! keeps it whole.

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

    /// Writes out the first `end` bytes held.
    fn write_held(&mut self, end: usize) -> io::Result<()> {
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
        // What is held has no newline: only the new piece is searched.
        let ends = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| self.pending.len() + i + 1);
        self.pending.extend_from_slice(buf);
        let end = if self.pending.len() > MOST { self.pending.len() } else { ends };
        self.write_held(end)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_held(self.pending.len())?;
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
