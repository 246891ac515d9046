//! Idle persistent connections to backends, kept per backend for reuse (nginx `keepalive`,
//! HAProxy `http-reuse`), at most `backend_keepalive` each.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::backend::Backend;

/// A pooled connection that sat idle longer than this is checked before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// Takes the longest-idle connection to `b` (the pool is first in, first out). Connections the backend already closed
/// are discarded; the check (one non-blocking peek) runs when the connection idled a while, or
/// always when `must_check` (a request that could not be retried).
pub fn take(b: &Backend, must_check: bool) -> Option<TcpStream> {
    loop {
        let (stream, since) = b.idle.rx.try_recv().ok()?;
        if (!must_check && since.elapsed() < CHECK_AFTER) || still_open(&stream) {
            return Some(stream);
        }
    }
}

/// Returns a connection after a complete exchange; closed instead when `b` already holds `cap`
/// idle ones or was removed.
pub fn put(b: &Backend, stream: TcpStream, cap: usize) {
    // The count is read without a lock, so the cap may be overshot by a few under a race.
    if b.idle.len() < cap && !b.is_retired() {
        let _ = b.idle.tx.send((stream, Instant::now()));
    }
}

/// True when nothing arrived on an idle connection: no EOF, no reset, no stray bytes.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a valid socket descriptor and a one-byte buffer we own; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(stream.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn reuses_live_connections_and_drops_closed_ones() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let b = Backend::new("a".into(), "a".into(), addr, 1, 0);
        let connect = || {
            let s = TcpStream::connect(addr).expect("connect");
            (s, l.accept().expect("accept").0)
        };
        let (a, peer_a) = connect();
        let (c, mut peer_c) = connect();
        let (d, _peer_d) = connect();
        put(&b, a, 2);
        put(&b, c, 2);
        put(&b, d, 2);
        assert_eq!(b.idle.len(), 2, "capped");
        drop(peer_a);
        peer_c.write_all(b"x").expect("stray byte");
        // Wait until the kernel shows both (a bounded wait for loopback delivery).
        let deadline = Instant::now() + Duration::from_secs(5);
        let pooled: Vec<_> = b.idle.rx.try_iter().collect();
        while pooled.iter().any(|(s, _)| still_open(s)) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        for p in pooled {
            b.idle.tx.send(p).expect("back in the pool");
        }
        assert!(take(&b, true).is_none(), "a was closed and c had a stray byte");
        assert!(b.idle.is_empty());
    }
}
