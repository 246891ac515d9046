//! The parker: keep-alive connections idle between requests wait here, in one `epoll` thread,
//! instead of each holding a worker, and go back on the workers' channel when their next
//! request arrives (Apache httpd's event MPM does the same for its worker threads). So do
//! connections in the middle of a request head, a TLS handshake or a ClientHello (tcp mode's SNI
//! routing), or new and silent, until more arrives or `header_ms` runs out (a head gets 408).
//!
//! ```text
//! acceptor --\                                   /--> worker: serves requests ... idle --\
//!             >-- channel (bounded: `queue`) ---<                                        |
//! parker  ---/   (readable again, or closed)     \--> worker ...                         |
//!    ^---------------------------------- park (idle 100 ms) -----------------------------/
//! ```
//!
//! When connections already queue, a worker between requests sends its client straight to the
//! back of the channel instead ([`Parker::requeue`]); the worker that takes it parks it here
//! only if its next request has not come.
//!
//! So a thread serves requests, not connections: thousands of idle clients cost a socket and a
//! few hundred bytes each, and `workers` bounds the connections in the middle of a request. A
//! busy client never parks (its next request comes within `park_after`), so the hot path is as
//! before. While connections queue for a worker, a quiet relay parks after 1 ms
//! ([`Parker::worker_wanted`]), so a crowd of silent ones holds no worker either. A parked
//! connection idle for `idle_ms` is closed here. At shutdown parked connections are closed, as
//! nginx and HAProxy close idle keep-alive connections at a graceful stop; one parked less
//! than [`SHUTDOWN_GRACE`](crate::conn::SHUTDOWN_GRACE) ago first gets the rest of that time
//! to send the request it may have on the wire, as a worker waiting between requests does, and
//! a new one that has sent nothing yet gets that time from the stop.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use parking_lot::Mutex;
use rustix::event::epoll;

use crate::conn::Conn;
use crate::logging::{held_back, RateLimit};
use crate::relay::Interest;
use crate::stats::ProxyCounters;

/// How long a keep-alive client, or a relay, may move no byte before it parks and frees its
/// worker: far longer than a busy client takes between two requests (microseconds to a few ms,
/// tens of ms at c=1000), short enough that a new connection arriving while every worker holds
/// an idle one soon gets a worker. Parking at once instead measured 0.62x the requests/s at
/// c=16 and 256 (`bench/results/20261204-park-at-once-ab.md`).
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// The wake pipe's key in the epoll set (connection ids start at 1).
const WAKE: u64 = u64::MAX;
/// Set in the key of a quiet relay's backend socket (the client's is the connection's id).
const BACKEND: u64 = 1 << 62;
/// How often parked connections are checked against `idle_ms`.
const SWEEP: Duration = Duration::from_secs(1);
/// How long after its last response a parked connection may still send a request at a stop.
const GRACE: Duration = crate::conn::SHUTDOWN_GRACE;
/// How often the stopping thread looks again at what it still holds.
const LINGER_TICK: Duration = Duration::from_millis(50);

fn timespec(d: Duration) -> rustix::event::Timespec {
    // At least a millisecond: epoll's resolution, and no busy loop on a deadline just passed.
    crate::net::timespec(d.max(Duration::from_millis(1)))
}

/// What a parked connection waits for.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Its next request, idle since this instant (`idle_ms` from it).
    Idle(Instant),
    /// The rest of a head (or, new, its first byte), until this `header_ms` deadline (`None`:
    /// no limit); the bytes so far travel in the connection ([`Conn::head`]).
    Head(Option<Instant>),
    /// A quiet relay or tunnel: bytes from either side, or its idle deadline, when it goes back
    /// to a worker to be closed and logged ([`Conn::quiet`]).
    Relay(Option<Instant>),
    /// Answered and half-closed: what the client still sends is drained here, then it closes
    /// ([`Parker::park_linger`]).
    Linger(Lingering),
}

/// A lingering close under way: drained until `until` (the client quiet that long, or the end).
#[derive(Debug, Clone, Copy)]
struct Lingering {
    until: Instant,
    end: Instant,
    /// Bytes it may still send.
    left: usize,
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Idle(_) => None,
            Wait::Head(d) | Wait::Relay(d) => d,
            Wait::Linger(l) => Some(l.until),
        }
    }
}

/// The parked connections, and the head deadlines among them in order.
#[derive(Default)]
struct Parked {
    conns: HashMap<u64, (Conn, Wait)>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the thread's current wait ends: a deadline before it must wake the thread.
    asleep_until: Option<Instant>,
    /// Set when the stopped thread closed what it held: nothing enters any more.
    closed: bool,
}

impl Parked {
    fn take(&mut self, id: u64) -> Option<(Conn, Wait)> {
        let (conn, wait) = self.conns.remove(&id)?;
        if let Some(d) = wait.deadline() {
            self.deadlines.remove(&(d, id));
        }
        Some((conn, wait))
    }
}

/// Idle keep-alive connections, waiting in one epoll set for their next request.
pub struct Parker {
    epoll: OwnedFd,
    parked: Mutex<Parked>,
    /// The workers' channel, to see whether connections wait (its sender is the thread's, so
    /// the channel closes when the thread ends).
    queue: OnceLock<Receiver<Conn>>,
    /// A sender on that channel for [`Parker::requeue`], dropped by [`Parker::stop`] (the
    /// workers' loops end only when every sender is gone).
    jobs: Mutex<Option<Sender<Conn>>>,
    /// The wake pipe's write end; dropped by [`Parker::stop`].
    wake: Mutex<Option<OwnedFd>>,
    /// Its read end, in the epoll set.
    _wake_rx: OwnedFd,
    open: AtomicBool,
    /// Set when [`Running`] drops, after the drain: quiet relays still parked are closed.
    finished: AtomicBool,
    /// A parked connection idle this long is closed (zero: never).
    idle: Duration,
    /// Where a TLS handshake that ran out of time here is counted.
    counters: OnceLock<Arc<ProxyCounters>>,
    /// `accept_proxy` as written, for the line of a PROXY header that never came.
    accept_proxy: OnceLock<&'static str>,
}

impl Parker {
    /// An empty parker whose connections may idle `idle` (zero: no limit). Idle connections and
    /// heads park only once [`Parker::spawn`] has started its thread.
    pub fn new(idle: Duration) -> std::io::Result<Arc<Parker>> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let (wake_rx, wake_tx) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC)?;
        epoll::add(&ep, &wake_rx, epoll::EventData::new_u64(WAKE), epoll::EventFlags::IN)?;
        let parker = Parker {
            epoll: ep,
            parked: Mutex::new(Parked::default()),
            queue: OnceLock::new(),
            jobs: Mutex::new(None),
            wake: Mutex::new(Some(wake_tx)),
            _wake_rx: wake_rx,
            open: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            idle,
            counters: OnceLock::new(),
            accept_proxy: OnceLock::new(),
        };
        Ok(Arc::new(parker))
    }

    /// Starts the parker's thread, which hands readable connections to `jobs` (whose length
    /// `queue` tells). The thread stops, closing what is parked, when the handle drops.
    pub fn spawn(self: &Arc<Parker>, jobs: Sender<Conn>, queue: Receiver<Conn>) -> std::io::Result<Running> {
        let _ = self.queue.set(queue);
        *self.jobs.lock() = Some(jobs.clone());
        self.open.store(true, Ordering::SeqCst);
        let parker = self.clone();
        match thread::Builder::new().name("parker".into()).spawn(move || parker.run(&jobs)) {
            Ok(thread) => Ok(Running { parker: self.clone(), thread: Some(thread) }),
            Err(e) => {
                self.open.store(false, Ordering::SeqCst);
                drop(self.jobs.lock().take());
                Err(e)
            }
        }
    }

    /// Counts TLS handshakes that run out of `header_ms` here into `counters`.
    pub fn count_into(&self, counters: Arc<ProxyCounters>) {
        let _ = self.counters.set(counters);
    }

    /// Names the `accept_proxy` setting in the line of a PROXY header that never came.
    pub fn name_accept_proxy(&self, setting: &'static str) {
        let _ = self.accept_proxy.set(setting);
    }

    /// Whether connections wait for a worker: then an idle keep-alive connection should park
    /// at once rather than hold its worker.
    pub fn pressed(&self) -> bool {
        self.queue.get().is_some_and(|q| !q.is_empty())
    }

    /// Whether the calling worker is wanted elsewhere: connections wait for a worker, or its
    /// place went to another while it waited on a peer. A quiet relay then parks at once.
    pub fn worker_wanted(&self) -> bool {
        self.pressed() || crate::threads::gate::stepped_aside()
    }

    /// Parks `conn`, idle since `since`, until its socket is readable (a request, or the client
    /// closing). Refused (the parker stopped, or cannot watch the socket), it comes back: a
    /// client between two requests may have its next one on the wire.
    #[must_use = "a refused connection comes back; dropping it closes it"]
    pub fn park(&self, conn: Conn, since: Instant) -> Option<Conn> {
        self.enter(conn, Wait::Idle(since))
    }

    /// Puts `conn`, idle since `since` between requests, straight back on the workers' queue
    /// instead of watching it: for when connections already wait there, so that by its turn its
    /// next request has usually come, and it skips the epoll set (two `epoll_ctl`) and this
    /// thread's hand-over. The worker that takes it reads without waiting and parks it here if
    /// nothing came. Refused (the queue full, or the parker stopped), it comes back.
    #[must_use = "a refused connection comes back; dropping it closes it"]
    pub fn requeue(&self, mut conn: Conn, since: Instant) -> Option<Conn> {
        let jobs = self.jobs.lock();
        let Some(jobs) = jobs.as_ref() else { return Some(conn) };
        conn.parked_since = Some(since);
        conn.requeued = true;
        jobs.try_send(conn).err().map(|refused| {
            let mut conn = refused.into_inner();
            (conn.parked_since, conn.requeued) = (None, false);
            conn
        })
    }

    /// Parks `conn` in the middle of a request head (its bytes so far in [`Conn::head`]), or
    /// new and silent, until more arrives; at `deadline` (`header_ms`) it gets 408 and is closed
    /// (a ClientHello goes back to a worker). Refused (stopping, or unwatchable), it comes back.
    #[must_use = "a refused connection comes back, to be served or closed"]
    pub fn park_head(&self, conn: Conn, deadline: Option<Instant>) -> Option<Conn> {
        self.enter(conn, Wait::Head(deadline))
    }

    /// Parks a relay or tunnel gone quiet ([`Conn::go_quiet`]) until either side sends or its
    /// idle deadline passes; a worker then resumes it. At a stop too, through the drain. Refused
    /// (the drain is over, or the sockets cannot be watched): the connection comes back, to
    /// relay on in the worker.
    #[must_use = "a refused connection comes back, to relay on"]
    pub fn park_quiet(&self, conn: Conn) -> Option<Conn> {
        let Some(q) = conn.quiet() else { return Some(conn) };
        let deadline = q.deadline;
        self.enter(conn, Wait::Relay(deadline))
    }

    /// Parks `conn`; refused, it comes back.
    fn enter(&self, conn: Conn, wait: Wait) -> Option<Conn> {
        let mut parked = self.parked.lock();
        // At a stop, lingering closes still enter, to be drained to their end (a second at most)
        // before the thread closes what remains; so do TLS handshakes and ClientHellos under way,
        // and relays and tunnels gone quiet: they drain, each taking a worker only while it
        // speaks (held in the workers, `workers` of them would starve the rest).
        let stays = matches!(wait, Wait::Linger(_) | Wait::Relay(_))
            || conn.handshake.is_some()
            || conn.reading_hello();
        if parked.closed || !(stays || self.open.load(Ordering::SeqCst)) {
            return Some(conn);
        }
        if let Err(e) = self.watch(&conn) {
            // A local shortage (epoll's memory or watch limit) that a crowd meets each time.
            static CANNOT_PARK: RateLimit = RateLimit::new();
            if let Some(n) = CANNOT_PARK.check() {
                log::warn!("conn {} from {}: cannot park ({e}){}", conn.id, conn.peer, held_back(n));
            }
            return Some(conn);
        }
        let mut sooner = false;
        if let Some(d) = wait.deadline() {
            parked.deadlines.insert((d, conn.id));
            sooner = parked.asleep_until.is_some_and(|until| d < until);
        }
        parked.conns.insert(conn.id, (conn, wait));
        drop(parked);
        // Only a deadline before the thread's current wait ends needs it awake (rarely: waits
        // last at most a second, `header_ms` is seconds).
        if sooner {
            self.poke();
        }
        None
    }

    /// Adds the connection's sockets to the epoll set: the client's, and a quiet relay's
    /// backend, each for what its relay waits on (input or the peer closing, room to send, or
    /// only a reset); each reports once (`ONESHOT`). A side the relay can wait on for nothing is
    /// left out: what it reported could not be acted on, and would report again at once.
    fn watch(&self, conn: &Conn) -> rustix::io::Result<()> {
        let flags = |on: Interest| {
            let mut f = epoll::EventFlags::ONESHOT;
            if on.read {
                f |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            }
            if on.write {
                f |= epoll::EventFlags::OUT;
            }
            // Errors and hang-ups report unasked.
            (on.read || on.write || on.reset).then_some(f)
        };
        let reads = Interest { read: true, write: false, reset: true };
        let (client, backend) = match conn.quiet() {
            Some(q) => (flags(q.on_client), flags(q.on_backend).map(|f| (q, f))),
            None => (flags(reads), None),
        };
        if let Some(f) = client {
            epoll::add(&self.epoll, &conn.stream, epoll::EventData::new_u64(conn.id), f)?;
        }
        if let Some((q, f)) = backend {
            if let Err(e) =
                epoll::add(&self.epoll, &q.backend, epoll::EventData::new_u64(conn.id | BACKEND), f)
            {
                let _ = epoll::delete(&self.epoll, &conn.stream);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes the connection's sockets out of the epoll set.
    fn unwatch(&self, conn: &Conn) {
        let _ = epoll::delete(&self.epoll, &conn.stream);
        if let Some(q) = conn.quiet() {
            let _ = epoll::delete(&self.epoll, &q.backend);
        }
    }

    /// Wakes the thread to recompute its wait.
    fn poke(&self) {
        if let Some(tx) = self.wake.lock().as_ref() {
            let _ = rustix::io::write(tx, &[1]);
        }
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.parked.lock().conns.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops parking; the thread closes every parked connection and returns.
    fn stop(&self) {
        self.open.store(false, Ordering::SeqCst);
        drop(self.jobs.lock().take());
        drop(self.wake.lock().take());
    }

    fn run(&self, jobs: &Sender<Conn>) {
        let mut events = Vec::with_capacity(256);
        let mut ready = Vec::new();
        let mut swept = Instant::now();
        while self.open.load(Ordering::SeqCst) {
            // Until the next sweep, or the next head deadline if sooner.
            let wait = {
                let mut parked = self.parked.lock();
                let now = Instant::now();
                let next = parked.deadlines.first().map(|(d, _)| *d);
                let wait = next.map_or(SWEEP, |d| d.saturating_duration_since(now).min(SWEEP));
                parked.asleep_until = Some(now + wait);
                wait
            };
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timespec(wait)))
            {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::error!("parker: epoll_wait: {e}; parked connections are closed");
                    break;
                }
            }
            if events.iter().any(|ev| ev.data.u64() == WAKE) {
                let mut sink = [0u8; 64];
                let _ = rustix::io::read(&self._wake_rx, &mut sink);
            }
            self.hand_over_ready(jobs, &events, &mut ready);
            self.expire(jobs, Instant::now());
            if swept.elapsed() >= SWEEP {
                swept = Instant::now();
                self.close_expired();
            }
        }
        self.linger(jobs, &mut events, &mut ready);
    }

    /// Takes the connections `events` reported out of the set and sends them to the workers.
    /// A lingering close is drained here instead.
    fn hand_over_ready(&self, jobs: &Sender<Conn>, events: &[epoll::Event], ready: &mut Vec<Conn>) {
        let mut lingering = Vec::new();
        {
            let mut parked = self.parked.lock();
            for ev in events {
                if let Some((mut conn, wait)) = parked.take(ev.data.u64() & !BACKEND) {
                    self.unwatch(&conn);
                    match wait {
                        Wait::Linger(l) => lingering.push((conn, l)),
                        Wait::Idle(since) => {
                            conn.parked_since = Some(since);
                            ready.push(conn);
                        }
                        Wait::Head(_) | Wait::Relay(_) => ready.push(conn),
                    }
                }
            }
        }
        for (conn, l) in lingering {
            self.drain(conn, l);
        }
        for conn in ready.drain(..) {
            if !self.hand_over(jobs, conn) {
                break;
            }
        }
    }

    /// Sends `conn` to the workers, waiting while the queue is full (backpressure, as the
    /// acceptor's), through a stop's drain too, until the parker is done: false then, and
    /// `conn` is closed.
    fn hand_over(&self, jobs: &Sender<Conn>, mut conn: Conn) -> bool {
        loop {
            match jobs.send_timeout(conn, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(c)) if !self.finished.load(Ordering::SeqCst) => conn = c,
                Err(_) => return false,
            }
        }
    }
}

mod ends;
pub use ends::close_lingering;
mod handshake;
mod running;
pub use running::Running;

#[cfg(test)]
mod tests;
