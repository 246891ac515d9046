//! A backend's idle persistent connections, kept for reuse (nginx `keepalive`, HAProxy
//! `http-reuse`), at most `backend_keepalive` each.
//!
//! A connection goes back to the pool only when its response ended exactly at its framing with
//! nothing more buffered. Every reuse first peeks (one non-blocking `recv(MSG_PEEK)`): a
//! connection on which any byte arrived after its response, or which shows EOF or an error, is
//! closed and never used ([`Idle`]), as nginx and HAProxy do. So stray bytes from one exchange
//! can never become another client's response. One idle longer than `backend_idle_ms` is closed
//! too (its backend may be closing it as a request goes out), at the next take or by the
//! housekeeping's [`IdlePool::sweep`], whichever comes first.

use std::net::TcpStream;
use std::time::{Duration, Instant};

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

/// Idle connections, oldest first, each with the time it was returned. A channel rather than a
/// locked list: taking and returning one per request must not serialise hundreds of workers.
#[derive(Debug)]
pub struct IdlePool {
    tx: crossbeam_channel::Sender<(TcpStream, Instant)>,
    rx: crossbeam_channel::Receiver<(TcpStream, Instant)>,
}

impl Default for IdlePool {
    fn default() -> IdlePool {
        let (tx, rx) = crossbeam_channel::unbounded();
        IdlePool { tx, rx }
    }
}

impl IdlePool {
    /// How many are idle.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Takes the longest-idle connection that is still quiet and was idle no longer than
    /// `max_idle` (first in, first out); the others are closed. `name` is the backend's, for
    /// the log.
    pub fn take(&self, name: &str, max_idle: Duration) -> Option<TcpStream> {
        loop {
            let (stream, since) = self.rx.try_recv().ok()?;
            if usable(name, &stream, since, max_idle) {
                return Some(stream);
            }
        }
    }

    /// Closes the idle connections that [`IdlePool::take`] would not use (idle past
    /// `max_idle`, closed by the backend, or holding stray bytes) and keeps the rest, in their
    /// order: a timer's work, so that a backend's connections do not wait for the next request
    /// to be closed (nginx's upstream `keepalive_timeout` is a timer too). Returns how many it
    /// closed.
    pub fn sweep(&self, name: &str, max_idle: Duration) -> usize {
        let mut closed = 0;
        // Each is looked at once; those put back go behind, and so keep their order.
        for _ in 0..self.len() {
            let Ok((stream, since)) = self.rx.try_recv() else { break };
            if usable(name, &stream, since, max_idle) {
                let _ = self.tx.send((stream, since));
            } else {
                closed += 1;
            }
        }
        closed
    }

    /// Keeps a connection after a complete exchange; closed instead when `cap` are idle already.
    pub fn put(&self, stream: TcpStream, cap: usize) {
        // The count is read without a lock, so the cap may be overshot by a few under a race.
        if self.len() < cap {
            let _ = self.tx.send((stream, Instant::now()));
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// Whether a connection idle since `since` may carry a request: idle no longer than
/// `max_idle`, and quiet. Logs why not.
fn usable(name: &str, stream: &TcpStream, since: Instant, max_idle: Duration) -> bool {
    let idle = since.elapsed();
    if idle > max_idle {
        // The backend may be closing it this very moment (its own keep-alive timeout),
        // and a request sent then would be lost: nginx's upstream `keepalive_timeout`.
        log::debug!("{name}: pooled connection idle {} ms, past backend_idle_ms; closed", idle.as_millis());
        return false;
    }
    match peek(stream) {
        Idle::Quiet => return true,
        Idle::Data => log::warn!(
            "{name} sent bytes on an idle pooled connection (after {} ms); closed it unused",
            idle.as_millis()
        ),
        Idle::Closed => log::debug!("{name}: pooled connection closed by the backend; dropped"),
    }
    false
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

    /// A connection to `l`, and its accepted end.
    fn connected(l: &TcpListener) -> (TcpStream, TcpStream) {
        let s = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        (s, l.accept().expect("accept").0)
    }

    /// Two minutes ago: when a connection idle past any test's limit was pooled.
    fn long_ago() -> Instant {
        Instant::now().checked_sub(Duration::from_secs(120)).expect("a monotonic clock past 2 min")
    }

    /// Waits (a bounded wait for loopback delivery) until what the pooled connections show
    /// satisfies `shown`; they stay pooled, in order.
    fn wait_until_pooled(pool: &IdlePool, shown: impl Fn(&[(TcpStream, Instant)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let pooled: Vec<_> = pool.rx.try_iter().collect();
        while !shown(&pooled) {
            assert!(Instant::now() < deadline, "the kernel never showed it");
            std::thread::sleep(Duration::from_millis(2));
        }
        for p in pooled {
            pool.tx.send(p).expect("back in the pool");
        }
    }

    /// The pool closed the connection whose accepted end is `peer`: it reads EOF.
    fn assert_closed(mut peer: TcpStream) {
        peer.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(std::io::Read::read(&mut peer, &mut [0u8; 1]).expect("EOF, not a timeout"), 0);
    }

    #[test]
    fn reuses_live_connections_and_drops_closed_ones() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let pool = IdlePool::default();
        let connect = || connected(&l);
        let (a, peer_a) = connect();
        let (c, mut peer_c) = connect();
        let (d, _peer_d) = connect();
        pool.put(a, 2);
        pool.put(c, 2);
        pool.put(d, 2);
        assert_eq!(pool.len(), 2, "capped");
        drop(peer_a);
        peer_c.write_all(b"x").expect("stray byte");
        // Wait until the kernel shows both.
        wait_until_pooled(&pool, |pooled| pooled.iter().all(|(s, _)| peek(s) != Idle::Quiet));
        assert!(pool.take("a", Duration::MAX).is_none(), "a was closed and c had a stray byte");
        assert!(pool.is_empty());
    }

    /// nginx's upstream `keepalive_timeout`: a connection idle past it is closed, not reused.
    #[test]
    fn a_connection_idle_longer_than_the_limit_is_closed_not_reused() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let pool = IdlePool::default();
        let (old, old_peer) = connected(&l);
        let (fresh, _fresh_peer) = connected(&l);
        let fresh_port = fresh.local_addr().expect("addr").port();
        pool.tx.send((old, long_ago())).expect("pooled");
        pool.put(fresh, 2);
        let taken = pool.take("a", Duration::from_secs(60)).expect("the fresh one");
        assert_eq!(taken.local_addr().expect("addr").port(), fresh_port);
        assert!(pool.is_empty(), "the old one left the pool");
        assert_closed(old_peer);
    }

    /// The sweep closes what a take would not use and keeps the rest, in order.
    #[test]
    fn a_sweep_closes_expired_and_closed_connections_and_keeps_the_rest_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let pool = IdlePool::default();
        let connect = || connected(&l);
        let (old, old_peer) = connect();
        let (gone, gone_peer) = connect();
        let (first, _first_peer) = connect();
        let (second, _second_peer) = connect();
        let ports = [&first, &second].map(|s| s.local_addr().expect("addr").port());
        pool.tx.send((old, long_ago())).expect("pooled");
        pool.put(first, 8);
        pool.put(gone, 8);
        pool.put(second, 8);
        drop(gone_peer);
        // Wait until the kernel shows the close.
        wait_until_pooled(&pool, |pooled| pooled.iter().any(|(s, _)| peek(s) == Idle::Closed));
        assert_eq!(pool.sweep("a", Duration::from_secs(60)), 2, "the expired one and the closed one");
        let left: Vec<u16> = pool.rx.try_iter().map(|(s, _)| s.local_addr().expect("addr").port()).collect();
        assert_eq!(left, ports, "the quiet ones stay, oldest first");
        assert_closed(old_peer);
    }
}
