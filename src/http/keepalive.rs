//! Idle persistent connections to backends, kept per backend for reuse (nginx `keepalive`,
//! HAProxy `http-reuse`), at most `backend_keepalive` each.
//!
//! A connection goes back to the pool only when its response ended exactly at its framing with
//! nothing more buffered. Every reuse first peeks (one non-blocking `recv(MSG_PEEK)`): a
//! connection on which any byte arrived after its response, or which shows EOF or an error, is
//! closed and never used ([`Idle`]), as nginx and HAProxy do. So stray bytes from one exchange
//! can never become another client's response.

use std::net::TcpStream;
use std::time::Instant;

use crate::backend::Backend;

/// What waits on an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing: safe to reuse.
    Quiet,
    /// The backend closed it (EOF) or it failed.
    Closed,
    /// Bytes arrived that no request asked for.
    Data,
}

/// Takes the longest-idle connection to `b` that is still quiet (the pool is first in, first
/// out); the others are closed.
pub fn take(b: &Backend) -> Option<TcpStream> {
    loop {
        let (stream, since) = b.idle.rx.try_recv().ok()?;
        match peek(&stream) {
            Idle::Quiet => return Some(stream),
            Idle::Data => log::warn!(
                "{} sent bytes on an idle pooled connection (after {} ms); closed it unused",
                b.name,
                since.elapsed().as_millis()
            ),
            Idle::Closed => log::debug!("{}: pooled connection closed by the backend; dropped", b.name),
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

/// Looks, without waiting or consuming, at what the socket holds.
pub fn peek(stream: &TcpStream) -> Idle {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    match recv(stream, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => Idle::Closed,
        Ok(_) => Idle::Data,
        Err(rustix::io::Errno::AGAIN) => Idle::Quiet,
        Err(_) => Idle::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Duration;

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
        while pooled.iter().any(|(s, _)| peek(s) == Idle::Quiet) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        for p in pooled {
            b.idle.tx.send(p).expect("back in the pool");
        }
        assert!(take(&b).is_none(), "a was closed and c had a stray byte");
        assert!(b.idle.is_empty());
    }
}
