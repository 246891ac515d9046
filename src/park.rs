//! The parker: keep-alive connections idle between requests wait here, in one `epoll` thread,
//! instead of each holding a worker, and go back on the workers' channel when their next
//! request arrives (Apache httpd's event MPM does the same for its worker threads).
//!
//! ```text
//! acceptor --\                                   /--> worker: serves requests ... idle --\
//!             >-- channel (bounded: `queue`) ---<                                        |
//! parker  ---/   (readable again, or closed)     \--> worker ...                         |
//!    ^---------------------------------- park (idle 100 ms, or other connections queue) --/
//! ```
//!
//! So a thread serves requests, not connections: thousands of idle clients cost a socket and a
//! few hundred bytes each, and `workers` bounds the connections in the middle of a request. A
//! busy client never parks (its next request comes within `park_after`), so the hot path is as
//! before. A parked connection idle for `idle_ms` is closed here. At shutdown parked
//! connections are closed, as nginx and HAProxy close idle keep-alive connections at a graceful
//! stop; one parked less than 500 ms ago first gets the rest of that time to send the request it
//! may have on the wire, as a worker waiting between requests does.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use parking_lot::Mutex;
use rustix::event::epoll;

use crate::registry::Conn;

/// The wake pipe's key in the epoll set (connection ids start at 1).
const WAKE: u64 = u64::MAX;
/// How often parked connections are checked against `idle_ms`.
const SWEEP: Duration = Duration::from_secs(1);
/// How long after its last response a parked connection may still send a request at a stop.
const GRACE: Duration = crate::stack::TRIM_AFTER;

/// Idle keep-alive connections, waiting in one epoll set for their next request.
pub struct Parker {
    epoll: OwnedFd,
    parked: Mutex<HashMap<u64, (Conn, Instant)>>,
    /// The workers' channel, to see whether connections wait (its sender is the thread's, so
    /// the channel closes when the thread ends).
    queue: OnceLock<Receiver<Conn>>,
    /// The wake pipe's write end; dropped by [`Parker::stop`].
    wake: Mutex<Option<OwnedFd>>,
    /// Its read end, in the epoll set.
    _wake_rx: OwnedFd,
    open: AtomicBool,
    /// A parked connection idle this long is closed (zero: never).
    idle: Duration,
}

impl Parker {
    /// An empty parker whose connections may idle `idle` (zero: no limit). Nothing parks until
    /// [`Parker::spawn`] has started its thread.
    pub fn new(idle: Duration) -> std::io::Result<Arc<Parker>> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let (wake_rx, wake_tx) = rustix::pipe::pipe()?;
        epoll::add(&ep, &wake_rx, epoll::EventData::new_u64(WAKE), epoll::EventFlags::IN)?;
        let parker = Parker {
            epoll: ep,
            parked: Mutex::new(HashMap::new()),
            queue: OnceLock::new(),
            wake: Mutex::new(Some(wake_tx)),
            _wake_rx: wake_rx,
            open: AtomicBool::new(false),
            idle,
        };
        Ok(Arc::new(parker))
    }

    /// Starts the parker's thread, which hands readable connections to `jobs` (whose length
    /// `queue` tells). The thread stops, closing what is parked, when the handle drops.
    pub fn spawn(self: &Arc<Parker>, jobs: Sender<Conn>, queue: Receiver<Conn>) -> std::io::Result<Running> {
        let _ = self.queue.set(queue);
        self.open.store(true, Ordering::SeqCst);
        let parker = self.clone();
        match thread::Builder::new().name("parker".into()).spawn(move || parker.run(&jobs)) {
            Ok(thread) => Ok(Running { parker: self.clone(), thread: Some(thread) }),
            Err(e) => {
                self.open.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Whether connections wait for a worker: then an idle keep-alive connection should park
    /// at once rather than hold its worker.
    pub fn pressed(&self) -> bool {
        self.queue.get().is_some_and(|q| !q.is_empty())
    }

    /// Parks `conn`, idle since `since`, until its socket is readable (a request, or the client
    /// closing). When the parker is stopped, or cannot watch the socket, `conn` is closed
    /// instead (it is idle) and the answer is false.
    pub fn park(&self, conn: Conn, since: Instant) -> bool {
        let mut parked = self.parked.lock();
        if !self.open.load(Ordering::SeqCst) {
            return false;
        }
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        if let Err(e) = epoll::add(&self.epoll, &conn.stream, epoll::EventData::new_u64(conn.id), flags) {
            log::warn!("conn {} from {}: cannot park ({e}); closing it", conn.id, conn.peer);
            return false;
        }
        parked.insert(conn.id, (conn, since));
        true
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.parked.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops parking; the thread closes every parked connection and returns.
    fn stop(&self) {
        self.open.store(false, Ordering::SeqCst);
        drop(self.wake.lock().take());
    }

    fn run(&self, jobs: &Sender<Conn>) {
        let mut events = Vec::with_capacity(256);
        let mut ready = Vec::new();
        let mut swept = Instant::now();
        let timeout = rustix::event::Timespec { tv_sec: SWEEP.as_secs() as i64, tv_nsec: 0 };
        while self.open.load(Ordering::SeqCst) {
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::error!("parker: epoll_wait: {e}; parked connections are closed");
                    break;
                }
            }
            self.hand_over_ready(jobs, &events, &mut ready);
            if swept.elapsed() >= SWEEP {
                swept = Instant::now();
                self.close_expired();
            }
        }
        self.linger(jobs, &mut events, &mut ready);
    }

    /// Takes the connections `events` reported out of the set and sends them to the workers.
    fn hand_over_ready(&self, jobs: &Sender<Conn>, events: &[epoll::Event], ready: &mut Vec<Conn>) {
        {
            let mut parked = self.parked.lock();
            for ev in events {
                if let Some((mut conn, since)) = parked.remove(&ev.data.u64()) {
                    let _ = epoll::delete(&self.epoll, &conn.stream);
                    conn.parked_since = Some(since);
                    ready.push(conn);
                }
            }
        }
        for conn in ready.drain(..) {
            if !self.hand_over(jobs, conn) {
                break;
            }
        }
    }

    /// At a stop: a connection parked a moment ago may have its next request on the wire. As a
    /// worker waiting between requests does, each gets [`GRACE`] from its last response to send
    /// it, and is then served (with `Connection: close`, since the proxy is stopping); the rest
    /// are closed, as nginx and HAProxy close idle keep-alive connections at a graceful stop.
    fn linger(&self, jobs: &Sender<Conn>, events: &mut Vec<epoll::Event>, ready: &mut Vec<Conn>) {
        // The closed wake pipe would report readable for ever.
        let _ = epoll::delete(&self.epoll, &self._wake_rx);
        let mut closed = 0usize;
        loop {
            let now = Instant::now();
            let last = {
                let mut parked = self.parked.lock();
                for (_, (conn, _)) in parked.extract_if(|_, (_, since)| now.duration_since(*since) >= GRACE) {
                    let _ = epoll::delete(&self.epoll, &conn.stream);
                    closed += 1;
                }
                parked.values().map(|(_, since)| *since + GRACE).max()
            };
            let Some(last) = last else { break };
            let wait = last.saturating_duration_since(now).min(Duration::from_millis(50));
            let timeout =
                rustix::event::Timespec { tv_sec: 0, tv_nsec: wait.as_nanos().max(1_000_000) as i64 };
            events.clear();
            if let Err(e) = epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), Some(&timeout)) {
                if e != rustix::io::Errno::INTR {
                    break;
                }
            }
            self.hand_over_ready(jobs, events, ready);
        }
        closed += self.parked.lock().drain().count();
        if closed > 0 {
            log::debug!("parker: closed {closed} idle keep-alive connection(s)");
        }
    }

    /// Sends `conn` to the workers, waiting while the queue is full (backpressure, as the
    /// acceptor's), until the parker stops: false then, and `conn` is closed.
    fn hand_over(&self, jobs: &Sender<Conn>, mut conn: Conn) -> bool {
        loop {
            match jobs.send_timeout(conn, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(c)) if self.open.load(Ordering::SeqCst) => conn = c,
                Err(_) => return false,
            }
        }
    }

    fn close_expired(&self) {
        if self.idle.is_zero() {
            return;
        }
        let expired: Vec<_> =
            self.parked.lock().extract_if(|_, (_, since)| since.elapsed() >= self.idle).collect();
        for (_, (conn, since)) in expired {
            let _ = epoll::delete(&self.epoll, &conn.stream);
            log::debug!(
                "conn {} from {}: idle {} ms (idle_ms), closed",
                conn.id,
                conn.peer,
                since.elapsed().as_millis()
            );
        }
    }
}

/// The parker's running thread: dropping it (or [`Running::stop`]) stops parking, closes every
/// parked connection, and joins the thread, whose sender then no longer holds the workers'
/// channel open.
pub struct Running {
    parker: Arc<Parker>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the parker and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.parker.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A registered connection and the client's end of it.
    fn pair(registry: &Arc<Registry>, id: u64) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, peer) = l.accept().expect("accept");
        (Conn::register(registry, id, server, peer), client)
    }

    #[test]
    fn a_parked_connection_comes_back_when_its_next_request_arrives() {
        let registry = Registry::new();
        let parker = Parker::new(Duration::from_secs(60)).expect("parker");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let running = parker.spawn(tx, rx.clone()).expect("spawn");
        let (conn, mut client) = pair(&registry, 1);
        let since = Instant::now();
        assert!(parker.park(conn, since));
        assert_eq!(parker.len(), 1);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing arrived: it stays parked");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let mut back = rx.recv_timeout(Duration::from_secs(5)).expect("handed back to the workers");
        assert_eq!(back.id, 1);
        assert_eq!(back.parked_since, Some(since));
        assert!(parker.is_empty());
        let mut buf = [0u8; 64];
        let n = (&mut &back.stream).read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n", "the request is still there to read");
        // Parked again (the epoll entry was removed on the way out), it comes back again.
        back.parked_since = None;
        assert!(parker.park(back, Instant::now()));
        drop(client);
        let closed = rx.recv_timeout(Duration::from_secs(5)).expect("a client that closes comes back too");
        assert_eq!((&mut &closed.stream).read(&mut buf).expect("read"), 0, "and reads EOF");
        running.stop();
    }

    #[test]
    fn idle_too_long_or_at_stop_a_parked_connection_is_closed() {
        let registry = Registry::new();
        let parker = Parker::new(Duration::from_millis(200)).expect("parker");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let running = parker.spawn(tx, rx.clone()).expect("spawn");
        let (expiring, mut expiring_client) = pair(&registry, 1);
        assert!(parker.park(expiring, Instant::now()));
        // Closed by the sweep (within a second or two): the client reads EOF.
        expiring_client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 8];
        assert_eq!(expiring_client.read(&mut buf).expect("EOF, not a timeout"), 0);
        assert!(registry.is_empty(), "unregistered as it closed");

        let parker = Parker::new(Duration::ZERO).expect("parker");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let running2 = parker.spawn(tx, rx.clone()).expect("spawn");
        let (kept, mut kept_client) = pair(&registry, 2);
        assert!(parker.park(kept, Instant::now()));
        running2.stop();
        kept_client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(kept_client.read(&mut buf).expect("EOF at stop"), 0);
        let (late, _late_client) = pair(&registry, 3);
        assert!(!parker.park(late, Instant::now()), "a stopped parker refuses (and closes)");
        assert!(registry.is_empty());
        assert!(
            matches!(rx.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)),
            "the channel closed with the thread's sender"
        );
        running.stop();
    }

    #[test]
    fn a_request_arriving_just_after_a_stop_is_still_handed_to_the_workers() {
        let registry = Registry::new();
        let parker = Parker::new(Duration::ZERO).expect("parker");
        let (tx, rx) = crossbeam_channel::bounded(4);
        let running = parker.spawn(tx, rx.clone()).expect("spawn");
        let (conn, mut client) = pair(&registry, 1);
        assert!(parker.park(conn, Instant::now()));
        let stopper = thread::spawn(move || running.stop());
        while parker.open.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        // Parked a moment ago, its client's request crosses the stop: served, not reset.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let back = rx.recv_timeout(Duration::from_secs(5)).expect("handed to the workers in the grace");
        assert_eq!(back.id, 1);
        stopper.join().expect("stopped");
        assert!(parker.is_empty());
    }
}
