//! Sockets, the way every part of the proxy opens them: listeners with a deep backlog,
//! connections with a timeout and `TCP_NODELAY`, what a socket error means, and the lingering
//! close after an answer. Beside them, what travels with an address: `host:port` parsing and
//! resolution ([`addr`]) and the PROXY protocol's headers ([`proxy_protocol`]).

pub mod addr;
pub mod proxy_protocol;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Listen backlog; `std`'s 128 overflows under a burst of connects (the kernel caps it at
/// `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// Reads what `sock` holds into `buf`; with `wait` false, without waiting (`WouldBlock` when
/// nothing is there), whatever the socket's own mode: how the parker's clients are read.
pub fn recv(sock: &TcpStream, buf: &mut [u8], wait: bool) -> io::Result<usize> {
    let flags = if wait { rustix::net::RecvFlags::empty() } else { rustix::net::RecvFlags::DONTWAIT };
    rustix::net::recv(sock, buf, flags).map(|(n, _)| n).map_err(io::Error::from)
}

/// Waits up to `d` for `sock` to have something to read (bytes, its end, or an error), with
/// `poll(2)`, whose timer is exact: `SO_RCVTIMEO` rounds up to the kernel's tick, so a 1 ms read
/// timeout waits about 8 ms on a 250 Hz kernel. For the brief waits, a new connection's first
/// bytes (workers call it through `threads::gate::readable_within`, marked as a wait on the
/// client); a signal does not cut it short. `false` when `d` passed with nothing.
pub fn readable_within(sock: &TcpStream, d: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags};
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec(left))) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) if !left.is_zero() => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `d` as the timeout of `poll(2)` or `epoll_wait(2)`.
pub fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// Writes what `sock` takes of `buf` now, without waiting.
pub fn send_now(sock: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    rustix::net::send(sock, buf, rustix::net::SendFlags::DONTWAIT).map_err(io::Error::from)
}

/// Binds a listener with a deep backlog and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, false)
}

/// Binds a listener like [`bind`], with `SO_REUSEPORT` too when `reuse_port`: then every
/// process that binds the same address this way gets its own accept queue, and the kernel
/// spreads new connections among them (`[proxy] reuse_port`).
pub fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Opens a connection with `timeout` (0: the system's), `TCP_NODELAY` set.
pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = if timeout.is_zero() {
        TcpStream::connect(addr)?
    } else {
        TcpStream::connect_timeout(&addr, timeout)?
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Short lowercase text for a socket error (`connection refused`, `timed out`).
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => e.to_string(),
    }
}

/// Whether a read or write with a timeout (or on a non-blocking socket) ran out of time rather
/// than failed: `WouldBlock` or `TimedOut`, as the platform reports `SO_RCVTIMEO` expiring.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// How much [`lingering_close`] drains after an answer given before any request was read (a
/// refusal by `[limits]`, plain HTTP on the TLS port): such a client owes little.
pub const LINGER_SHORT: usize = 1 << 20;

/// How much [`lingering_close`] drains after an answer to a request whose body is left unread:
/// a client still uploading when its answer comes (curl, refused mid-body) sends megabytes more
/// before it reads the answer and stops, and a reset after 1 MiB lost that answer under load.
pub const LINGER_BODY: usize = 64 << 20;

/// A lingering close ends when the client sends nothing for this long (nginx's
/// `lingering_timeout`)...
pub const LINGER_QUIET: Duration = Duration::from_millis(200);
/// ... or after this long in all (nginx's `lingering_time`).
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// Closes after an answer on a connection with unread input: closing at once would make the
/// kernel send a reset that can destroy the answer before the client reads it. Half-close, then
/// drain what still comes, as nginx's `lingering_close`: until the client stops (it closes, or
/// sends nothing for [`LINGER_QUIET`]), for at most [`LINGER_TIME`] and `most` bytes. Where
/// there is a parker, the connection lingers there instead, holding no worker.
#[inline(never)]
pub fn lingering_close(sock: &TcpStream, most: usize) {
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(LINGER_QUIET));
    let deadline = Instant::now() + LINGER_TIME;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < most {
        match (&mut &*sock).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Raises this process's descriptor limit (`ulimit -n`) to its hard limit, as HAProxy raises
/// it for its `maxconn` and Go programs do at start: a soft limit of 1,024 (the usual default)
/// would cap the connections a proxy holds, parked ones too, far below what it can serve.
/// Returns the limit before and after; the same when it could not be raised.
pub fn raise_descriptor_limit() -> (Option<u64>, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    if let Some(raised) = raised_descriptor_limit(&limit, nr_open) {
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return (before, raised.current);
        }
    }
    (before, before)
}

/// The descriptor limit to set instead of `limit`: the soft limit raised to the hard limit,
/// but never above the kernel's `fs.nr_open`. The kernel refuses any `setrlimit` whose hard
/// limit is above `fs.nr_open` (an unlimited one, or one set before `fs.nr_open` was lowered),
/// so such a hard limit comes down to it too, which needs no privilege. `None`: nothing to
/// raise.
fn raised_descriptor_limit(
    limit: &rustix::process::Rlimit,
    nr_open: Option<u64>,
) -> Option<rustix::process::Rlimit> {
    // `None` is RLIM_INFINITY; without `fs.nr_open`, its default (1,048,576).
    let ceiling = nr_open.unwrap_or(1 << 20);
    let hard = limit.maximum.map_or(ceiling, |max| max.min(ceiling));
    match limit.current {
        Some(current) if current < hard => {
            Some(rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) })
        }
        _ => None,
    }
}

/// True for errors that mean the descriptor table (per process or system) is full.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// True for errors that are this host's shortage, not the peer's fault: no descriptor, no
/// local port (`EADDRNOTAVAIL`), no buffer or memory. A connect failing this way says nothing
/// about the backend, so it never counts against it.
pub fn is_local_resource(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_rises_to_the_hard_limit_but_never_past_nr_open() {
        use rustix::process::Rlimit;
        let raised = |current, maximum, nr_open| {
            raised_descriptor_limit(&Rlimit { current, maximum }, nr_open).map(|r| (r.current, r.maximum))
        };
        let to = |n: u64| Some((Some(n), Some(n)));
        assert_eq!(raised(Some(1024), Some(20_000), Some(1 << 20)), to(20_000));
        // An unlimited hard limit, or one above nr_open, comes down to it: else EPERM.
        assert_eq!(raised(Some(1024), None, Some(1 << 20)), to(1 << 20));
        assert_eq!(raised(Some(1024), None, None), to(1 << 20));
        assert_eq!(raised(Some(1024), Some(4_000_000), Some(65_536)), to(65_536));
        assert_eq!(raised(Some(20_000), Some(20_000), Some(1 << 20)), None);
        assert_eq!(raised(None, None, Some(1 << 20)), None);
    }

    #[test]
    fn local_shortages_are_told_apart_from_peer_failures() {
        for code in [libc::EMFILE, libc::ENFILE, libc::EADDRNOTAVAIL, libc::ENOBUFS] {
            assert!(is_local_resource(&io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::ECONNRESET, libc::EHOSTUNREACH] {
            assert!(!is_local_resource(&io::Error::from_raw_os_error(code)), "{code}");
        }
        assert_eq!(describe(&io::Error::from_raw_os_error(libc::ECONNREFUSED)), "connection refused");
    }
}
