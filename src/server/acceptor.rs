//! The acceptor thread: waits in `poll(2)` on the listening socket (and a wake pipe, so a
//! shutdown or takeover stops it without shutting the shared socket down), accepts, registers
//! each connection and sends it to the workers on the bounded channel: when the channel is
//! full it blocks, and the kernel's backlog holds the rest (backpressure, nothing dropped).

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::conn::{Conn, Registry};
use crate::net::is_fd_exhaustion;
use crate::stats::ProxyCounters;

/// How long the acceptor backs off when the descriptor table is full.
const FD_BACKOFF: Duration = Duration::from_millis(50);

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
        let mut fd_burst = false;
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
                Err(e) if is_fd_exhaustion(&e) => {
                    if !fd_burst {
                        log::warn!("accept: {e}; backing off until descriptors free up");
                        fd_burst = true;
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
            if fd_burst {
                log::info!("accept: descriptors available again");
                fd_burst = false;
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
