//! Watching a plain backend for an early answer while a request body goes to it: the refusal
//! (a 413, a 401) that means the rest of the body is unwanted, noticed whether it arrives while
//! the proxy writes or while it waits on the client, as HAProxy notices it.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::RecvFlags;

use super::context::BackendStream;
use crate::conn::accept::ClientStream;
use crate::relay::{poll_two, timespec};

/// The request body's way to the backend. Each time the body's copy flushes, before a client
/// read that may wait, the proxy waits on the client and the backend at once (one `poll`, for
/// the client's read timeout), and looks at what the backend sent, without taking it. A final
/// answer of 300 or more means the rest of the body is unwanted: the flush fails, and
/// [`super::interim::early_answer`] reads the answer. Anything else the backend may send while it
/// reads on (a `100`, a `103`, the 2xx head of a streamed answer) ends the watch and waits its
/// turn. A `tls` backend is not watched (its bytes say nothing before decryption); a TLS
/// client's wait is not shared (rustls may hold its next bytes already), so its backend is
/// only looked at between reads.
pub struct Watched<'a, W: Write> {
    inner: W,
    backend: Option<&'a TcpStream>,
    client: Option<&'a TcpStream>,
    wait: Option<Duration>,
    /// The client sent nothing for its whole wait: the flush failed for it, not the backend.
    pub client_quiet: bool,
}

/// What a backend has said so far while the body goes to it.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    /// Nothing yet, or not yet a whole status line's first 12 bytes.
    Nothing,
    /// A final answer of 300 or more, or something that is no response at all.
    Refusal,
    /// Something to read after the body (or the connection ended: the next write says so).
    Other,
}

impl<'a, W: Write> Watched<'a, W> {
    /// Watches `backend`, while `client`'s reads wait at most `wait` (none: no limit).
    pub fn new(
        inner: W,
        backend: &'a BackendStream,
        client: &'a ClientStream<'a>,
        wait: Option<Duration>,
    ) -> Watched<'a, W> {
        Watched {
            inner,
            backend: (!backend.is_tls()).then(|| backend.tcp()),
            client: (!client.is_tls()).then(|| client.tcp()),
            wait,
            client_quiet: false,
        }
    }

    /// Flushes what is buffered without looking: once the whole body is written, an answer is
    /// no longer early.
    pub fn finish(mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// Waits for the client's next bytes or the backend's first; whether the backend's came.
    fn wait_either(&mut self, client: &TcpStream, backend: &TcpStream) -> io::Result<bool> {
        let started = Instant::now();
        let timeout = self.wait.map(timespec);
        match poll_two(client, PollFlags::IN, backend, PollFlags::IN, timeout.as_ref()) {
            Some(Ok((_, true))) => Ok(true),
            Some(Ok((false, false))) if self.wait.is_some_and(|w| started.elapsed() >= w) => {
                self.client_quiet = true;
                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            }
            // The client's bytes are there (or a signal came): its read goes ahead.
            _ => Ok(false),
        }
    }
}

impl<W: Write> Write for Watched<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        let Some(backend) = self.backend else { return Ok(()) };
        if let Some(client) = self.client {
            if !self.wait_either(client, backend)? {
                return Ok(());
            }
        }
        let mut first = [0u8; 12];
        let said = match rustix::net::recv(backend, &mut first, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) if n > 0 => said(&first[..n]),
            Err(rustix::io::Errno::AGAIN) => Said::Nothing,
            Ok(_) | Err(_) => Said::Other,
        };
        match said {
            Said::Nothing => Ok(()),
            Said::Other => {
                self.backend = None;
                Ok(())
            }
            Said::Refusal => Err(io::Error::other("the backend answered before the whole body")),
        }
    }
}

/// Reads the start of a response: `HTTP/1.x NNN`.
fn said(first: &[u8]) -> Said {
    const PREFIX: &[u8] = b"HTTP/1.";
    let known = first.len().min(PREFIX.len());
    if first[..known] != PREFIX[..known] {
        return Said::Refusal;
    }
    if first.len() < 12 {
        return Said::Nothing;
    }
    let status = &first[9..12];
    // Digits compare as their bytes do; anything but digits is no status at all.
    if status.iter().all(u8::is_ascii_digit) && status < &b"300"[..] {
        Said::Other
    } else {
        Said::Refusal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_answer_of_300_or_more_or_garbage_is_a_refusal() {
        for (start, expect) in [
            (&b"HTTP/1.1 413 Content Too Large"[..], Said::Refusal),
            (b"HTTP/1.0 302", Said::Refusal),
            (b"HTTP/1.1 501 ", Said::Refusal),
            (b"SMTP", Said::Refusal),
            (b"HTTP/1.1 4x3", Said::Refusal),
            (b"HTTP/1.1 200 OK", Said::Other),
            (b"HTTP/1.1 100 Continue", Said::Other),
            (b"HTTP/1.1 103", Said::Other),
            (b"HTTP/1.1 41", Said::Nothing),
            (b"HT", Said::Nothing),
        ] {
            assert_eq!(said(start), expect, "{}", String::from_utf8_lossy(start));
        }
    }
}
