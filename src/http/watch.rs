//! Watching a plain backend for an early answer while a request body goes to it: the refusal
//! (a 413, a 401) that means the rest of the body is unwanted, noticed while the proxy waits on
//! the client, while the client streams, and while the backend has stopped reading, as HAProxy
//! notices it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::context::BackendStream;
use crate::conn::accept::ClientStream;
use crate::net::timespec;

/// Reads between two looks at the backend while the client's bytes keep coming without a
/// wait: a refusal is noticed within 1 MiB of a fast upload (HAProxy, before the same backend,
/// lets about 3 MiB of curl's upload through).
const LOOK_EVERY: u32 = 16;

/// How often a wait looks again at an answer whose status line has only begun to arrive:
/// longer than the gate's [`crate::threads::gate::LONG_WAIT`], so that a write waiting in
/// slices still counts as a wait that may hand this worker's place on.
const PARTIAL_SLICE: Duration = Duration::from_millis(25);

/// The client's side of a request body, read so that the backend is watched too. A read that
/// would wait waits on the client and the backend at once (one `poll`, within the client's
/// read timeout); while the client's bytes keep coming, every [`LOOK_EVERY`]th read peeks at
/// the backend. A final answer of 300 or more from it fails the read with [`is_refusal`], and
/// [`super::interim::early_answer`] reads the answer. Anything else the backend sends while it
/// reads on (a `100`, a `103`, the 2xx head of a streamed answer) ends the watch and waits its
/// turn. A `tls` backend is not watched (its bytes say nothing before decryption), nor is the
/// backend of a TLS client (rustls may hold the client's next bytes already, where no `poll`
/// sees them).
pub struct Watching<'a> {
    client: &'a ClientStream<'a>,
    backend: Option<&'a TcpStream>,
    /// The client read's timeout: the wait on both counts as the read's.
    wait: Option<Duration>,
    reads: u32,
}

/// The read error that says the backend refused the rest of the body: it answered
/// (`Answered`), or it closed or reset its connection (`Gone`), after which no answer can
/// follow and the client is not kept sending into the void.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Answered,
    Gone,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Answered => "the backend answered before the whole body",
            Refused::Gone => "the backend closed the connection before the whole body",
        })
    }
}

impl std::error::Error for Refused {}

/// Whether a body read failed because the backend refused the rest (see [`Refused`]).
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

/// What a backend has said so far while the body goes to it.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    /// Nothing yet, or not yet a whole status line's first 12 bytes.
    Nothing,
    /// A final answer of 300 or more, or something that is no response at all.
    Refusal,
    /// Something to read after the body.
    Other,
    /// The connection ended (EOF or an error) with nothing to read.
    Closed,
}

impl Said {
    /// The error that ends a watch that saw a refusal (or, `Closed`, a close).
    fn error(self) -> io::Error {
        match self {
            Said::Closed => io::Error::other(Refused::Gone),
            _ => io::Error::other(Refused::Answered),
        }
    }
}

impl<'a> Watching<'a> {
    /// Reads from `client`, whose reads wait at most `wait` (none: no limit), watching
    /// `backend` if `watched` (see [`watchable`]).
    pub fn new(
        client: &'a ClientStream<'a>,
        backend: &'a BackendStream,
        wait: Option<Duration>,
        watched: bool,
    ) -> Watching<'a> {
        let watched = watched && !backend.is_tls() && !client.is_tls();
        Watching { client, backend: watched.then(|| backend.tcp()), wait, reads: 0 }
    }

    /// Looks at what the backend sent; a refusal is an error, anything else ends the watch.
    fn look(&mut self, backend: &TcpStream) -> io::Result<()> {
        match look(backend) {
            Said::Nothing => Ok(()),
            Said::Other => {
                self.backend = None;
                Ok(())
            }
            said @ (Said::Refusal | Said::Closed) => Err(said.error()),
        }
    }
}

/// Whether the backend's socket can be watched, given what its wire already holds before the
/// body: nothing, normally. After `Expect: 100-continue`, the bytes that came with the `100`
/// are the start of its answer: the socket holds the middle of it, where a look would see
/// garbage, so it is not watched; and if those bytes are a refusal, that is the error.
pub fn watchable(buffered: &[u8]) -> io::Result<bool> {
    match buffered {
        [] => Ok(true),
        start if said(start) == Said::Refusal => Err(io::Error::other(Refused::Answered)),
        _ => Ok(false),
    }
}

/// What the backend sent so far, looked at without taking it.
fn look(backend: &TcpStream) -> Said {
    let mut first = [0u8; 64];
    match rustix::net::recv(backend, &mut first, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        // So many bytes and still no status: empty lines without end, say no more about it.
        Ok((n, _)) if n == first.len() && said(&first) == Said::Nothing => Said::Other,
        Ok((n, _)) if n > 0 => said(&first[..n]),
        Err(Errno::AGAIN) => Said::Nothing,
        Ok(_) | Err(_) => Said::Closed,
    }
}

/// The request body's writes to the backend. A write the backend makes wait (it stopped
/// reading) waits for room or for its answer, whichever comes first (one `poll`, within the
/// write timeout): a refusal fails the write with [`is_refusal`]. A `tls` backend is written
/// as it is (its bytes say nothing before decryption).
pub struct WatchedWrites<'a> {
    stream: &'a BackendStream,
    backend: Option<&'a TcpStream>,
    wait: Option<Duration>,
}

impl<'a> WatchedWrites<'a> {
    /// Writes to `stream`, whose writes wait at most `wait` (none: no limit), watching it if
    /// `watched` (see [`watchable`]).
    pub fn new(stream: &'a BackendStream, wait: Option<Duration>, watched: bool) -> WatchedWrites<'a> {
        WatchedWrites { stream, backend: (watched && !stream.is_tls()).then(|| stream.tcp()), wait }
    }
}

impl Write for WatchedWrites<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut stream = self.stream;
        let Some(backend) = self.backend else { return stream.write(buf) };
        let send = || crate::net::send_now(backend, buf);
        match crate::threads::gate::waiting(|| until_done(backend, PollFlags::OUT, backend, self.wait, send))?
        {
            Waited::Done(done) => done,
            Waited::Unwatched => {
                self.backend = None;
                stream.write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut stream = self.stream;
        stream.flush()
    }
}

impl Read for Watching<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if let Some(backend) = self.backend.filter(|_| self.reads.is_multiple_of(LOOK_EVERY)) {
            self.look(backend)?;
        }
        let Some(backend) = self.backend else { return self.client.read(buf) };
        let client = self.client.tcp();
        // Inside `Wire::fill`'s wait already: the whole read is one wait for the gate.
        match until_done(client, PollFlags::IN, backend, self.wait, || crate::net::recv(client, buf, false))?
        {
            Waited::Done(done) => done,
            Waited::Unwatched => {
                self.backend = None;
                self.client.read(buf)
            }
        }
    }
}

/// What a watched wait came to.
enum Waited {
    /// The read or write went ahead: its result.
    Done(io::Result<usize>),
    /// The backend said something other than a refusal: the watch ends, and the caller waits
    /// as before it (those bytes wait their turn).
    Unwatched,
}

/// Tries `attempt` (a read or write that must not wait) until it would not wait. In between
/// it waits, within `wait`, for `peer` to be `ready` or for the backend's answer, which a
/// refusal makes the error. An answer whose status has only begun is looked at again each
/// [`PARTIAL_SLICE`] while the wait is on `peer` alone (poll would report the same bytes at
/// once, for ever). For a write, `peer` is the backend itself.
fn until_done(
    peer: &TcpStream,
    ready: PollFlags,
    backend: &TcpStream,
    wait: Option<Duration>,
    mut attempt: impl FnMut() -> io::Result<usize>,
) -> io::Result<Waited> {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut partial = false;
    loop {
        match attempt() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Ok(Waited::Done(done)),
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let mut fds = [PollFd::new(peer, ready), PollFd::new(backend, PollFlags::IN)];
        let (polled, slice) = match partial {
            false => (&mut fds[..], left),
            true => (&mut fds[..1], Some(left.map_or(PARTIAL_SLICE, |l| l.min(PARTIAL_SLICE)))),
        };
        match poll(polled, slice.map(timespec).as_ref()) {
            Ok(_) if partial || !fds[1].revents().is_empty() => match look(backend) {
                Said::Nothing => partial = true,
                Said::Other => return Ok(Waited::Unwatched),
                said @ (Said::Refusal | Said::Closed) => return Err(said.error()),
            },
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the start of a response: `HTTP/1.x NNN`, after any empty lines (which httparse
/// skips too).
fn said(first: &[u8]) -> Said {
    const PREFIX: &[u8] = b"HTTP/1.";
    let lines = first.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let first = &first[lines..];
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
            (b"\r\nHTTP/1.1 200", Said::Other),
            (b"\r\n", Said::Nothing),
        ] {
            assert_eq!(said(start), expect, "{}", String::from_utf8_lossy(start));
        }
    }

    #[test]
    fn what_came_with_a_100_decides_whether_the_socket_is_watched() {
        assert!(watchable(b"").expect("nothing yet"));
        assert!(!watchable(b"HTTP/1.1 200 OK\r\n").expect("a streamed 200"));
        assert!(!watchable(b"HTTP/1.1 2").expect("a status begun"));
        assert!(watchable(b"HTTP/1.1 413 Content Too Large\r\n").is_err_and(|e| is_refusal(&e)));
    }

    #[test]
    fn a_look_past_64_bytes_of_empty_lines_ends_the_watch() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let pair = || {
            let backend = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            (backend, listener.accept().expect("accept").0)
        };
        let (mut backend, proxy_side) = pair();
        assert_eq!(look(&proxy_side), Said::Nothing, "nothing sent");
        backend.write_all(b"HTTP/1.1 4").expect("send");
        // A blocking peek waits until the bytes are there, and takes none.
        proxy_side.peek(&mut [0u8; 1]).expect("readable");
        assert_eq!(look(&proxy_side), Said::Nothing, "a status begun");
        let (mut backend, proxy_side) = pair();
        backend.write_all(&[b'\n'; 64]).expect("send");
        proxy_side.peek(&mut [0u8; 1]).expect("readable");
        assert_eq!(look(&proxy_side), Said::Other);
    }
}
