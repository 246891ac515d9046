//! The admin thread's poll loop: accept, then move every admin connection along as its socket
//! becomes ready or its deadline passes. All sockets are nonblocking, so the time any one
//! client can take from the others is the time to copy its bytes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::conn::Conn;
use super::dashboard::{self, for_viewer, Dashboard};
use super::{route, Admin, MAX_PENDING};
use crate::h1::head::Request;
use crate::logging::{held_back, RateLimit};

/// The longest poll wait: how soon `stopping` is seen even if the shut-down listener's wake-up
/// were missed.
const TICK: Duration = Duration::from_millis(250);

/// The longest poll wait while someone watches `/events`: how long an event may wait in a
/// viewer's queue before it is sent.
const STREAM_TICK: Duration = Duration::from_millis(50);

/// Connections accepted per wake-up, so a connect storm cannot starve the ones already open.
const ACCEPT_BATCH: usize = 64;

/// After an accept error other than "none pending" (EMFILE, ENFILE, ENOBUFS), the listener is
/// left out of the poll set this long: it stays readable, and polling it would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

static ACCEPT_FAILED: RateLimit = RateLimit::new();
static EVICTED: RateLimit = RateLimit::new();

/// Serves admin connections until `stopping` is set.
pub(super) fn run(listener: &TcpListener, admin: &Admin, stopping: &AtomicBool) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("admin listener: {e}; /stats, /metrics and /health are off");
        return;
    }
    let dashboard = RefCell::new(Dashboard::new());
    let route = |req: &Request, peer: SocketAddr| route(admin, &dashboard.borrow(), req, peer);
    // Oldest first, so the one to close when full is at the front.
    let mut conns: VecDeque<Conn> = VecDeque::new();
    let mut paused_until: Option<Instant> = None;
    while !stopping.load(Ordering::SeqCst) {
        let now = Instant::now();
        let listening = paused_until.is_none_or(|t| now >= t);
        let due = dashboard.borrow().due();
        let next_deadline = conns.iter().map(Conn::deadline).chain(paused_until).chain(due).min();
        // With viewers, look at their queues often: events wait at most this long.
        let most = if dashboard::watched() { STREAM_TICK } else { TICK };
        let wait = next_deadline.map_or(most, |d| d.saturating_duration_since(now)).min(most);
        let ready = match wait_ready(listener, listening, &conns, wait) {
            Ok(ready) => ready,
            Err(Errno::INTR) => continue,
            Err(e) => {
                log::error!("admin: poll: {e}; /stats, /metrics and /health are off");
                return;
            }
        };
        let now = Instant::now();
        let (listener_ready, conns_ready) = match listening {
            true => (ready[0], &ready[1..]),
            false => (PollFlags::empty(), &ready[..]),
        };
        let mut ready = conns_ready.iter();
        conns.retain_mut(|conn| {
            let flags = ready.next().copied().unwrap_or(PollFlags::empty());
            (flags.is_empty() || conn.on_ready(now, &route)) && conn.on_deadline(now)
        });
        let tick = dashboard.borrow_mut().tick(admin, now, conns.iter().any(Conn::is_stream));
        let make = |dropped: u64| tick.as_ref().map_or_else(String::new, |t| for_viewer(t, dropped));
        let extra: Option<&dyn Fn(u64) -> String> = if tick.is_some() { Some(&make) } else { None };
        conns.retain_mut(|conn| !conn.is_stream() || conn.pump(now, extra));
        if listening {
            paused_until = None;
            // A shut-down listener reports ready too; accepting on it would only log an error.
            if !listener_ready.is_empty() && !stopping.load(Ordering::SeqCst) {
                paused_until = accept(listener, &mut conns, now);
            }
        }
    }
}

/// Polls the listener (when `listening`) and every connection; the readiness of each, in
/// that order.
fn wait_ready(
    listener: &TcpListener,
    listening: bool,
    conns: &VecDeque<Conn>,
    wait: Duration,
) -> Result<Vec<PollFlags>, Errno> {
    let mut fds = Vec::with_capacity(conns.len() + 1);
    if listening {
        fds.push(PollFd::new(listener, PollFlags::IN));
    }
    fds.extend(conns.iter().map(|c| PollFd::new(c.stream(), c.interest())));
    // `wait` is at most TICK, which always fits.
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
    poll(&mut fds, Some(&timeout))?;
    Ok(fds.iter().map(PollFd::revents).collect())
}

/// Accepts what is pending (at most a batch). `Some(until)` when accepting must pause.
fn accept(listener: &TcpListener, conns: &mut VecDeque<Conn>, now: Instant) -> Option<Instant> {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Not inherited from the listener on Linux; a blocking one would stall the loop.
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                conns.push_back(Conn::new(stream, peer, now));
                if conns.len() > MAX_PENDING {
                    conns.pop_front();
                    if let Some(n) = EVICTED.check() {
                        log::warn!(
                            "admin: more than {MAX_PENDING} connections open; closed the oldest{}",
                            held_back(n)
                        );
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                if let Some(n) = ACCEPT_FAILED.check() {
                    log::warn!("admin accept: {e}{}", held_back(n));
                }
                return Some(now + ACCEPT_PAUSE);
            }
        }
    }
    None
}
