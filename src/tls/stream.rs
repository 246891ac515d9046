//! A connection that is plain TCP or TLS over TCP, read and written through `&Stream` as a
//! `&TcpStream` is, so the HTTP path serves both with the same code; and the server-side
//! handshake, bounded by a deadline, that tells plain HTTP and garbage on a TLS port apart.
//!
//! The plain variant costs one `match` per call. The TLS variant keeps rustls' state behind an
//! uncontended lock: only the thread that owns the connection ever takes it, one call at a time.
//! Timeouts, shutdown and the registry work on the TCP socket underneath ([`Stream::tcp`]).

use std::borrow::Borrow;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use rustls::server::{Acceptor, ClientHello};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::net::is_timeout;

/// Plain TCP, or TLS over it. `S` is the socket, owned or borrowed.
#[derive(Debug)]
pub enum Stream<S: Borrow<TcpStream>> {
    Plain(S),
    /// Boxed: rustls' state is large, and a worker's stack stays small (see `crate::threads::stack`).
    Tls(S, Box<Mutex<Connection>>),
}

impl<S: Borrow<TcpStream>> Stream<S> {
    /// The TCP socket underneath, for timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) | Stream::Tls(s, _) => s.borrow(),
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(..))
    }

    /// The TLS state, to keep while the connection waits in the parker.
    pub fn into_session(self) -> Option<Box<Mutex<Connection>>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(_, c) => Some(c),
        }
    }

    /// Splits into the socket and the TLS state, for the tunnel relay.
    pub fn into_parts(self) -> (S, Option<Connection>) {
        match self {
            Stream::Plain(s) => (s, None),
            Stream::Tls(s, c) => (s, Some(Mutex::into_inner(*c))),
        }
    }

    /// Before a close: a TLS client is sent `close_notify`, as far as the socket takes it now
    /// ([`notify_close`]). Plain TCP needs nothing.
    pub fn notify_close(&self) {
        if let Stream::Tls(s, c) = self {
            notify_close(&mut c.lock(), s.borrow());
        }
    }
}

/// Writes to a socket without waiting.
pub struct NoWait<'a>(pub &'a TcpStream);

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::net::send_now(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Queues `close_notify` and sends what the socket takes of it now, without waiting: a best
/// effort before a close, so that a client that stopped reading cannot hold the closer for a
/// write timeout (records still queued before the alert are as good as lost anyway).
pub fn notify_close(c: &mut Connection, sock: &TcpStream) {
    c.send_close_notify();
    while c.wants_write() {
        if !matches!(c.write_tls(&mut NoWait(sock)), Ok(1..)) {
            break;
        }
    }
}

/// Writes every pending TLS record to `sock` (blocking, within the socket's write timeout).
pub fn flush_tls(c: &mut Connection, mut sock: &TcpStream) -> io::Result<()> {
    while c.wants_write() {
        crate::threads::gate::waiting(|| c.write_tls(&mut sock))?;
    }
    Ok(())
}

/// Reads plaintext, reading and decrypting records from `sock` as needed. `Ok(0)` at the end
/// (`close_notify`, or the TCP stream's end: framing above tells a truncated message, but for
/// a body read until the close, which then looks whole, as with nginx and HAProxy).
pub fn read_tls_plain(c: &mut Connection, sock: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    read_plain(c, sock, buf, false)
}

/// [`read_tls_plain`] without waiting: `WouldBlock` when neither rustls nor the socket holds
/// anything more for now.
pub fn read_tls_plain_now(c: &mut Connection, sock: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    read_plain(c, sock, buf, true)
}

/// Whether plaintext that was received waits in rustls (the socket would not say so).
pub fn has_plaintext(c: &mut Connection) -> bool {
    c.process_new_packets().map_or(true, |state| state.plaintext_bytes_to_read() > 0)
}

fn read_plain(c: &mut Connection, sock: &TcpStream, buf: &mut [u8], nowait: bool) -> io::Result<usize> {
    let mut reader = Reader { sock, nowait, within: None };
    loop {
        match c.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if c.wants_write() {
            flush_tls(c, sock)?;
        }
        if c.read_tls(&mut reader)? == 0 {
            return Ok(0);
        }
        if let Err(e) = c.process_new_packets() {
            // The alert rustls queued tells the peer why.
            let _ = flush_tls(c, sock);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

impl<S: Borrow<TcpStream>> Read for &Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.borrow().read(buf),
            Stream::Tls(s, c) => read_tls_plain(&mut c.lock(), s.borrow(), buf),
        }
    }
}

impl<S: Borrow<TcpStream>> Write for &Stream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            // A write blocks while the peer reads slowly (or not at all): a wait on a peer.
            Stream::Plain(s) => crate::threads::gate::waiting(|| s.borrow().write(buf)),
            Stream::Tls(s, c) => {
                let mut c = c.lock();
                let n = c.writer().write(buf)?;
                flush_tls(&mut c, s.borrow())?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(s, c) => flush_tls(&mut c.lock(), s.borrow()),
        }
    }
}

/// How a server-side handshake ended.
#[derive(Debug)]
pub enum Handshake {
    /// Done: the connection speaks TLS now.
    Done(Box<ServerConnection>),
    /// The first bytes were a plain HTTP request (an uppercase letter, not a TLS record).
    PlainHttp,
    /// Not TLS and not HTTP, or a handshake that failed (the reason).
    Failed(String),
    /// The peer closed before finishing.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// The client has sent nothing more for now: park it, and go on from this state.
    Waiting(Pending),
}

/// A TLS record of type handshake starts with this byte.
const HANDSHAKE_RECORD: u8 = 0x16;

/// A server handshake waiting for the client's next bytes without a thread: its state travels
/// with the connection (rustls is sans-I/O) while it waits in the parker.
pub enum Pending {
    /// Nothing read yet.
    Fresh,
    /// Reading the ClientHello.
    Hello(Box<Acceptor>),
    /// After the ClientHello, with the configuration chosen.
    Conn(Box<ServerConnection>),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pending::Fresh => "Pending::Fresh",
            Pending::Hello(_) => "Pending::Hello",
            Pending::Conn(_) => "Pending::Conn",
        })
    }
}

/// How the handshake reads: blocking (within the socket's timeout, which the deadline sets), or
/// without waiting, to park when the client has sent nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Blocking,
    /// The first read may wait this long (a new connection's bytes are normally on their way);
    /// every later one does not wait.
    NoWaitAfter(Duration),
}

/// Runs the server side of a handshake on the blocking `sock` until it completes, fails, or
/// `limit` (zero: none) passes; `choose` picks the configuration once the ClientHello is read.
/// The socket's timeouts are left set to what is left of it.
pub fn accept(
    sock: &TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Arc<ServerConfig>,
    limit: Duration,
) -> Handshake {
    let deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
    handshake(sock, Pending::Fresh, choose, deadline, Reads::Blocking)
}

/// Advances a handshake from `state` until it completes, fails, passes `deadline`, or (with
/// [`Reads::NoWaitAfter`]) the client has sent nothing more: [`Handshake::Waiting`] then.
pub fn handshake(
    sock: &TcpStream,
    mut state: Pending,
    choose: impl FnOnce(&ClientHello<'_>) -> Arc<ServerConfig>,
    deadline: Option<Instant>,
    reads: Reads,
) -> Handshake {
    let mut choose = Some(choose);
    let brief = match reads {
        Reads::Blocking => None,
        Reads::NoWaitAfter(d) => Some(d),
    };
    let nowait = brief.is_some();
    // The client's bytes are due (first, and after each flight the proxy sent): a read may wait
    // `brief` for them. Otherwise a `NoWaitAfter` handshake reads without waiting.
    let mut due = true;
    let mut reader = Reader { sock, nowait: false, within: None };
    loop {
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(365 * 86_400),
        };
        if left.is_zero() {
            return Handshake::TimedOut;
        }
        let _ = sock.set_read_timeout(Some(left));
        let _ = sock.set_write_timeout(Some(left));
        // A brief wait is timed by poll(2), exactly ([`crate::net::readable_within`]).
        reader.nowait = nowait;
        reader.within = brief.filter(|_| due).map(|b| b.min(left));
        let wrote = matches!(&state, Pending::Conn(c) if c.wants_write());
        let waiting = |e: &io::Error| is_timeout(e) && nowait;
        state = match state {
            Pending::Fresh => {
                let mut first = [0u8; 1];
                match reader.peek(&mut first) {
                    Ok(0) => return Handshake::Closed,
                    Ok(_) if first[0] == HANDSHAKE_RECORD => Pending::Hello(Box::default()),
                    Ok(_) if first[0].is_ascii_uppercase() => return Handshake::PlainHttp,
                    Ok(_) => {
                        return Handshake::Failed(format!("not a TLS record (first byte 0x{:02x})", first[0]))
                    }
                    Err(e) if waiting(&e) => return Handshake::Waiting(Pending::Fresh),
                    Err(e) if is_timeout(&e) => return Handshake::TimedOut,
                    Err(e) => return Handshake::Failed(e.to_string()),
                }
            }
            Pending::Hello(mut hello) => {
                match hello.read_tls(&mut reader) {
                    Ok(0) => return Handshake::Closed,
                    Ok(_) => {}
                    Err(e) if waiting(&e) => return Handshake::Waiting(Pending::Hello(hello)),
                    Err(e) if is_timeout(&e) => return Handshake::TimedOut,
                    Err(e) => return Handshake::Failed(e.to_string()),
                }
                match hello.accept() {
                    Ok(None) => Pending::Hello(hello),
                    Ok(Some(accepted)) => {
                        let Some(choose) = choose.take() else {
                            return Handshake::Failed("a second ClientHello".into());
                        };
                        let config = choose(&accepted.client_hello());
                        match accepted.into_connection(config) {
                            Ok(c) => Pending::Conn(Box::new(c)),
                            Err((e, mut alert)) => {
                                let _ = alert.write_all(&mut reader.sock);
                                return Handshake::Failed(e.to_string());
                            }
                        }
                    }
                    Err((e, mut alert)) => {
                        let _ = alert.write_all(&mut reader.sock);
                        return Handshake::Failed(e.to_string());
                    }
                }
            }
            Pending::Conn(mut conn) => {
                if conn.wants_write() {
                    if let Err(e) = conn.write_tls(&mut reader.sock) {
                        return if is_timeout(&e) {
                            Handshake::TimedOut
                        } else {
                            Handshake::Failed(e.to_string())
                        };
                    }
                    Pending::Conn(conn)
                } else if !conn.is_handshaking() {
                    return Handshake::Done(conn);
                } else {
                    match conn.read_tls(&mut reader) {
                        Ok(0) => return Handshake::Closed,
                        Ok(_) => {}
                        Err(e) if waiting(&e) => return Handshake::Waiting(Pending::Conn(conn)),
                        Err(e) if is_timeout(&e) => return Handshake::TimedOut,
                        Err(e) => return Handshake::Failed(e.to_string()),
                    }
                    if let Err(e) = conn.process_new_packets() {
                        while conn.wants_write() && conn.write_tls(&mut reader.sock).is_ok() {}
                        return Handshake::Failed(e.to_string());
                    }
                    Pending::Conn(conn)
                }
            }
        };
        due = wrote;
    }
}

/// Reads for the handshake: blocking within the socket's timeout, or without waiting (after a
/// wait of `within`, if set, for bytes due).
struct Reader<'a> {
    sock: &'a TcpStream,
    nowait: bool,
    within: Option<Duration>,
}

impl Reader<'_> {
    fn flags(&self) -> rustix::net::RecvFlags {
        if self.nowait {
            rustix::net::RecvFlags::DONTWAIT
        } else {
            rustix::net::RecvFlags::empty()
        }
    }

    /// Runs `recv`; a blocking one is a wait on the client, marked, so that a reserve worker
    /// takes this one's place if it lasts while connections queue (a silent client holds no
    /// taker).
    fn recv(&self, mut recv: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        if let Some(d) = self.within.filter(|_| self.nowait) {
            match recv() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            return match crate::threads::gate::readable_within(self.sock, d) {
                Ok(true) => recv(),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            };
        }
        if self.nowait {
            recv()
        } else {
            crate::threads::gate::waiting(recv)
        }
    }

    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let flags = self.flags() | rustix::net::RecvFlags::PEEK;
        self.recv(|| rustix::net::recv(self.sock, &mut *buf, flags).map(|(n, _)| n).map_err(io::Error::from))
    }
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (sock, wait) = (self.sock, !self.nowait);
        self.recv(|| crate::net::recv(sock, buf, wait))
    }
}

/// Runs the client side of a handshake on the blocking, connected `sock` as `name` (sent as
/// SNI and verified), within the socket's timeouts.
pub fn connect(sock: TcpStream, config: Arc<ClientConfig>, name: &str) -> Result<Stream<TcpStream>, String> {
    let server = ServerName::try_from(name.to_string()).map_err(|e| format!("server name {name:?}: {e}"))?;
    let mut conn = ClientConnection::new(config, server).map_err(|e| e.to_string())?;
    let mut s = &sock;
    while conn.is_handshaking() {
        match crate::threads::gate::waiting(|| conn.complete_io(&mut s)) {
            Ok((0, 0)) => return Err("closed during the TLS handshake".into()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err("TLS handshake timed out".into()),
            Err(e) => return Err(format!("TLS handshake: {e}")),
        }
    }
    Ok(Stream::Tls(sock, Box::new(Mutex::new(Connection::Client(conn)))))
}

/// nginx's answer to plain HTTP on an HTTPS port, word for word in its body.
pub const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\
Content-Length: 220\r\nConnection: close\r\n\r\n\
<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n\
<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n\
<center>The plain HTTP request was sent to HTTPS port</center>\r\n</body>\r\n</html>\r\n";

/// The negotiated TLS version as logs name it (`TLSv1.3`), once the handshake is done.
pub fn version_name(c: &Connection) -> Option<&'static str> {
    Some(match c.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_is_framed_exactly() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }
}
