//! Idle persistent connections to backends, kept per backend for reuse (nginx `keepalive`,
//! HAProxy `http-reuse`), at most `backend_keepalive` each, most recently used first.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A pooled connection that sat idle longer than this is checked before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// Per-backend stacks of idle connections.
pub struct KeepAlive {
    idle: Vec<Mutex<Vec<(TcpStream, Instant)>>>,
    cap: usize,
}

impl KeepAlive {
    /// Pools for `backends` backends, `cap` idle connections each (0 disables pooling).
    pub fn new(backends: usize, cap: usize) -> KeepAlive {
        KeepAlive { idle: (0..backends).map(|_| Mutex::new(Vec::new())).collect(), cap }
    }

    /// Takes the most recently used idle connection to backend `i`. Connections the backend
    /// already closed are discarded; the check (one non-blocking peek) runs when the connection
    /// idled a while, or always when `must_check` (a request that cannot be retried).
    pub fn take(&self, i: usize, must_check: bool) -> Option<TcpStream> {
        loop {
            let (stream, since) = self.idle.get(i)?.lock().pop()?;
            if (!must_check && since.elapsed() < CHECK_AFTER) || still_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// Returns a connection after a complete exchange; dropped (closed) when the pool is full.
    pub fn put(&self, i: usize, stream: TcpStream) {
        if let Some(slot) = self.idle.get(i) {
            let mut idle = slot.lock();
            if idle.len() < self.cap {
                idle.push((stream, Instant::now()));
            }
        }
    }

    /// Idle connections held for backend `i`.
    pub fn idle_count(&self, i: usize) -> usize {
        self.idle.get(i).map_or(0, |s| s.lock().len())
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
        let pool = KeepAlive::new(1, 2);
        let a = TcpStream::connect(addr).expect("connect");
        let (peer_a, _) = l.accept().expect("accept");
        let b = TcpStream::connect(addr).expect("connect");
        let (mut peer_b, _) = l.accept().expect("accept");
        let c = TcpStream::connect(addr).expect("connect");
        pool.put(0, a);
        pool.put(0, b);
        pool.put(0, c);
        assert_eq!(pool.idle_count(0), 2, "capped");
        drop(peer_a);
        peer_b.write_all(b"x").expect("stray byte");
        // b has a stray byte, a was closed: neither is reusable.
        let mut waited = 0;
        while still_open(&pool.idle[0].lock()[0].0) && waited < 100 {
            std::thread::sleep(Duration::from_millis(5));
            waited += 1;
        }
        assert!(pool.take(0, true).is_none());
        assert_eq!(pool.idle_count(0), 0);
    }
}
