//! How parked connections end: idle ones at `idle_ms`, unfinished heads at `header_ms` (408),
//! quiet relays and unfinished ClientHellos handed back at their deadline, lingering closes
//! drained to their end, and everything at a stop.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Sender;
use rustix::event::epoll;

use super::{timespec, Lingering, Parker, Wait, GRACE, LINGER_TICK};
use crate::conn::Conn;
use crate::error::{Cause, Failure};
use crate::net::{is_timeout, lingering_close, LINGER_QUIET, LINGER_TIME};
use crate::tls::stream::{notify_close, Pending};

/// A lingering connection's reads per wake-up, so that one client still uploading cannot
/// keep the parker from the others: its socket reports again at once if more is there.
const DRAIN_READS: usize = 4;

impl Parker {
    /// Closes `conn`, answered with its input maybe unread, as nginx's `lingering_close`:
    /// half-closed at once, then what the client still sends (at most `most` bytes) is read and
    /// discarded here, holding no worker, until it closes or sends nothing for [`LINGER_QUIET`],
    /// for at most [`LINGER_TIME`]. Closing at once would make the kernel reset the connection,
    /// which can destroy the answer before the client reads it. Refused (stopping, or the
    /// socket cannot be watched), it comes back.
    #[must_use = "a refused connection comes back, to linger in its worker"]
    pub fn park_linger(&self, conn: Conn, most: usize) -> Option<Conn> {
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        let now = Instant::now();
        let lingering = Lingering { until: now + LINGER_QUIET, end: now + LINGER_TIME, left: most };
        self.enter(conn, Wait::Linger(lingering))
    }

    /// Reads and discards what a lingering connection has sent; closes it when the client has
    /// closed or sent all it may, else watches it again.
    pub(super) fn drain(&self, conn: Conn, mut l: Lingering) {
        let mut sink = [0u8; 16 * 1024];
        for _ in 0..DRAIN_READS {
            let most = l.left.min(sink.len());
            match crate::net::recv(&conn.stream, &mut sink[..most], false) {
                Ok(n @ 1..) if n < l.left => l.left -= n,
                Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => break,
                // Closed, failed, or it sent what it may: closed here.
                _ => return,
            }
        }
        let now = Instant::now();
        if now >= l.end {
            return;
        }
        l.until = l.end.min(now + LINGER_QUIET);
        // Refused once the parker has closed everything: closed.
        drop(self.enter(conn, Wait::Linger(l)));
    }

    /// At a stop: a connection parked a moment ago may have its next request on the wire. As a
    /// worker waiting between requests does, each gets [`GRACE`] from its last response to send
    /// it, and is then served (with `Connection: close`, since the proxy is stopping); the rest
    /// are closed, as nginx and HAProxy close idle keep-alive connections at a graceful stop.
    /// A new connection that has sent nothing of a request yet gets [`GRACE`] from the stop (a
    /// TLS client sends its request right after the handshake, a browser's preconnected socket
    /// whenever it needs one), as nginx and HAProxy answer it; one in the middle of a head gets
    /// nothing more, but a ClientHello under way (tcp mode) is finished with the drain.
    /// Quiet relays and tunnels drain as the rest: they stay watched, going to a worker when
    /// either side speaks or the drain deadline shuts them, until [`Running`] is dropped.
    pub(super) fn linger(&self, jobs: &Sender<Conn>, events: &mut Vec<epoll::Event>, ready: &mut Vec<Conn>) {
        // The closed wake pipe would report readable for ever.
        let _ = epoll::delete(&self.epoll, &self._wake_rx);
        let fresh_until = Instant::now() + GRACE;
        let mut closed = 0usize;
        loop {
            let now = Instant::now();
            let (last, drains) = {
                let mut parked = self.parked.lock();
                // A connection in the middle of a head gets nothing more (nginx closes it too).
                let done = |conn: &Conn, wait: &Wait| match wait {
                    Wait::Idle(since) => now.duration_since(*since) >= GRACE,
                    // A ClientHello under way is read, routed and relayed with the drain, as
                    // HAProxy and nginx finish a connection's inspection at a graceful stop.
                    Wait::Head(_) if conn.reading_hello() => self.finished.load(Ordering::SeqCst),
                    Wait::Head(_) => !conn.sent_nothing() || now >= fresh_until,
                    // A lingering close goes on to its end: cut, it could reset the answer.
                    Wait::Linger(l) => now >= l.end,
                    Wait::Relay(_) => self.finished.load(Ordering::SeqCst),
                };
                let gone: Vec<_> = parked.conns.extract_if(|_, (conn, wait)| done(conn, wait)).collect();
                for (id, (conn, wait)) in gone {
                    if let Some(d) = wait.deadline() {
                        parked.deadlines.remove(&(d, id));
                    }
                    self.unwatch(&conn);
                    self.close_at_stop(&conn);
                    closed += 1;
                }
                let ends = parked.conns.values().filter_map(|(conn, w)| match w {
                    Wait::Idle(since) => Some(*since + GRACE),
                    Wait::Linger(l) => Some(l.end),
                    Wait::Head(_) => (conn.sent_nothing() && !conn.reading_hello()).then_some(fresh_until),
                    Wait::Relay(_) => None,
                });
                let drains =
                    parked.conns.values().any(|(c, w)| matches!(w, Wait::Relay(_)) || c.reading_hello());
                (ends.max(), drains)
            };
            // Until the drain ends: a worker may still park a handshake or a ClientHello.
            if last.is_none() && !drains && self.finished.load(Ordering::SeqCst) {
                break;
            }
            let wait = last.map_or(LINGER_TICK, |l| l.saturating_duration_since(now).min(LINGER_TICK));
            events.clear();
            if let Err(e) =
                epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), Some(&timespec(wait)))
            {
                if e != rustix::io::Errno::INTR {
                    break;
                }
            }
            self.hand_over_ready(jobs, events, ready);
            self.expire(jobs, Instant::now());
        }
        let rest: Vec<_> = {
            let mut parked = self.parked.lock();
            parked.closed = true;
            parked.conns.drain().collect()
        };
        for (_, (conn, _)) in rest {
            self.close_at_stop(&conn);
            closed += 1;
        }
        if closed > 0 {
            log::debug!("parker: closed {closed} idle connection(s)");
        }
    }

    /// Closes `conn` at a stop: a TLS client is told first; a handshake under way has failed
    /// (not one that never began: a client that sent nothing, such as a browser's preconnected
    /// socket, is closed as a plain one is, without a word).
    fn close_at_stop(&self, conn: &Conn) {
        if conn.handshake.as_ref().is_some_and(|h| !matches!(h, Pending::Fresh)) {
            self.handshake_failed(conn, "not complete when the proxy stopped");
        }
        told_close(conn);
    }

    /// Closes parked keep-alive connections idle longer than `idle_ms`.
    pub(super) fn close_expired(&self) {
        if self.idle.is_zero() {
            return;
        }
        let idle_out = |wait: &Wait| matches!(wait, Wait::Idle(since) if since.elapsed() >= self.idle);
        let expired: Vec<_> = self.parked.lock().conns.extract_if(|_, (_, wait)| idle_out(wait)).collect();
        for (_, (conn, _)) in expired {
            let _ = epoll::delete(&self.epoll, &conn.stream);
            told_close(&conn);
            log::debug!("conn {} from {}: idle longer than idle_ms, closed", conn.id, conn.peer);
        }
    }

    /// Answers 408 to, and closes, every connection whose head is still unfinished at its
    /// `header_ms` deadline, as a worker waiting for it would have; hands a quiet relay whose
    /// idle limit passed to a worker, which ends and logs it, and so a ClientHello still
    /// unfinished (tcp mode's SNI routing), which the worker routes or closes.
    pub(super) fn expire(&self, jobs: &Sender<Conn>, now: Instant) {
        let mut late = Vec::new();
        {
            let mut parked = self.parked.lock();
            while let Some(&(d, id)) = parked.deadlines.first() {
                if d > now {
                    break;
                }
                parked.deadlines.pop_first();
                match parked.conns.remove(&id) {
                    // Its client quiet long enough, or its time up: closed.
                    Some((conn, Wait::Linger(_))) => self.unwatch(&conn),
                    Some((conn, _)) => late.push(conn),
                    None => {}
                }
            }
        }
        for conn in late {
            self.unwatch(&conn);
            // A quiet relay, or a ClientHello that tcp mode routes by: the worker decides.
            if conn.quiet().is_some() || conn.reading_hello() {
                if !self.hand_over(jobs, conn) {
                    break;
                }
                continue;
            }
            if conn.greeting.is_some() {
                // As nginx and HAProxy: a missing PROXY header gets no answer.
                let setting = self.accept_proxy.get().copied().unwrap_or("on");
                conn.refuse_greeting("no PROXY header within header_ms", setting);
                continue;
            }
            if conn.handshake.is_some() {
                self.handshake_failed(&conn, "not complete within header_ms");
                continue;
            }
            let Some(answer) = conn.refuse_head(&Failure::head(Cause::Timeout)) else { continue };
            // The answer a worker gives (dated now), written without waiting: in the middle of
            // a request the socket's buffer is empty, so it fits; if not, the close alone
            // tells. A TLS client's goes encrypted.
            match &conn.tls_session {
                Some(session) => {
                    let mut c = session.lock();
                    if std::io::Write::write_all(&mut c.writer(), &answer).is_ok() {
                        notify_close(&mut c, &conn.stream);
                    }
                }
                None => {
                    let _ = crate::net::send_now(&conn.stream, &answer);
                }
            }
        }
    }
}

/// Closes `conn` after an answer with its input maybe unread: it lingers in `parker`, holding no
/// worker (nginx's `lingering_close` is event-driven too), or, without one (or refused), in the
/// calling worker.
pub fn close_lingering(conn: Conn, parker: Option<&Parker>, most: usize) {
    let refused = match parker {
        Some(parker) => parker.park_linger(conn, most),
        None => Some(conn),
    };
    if let Some(conn) = refused {
        lingering_close(&conn.stream, most);
    }
}

/// Closes `conn` (it drops): a TLS client is told first (`close_notify`), as a worker closing
/// it tells it.
fn told_close(conn: &Conn) {
    if let Some(session) = &conn.tls_session {
        notify_close(&mut session.lock(), &conn.stream);
    }
}
