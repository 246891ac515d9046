//! Taking a client connection, in the worker (never the acceptor): how long its first byte may
//! keep a worker before it parks; the TLS handshake within `header_ms`, nginx's plaintext 400
//! to a plain HTTP request on the TLS port, a quiet close for garbage, the handshake counters.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::conn::Conn;
use crate::stats::ProxyCounters;
use crate::tls::stream::{Handshake, Pending, Reads, Stream, PLAIN_HTTP_ANSWER};
use crate::tls::{self, Listener};

/// How long a new connection's worker waits for its first byte before parking it: it is
/// normally on its way with the handshake's last packet, and parking it would cost a
/// `Connection: close` request two thread hops.
pub const FIRST_BYTE: Duration = Duration::from_millis(10);

/// [`FIRST_BYTE`] while connections wait for a worker: a crowd of silent connections would
/// otherwise hold every taker for 10 ms each, and the clients behind them wait (1,100 silent
/// connections and 32 takers: 340 ms). A real client's first bytes follow its connect at once.
pub const FIRST_BYTE_PRESSED: Duration = Duration::from_millis(1);

/// How long a new connection's first read may wait: [`FIRST_BYTE`], or [`FIRST_BYTE_PRESSED`]
/// while connections wait for a worker (`pressed`). For a plain head, a TLS handshake and
/// a ClientHello read to route by SNI alike.
pub fn first_byte(pressed: bool) -> Duration {
    if pressed {
        FIRST_BYTE_PRESSED
    } else {
        FIRST_BYTE
    }
}

/// How long a TLS handshake's read may wait in its worker for the client's flight that is due
/// before the connection parks: [`first_byte`]; at a stop `SHUTDOWN_GRACE`, as an idle client
/// gets for its next request.
pub fn flight_wait(stopping: bool, pressed: bool) -> Duration {
    if stopping {
        super::SHUTDOWN_GRACE
    } else {
        first_byte(pressed)
    }
}

/// The client side of a connection: plain or TLS over the registered socket.
pub type ClientStream<'a> = Stream<&'a TcpStream>;

/// Wraps `conn`'s socket, running the TLS handshake first when `listener` is set. `None` when
/// the connection is done (failed or refused handshake; logged and counted).
pub fn open<'a>(
    conn: &'a Conn,
    listener: Option<&Listener>,
    limit: Duration,
    counters: &ProxyCounters,
) -> Option<ClientStream<'a>> {
    let sock: &TcpStream = &conn.stream;
    let Some(listener) = listener else { return Some(Stream::Plain(sock)) };
    let outcome = tls::stream::accept(sock, |hello| listener.config_for(hello), limit);
    match finish(conn, outcome, counters) {
        Opened::Ready(stream) => Some(stream),
        Opened::Answered => {
            crate::net::lingering_close(sock, crate::net::LINGER_SHORT);
            None
        }
        Opened::Waiting(_) | Opened::Closed => None,
    }
}

/// What taking a client connection came to.
pub enum Opened<'a> {
    /// The stream to serve.
    Ready(ClientStream<'a>),
    /// The handshake waits for more from the client: park the connection with this state.
    Waiting(Pending),
    /// Answered with a plaintext 400 (plain HTTP on the TLS port), to close lingering.
    Answered,
    /// Done with (a failed or refused handshake; logged and counted).
    Closed,
}

/// Goes on with a handshake from `state` (a new connection: [`Pending::Fresh`]) until it is
/// done or, the client having sent nothing more, it can wait in the parker.
pub fn resume<'a>(
    conn: &'a Conn,
    listener: &Listener,
    state: Pending,
    deadline: Option<Instant>,
    first_wait: Duration,
    counters: &ProxyCounters,
) -> Opened<'a> {
    let reads = Reads::NoWaitAfter(first_wait);
    let outcome =
        tls::stream::handshake(&conn.stream, state, |hello| listener.config_for(hello), deadline, reads);
    finish(conn, outcome, counters)
}

fn finish<'a>(conn: &'a Conn, outcome: Handshake, counters: &ProxyCounters) -> Opened<'a> {
    let sock: &TcpStream = &conn.stream;
    let failed = |why: &str| {
        counters.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        log::info!("conn {} from {}: TLS handshake failed: {why}; closing", conn.id, conn.peer);
    };
    match outcome {
        Handshake::Done(server) => {
            counters.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "conn {} from {}: TLS {:?} {}",
                conn.id,
                conn.peer,
                server.protocol_version(),
                server.server_name().unwrap_or("(no SNI)")
            );
            Opened::Ready(Stream::Tls(sock, Box::new(Mutex::new(rustls::Connection::Server(*server)))))
        }
        Handshake::Waiting(state) => Opened::Waiting(state),
        Handshake::PlainHttp => {
            failed("plain HTTP sent to the TLS port (answered 400)");
            // As nginx: a plaintext 400 naming the mistake, then close.
            let _ = (&mut &*sock).write_all(PLAIN_HTTP_ANSWER);
            Opened::Answered
        }
        Handshake::Failed(why) => {
            failed(&why);
            Opened::Closed
        }
        Handshake::Closed => {
            failed("client closed during the handshake");
            Opened::Closed
        }
        Handshake::TimedOut => {
            failed("not complete within header_ms");
            Opened::Closed
        }
    }
}
