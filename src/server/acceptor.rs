//! The acceptor thread: waits in `poll(2)` on the listening socket (and a wake pipe, so a
//! shutdown or takeover stops it without shutting the shared socket down), accepts, registers
//! each connection and sends it to the workers on the bounded channel: when the channel is
//! full it blocks, and the kernel's backlog holds the rest (backpressure, nothing dropped).

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::start::Shared;
use crate::conn::{Conn, Registry};
use crate::error::Error;
use crate::logging::{held_back, RateLimit};
use crate::net::is_local_resource;
use crate::stats::ProxyCounters;

/// How long the acceptor backs off when the descriptor table is full.
const FD_BACKOFF: Duration = Duration::from_millis(50);

static SHORT: RateLimit = RateLimit::new();

/// What the acceptor thread owns.
pub struct Acceptor {
    /// Non-blocking: the acceptor waits in `poll` on it and on `wake`.
    pub listener: Arc<TcpListener>,
    /// The read end of a pipe whose write end drops at shutdown.
    pub wake: OwnedFd,
    pub jobs: Sender<Conn>,
    pub halt: Receiver<()>,
    pub stopping: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
    pub counters: Arc<ProxyCounters>,
    pub workers: usize,
}

impl Acceptor {
    /// Waits until the listener has a connection (true) or shutdown closed the wake pipe.
    fn wait(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return false;
            }
            let mut fds =
                [PollFd::new(&*self.listener, PollFlags::IN), PollFd::new(&self.wake, PollFlags::IN)];
            match poll(&mut fds, None) {
                Ok(_) if !fds[1].revents().is_empty() => return false,
                Ok(_) => return true,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("accept: poll: {e}");
                    return false;
                }
            }
        }
    }

    /// Accepts until shutdown or a takeover stops it, handing each connection to the workers.
    pub fn run(self) {
        crate::threads::pool::batch_scheduling();
        let mut next_id = 0u64;
        // Whether the shortage under way was logged (then its end is too).
        let mut announced = false;
        let mut full_logged = Instant::now() - Duration::from_secs(60);
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(_) if self.stopping.load(Ordering::SeqCst) => return,
                // Nothing pending (or another process sharing the socket took it): wait.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if self.wait() {
                        continue;
                    }
                    return;
                }
                // No descriptor, no memory or buffer: retrying at once would spin.
                Err(e) if is_local_resource(&e) => {
                    // Once a second at most: under a flood, accepts and shortages alternate. One
                    // held back is said within a second if it lasts.
                    if !announced {
                        if let Some(n) = SHORT.check() {
                            log::warn!("accept: {e}; backing off until it frees up{}", held_back(n));
                            announced = true;
                        }
                    }
                    if self.halt.recv_timeout(FD_BACKOFF).is_ok() || self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    log::debug!("accept: {e}");
                    continue;
                }
            };
            if std::mem::take(&mut announced) {
                log::info!("accept: accepting again");
            }
            next_id += 1;
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            // Blocking already: on Linux an accepted socket does not inherit the listener's
            // O_NONBLOCK (accept(2)), so no ioctl is spent saying so (one syscall in 12 per
            // `Connection: close` request).
            let conn = Conn::register(&self.registry, next_id, stream, peer);
            let conn = match self.jobs.try_send(conn) {
                Ok(()) => continue,
                Err(crossbeam_channel::TrySendError::Full(conn)) => conn,
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            };
            if full_logged.elapsed() >= Duration::from_secs(1) {
                log::warn!(
                    "all {} workers busy and the queue is full: accepting paused (backpressure)",
                    self.workers
                );
                full_logged = Instant::now();
            }
            select! {
                send(self.jobs, conn) -> sent => if sent.is_err() { return },
                recv(self.halt) -> _ => return,
            }
        }
    }
}

/// A running acceptor, and what stops it.
pub(super) struct Accepting {
    pub listener: Arc<TcpListener>,
    thread: JoinHandle<()>,
    halt: Sender<()>,
    /// Dropped to wake the acceptor's `poll` at shutdown.
    wake: OwnedFd,
}

/// Starts the acceptor thread on `listener`, sending connections to `jobs`.
pub(super) fn start(
    listener: TcpListener,
    jobs: Sender<Conn>,
    shared: &Shared,
    workers: usize,
) -> Result<Accepting, Error> {
    let (halt, halt_rx) = crossbeam_channel::bounded::<()>(0);
    let (wake_rx, wake) = rustix::pipe::pipe().map_err(|e| Error::Resource(e.into()))?;
    listener.set_nonblocking(true).map_err(Error::Resource)?;
    let listener = Arc::new(listener);
    let acceptor = Acceptor {
        listener: listener.clone(),
        wake: wake_rx,
        jobs,
        halt: halt_rx,
        stopping: shared.stopping.clone(),
        registry: shared.registry.clone(),
        counters: shared.counters.clone(),
        workers,
    };
    let thread = thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || acceptor.run())
        .map_err(Error::Resource)?;
    Ok(Accepting { listener, thread, halt, wake })
}

impl Accepting {
    /// Stops accepting at once: the closed wake pipe ends the acceptor's poll. Unless another
    /// process took the listening sockets over, they are shut down too (`admin` with them), so
    /// new connects are refused rather than left in a backlog nobody serves. After a takeover
    /// they are the new process's too: shutting them down would break it, and connections
    /// that keep arriving go to it.
    pub fn stop(self, taken_over: bool, admin: Option<&TcpListener>) {
        drop(self.halt);
        drop(self.wake);
        if !taken_over {
            for l in std::iter::once(&*self.listener).chain(admin) {
                let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
            }
        }
        let _ = self.thread.join();
    }
}
