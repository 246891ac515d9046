//! HTTP mode: a worker owns one client connection and serves its requests in order, each
//! balanced on its own, over pooled persistent backend connections.
//!
//! Per request: read and check the head (`header_ms`), pick a backend, take a pooled
//! connection or connect (the next backend on failure), send the rewritten head and stream the
//! body, read the response head (`response_ms`), stream the body back re-framed for the client,
//! pool the backend connection if it can be reused, and write one access-log line.
//!
//! Retries, as nginx's `proxy_next_upstream error` with `non_idempotent` off: when a backend
//! connection breaks before any byte of the response arrived and nothing of the request body
//! was consumed, an idempotent request (or one with an `Idempotency-Key`) is sent again, on a
//! fresh connection (a stale pooled one) or to the next backend. Others get 502.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::answer::{answer_here, answer_refused, per_request};
use super::client::{
    access_log, fill_within, holds_plaintext, leave, read_now, refuse_admission, refuse_head, tls_version,
    write_error,
};
use super::context::{Attempt, Exchange, Record, Scratch};
use super::download;
use super::exchange::Served;
use super::timers::{After, Before, Filled, IdleTimers, Limits, Now, ReadTimeout, Wait, NO_LIMIT};
use super::upgrade::{self, Parked};
use crate::balancer::{header_value_key, source_key, Balancer};
use crate::config::as_limit;
use crate::conn::accept::{self, ClientStream, Opened};
use crate::conn::{Conn, PartialHead};
use crate::context::Context;
use crate::error::{Answer, Cause, Failure, Party, Rejection};
use crate::h1::edits::Router;
use crate::h1::request::{self, Forwarding, RequestHead};
use crate::h1::{empty_lines, BodyKind, Coalesce, Wire};
use crate::net::{LINGER_BODY, LINGER_SHORT};
use crate::park::{close_lingering, Parker};
use crate::route::Table;
use crate::tls::stream::Pending;

/// An exchange gone quiet, to park: an upgrade's tunnel, or a body for a slow reader.
enum Quieted {
    Tunnel(TcpStream, Parked),
    Body(TcpStream, download::Parked),
}

/// Serves one client connection until it closes, asks to close, idles out, or the proxy stops.
pub fn serve(mut conn: Conn, ctx: &Context, scratch: &mut Scratch) {
    // A turn hands the connection back to go on in this frame, not one deeper: after a large
    // body's end, or refused by the parker at a stop.
    while let Some(next) = turn(conn, ctx, scratch) {
        conn = next;
    }
}

/// One turn of [`serve`]: requests until the connection closes, parks, or (`Some`) is to go on.
fn turn(mut conn: Conn, ctx: &Context, scratch: &mut Scratch) -> Option<Conn> {
    // Back from the parker with a body for a slow reader, or a quiet tunnel (an upgrade).
    if download::carries(&conn) {
        return download::resume(conn, ctx, scratch);
    }
    if conn.quiet().is_some() {
        upgrade::resume(conn, ctx, scratch);
        return None;
    }
    // Back from the parker: idle since then, its next request readable; or in the middle of a
    // head (or new), more of it readable.
    let resumed = conn.parked_since.take();
    let requeued = std::mem::take(&mut conn.requeued);
    // Put back on the connection when it parks (the stream borrows it until then).
    let mut admitted = conn.admitted.take();
    let partial = conn.head.take();
    let handshake = conn.handshake.take();
    let greeted = partial.is_some() && handshake.is_none();
    // The header clock starts when a worker takes the connection, not at accept: time spent
    // queued for a worker is the proxy's, not the client's. A TLS handshake is part of it.
    // Parking does not restart it.
    let head_started = resumed.or(partial.as_ref().map(|p| p.started)).unwrap_or_else(Instant::now);
    let t = &ctx.config.timeouts;
    let session = conn.tls_session.take();
    let stream = if let Some(session) = session {
        Some(crate::tls::stream::Stream::Tls(&conn.stream, session))
    } else if resumed.is_some() || greeted {
        Some(crate::tls::stream::Stream::Plain(&conn.stream))
    } else if let (Some(listener), Some(parker)) = (ctx.tls.as_deref(), ctx.parker.as_deref()) {
        // The TLS handshake waits in the parker too, its state with the connection.
        let deadline = (!t.header.is_zero()).then(|| head_started + t.header);
        let state = handshake.unwrap_or(Pending::Fresh);
        let first = accept::flight_wait(ctx.stopping.load(Ordering::SeqCst), parker.pressed());
        match accept::resume(&conn, listener, state, deadline, first, &ctx.counters) {
            Opened::Ready(stream) => Some(stream),
            Opened::Waiting(state) => {
                parker.park_handshake(conn, state, head_started, deadline);
                return None;
            }
            Opened::Answered => {
                close_lingering(conn, Some(parker), LINGER_SHORT);
                return None;
            }
            Opened::Closed => None,
        }
    } else {
        accept::open(&conn, ctx.tls.as_deref(), t.header, &ctx.counters)
    };
    let stream = stream?;
    // [limits]: a new connection is admitted once (allow/deny, the connection limit); behind a
    // trusted proxy the client is known per request instead.
    let trusted = ctx.policy.trusts(conn.peer.ip());
    if admitted.is_none() {
        match if trusted { Ok(None) } else { ctx.policy.admit(conn.peer.ip(), false) } {
            Ok(slot) => admitted = Some(slot),
            Err(why) => {
                refuse_admission(&conn, ctx, &stream, why);
                drop(stream);
                close_lingering(conn, ctx.parker.as_deref(), LINGER_SHORT);
                return None;
            }
        }
    }
    let parker = ctx.parker.as_deref();
    let client: &ClientStream = &stream;
    let tcp: &TcpStream = &conn.stream;
    // The socket's timeouts as this function last set them, when it comes back from the parker
    // (nothing else sets them in between; a TLS handshake does, so not after one).
    let known = if resumed.is_some() || greeted { conn.timeouts } else { (None, None) };
    let write = Some(as_limit(t.idle).unwrap_or(NO_LIMIT));
    if known.1 != write {
        let _ = tcp.set_write_timeout(write);
    }
    let client_ip = conn.peer.ip().to_string();
    // The client's source-hash key, once per connection rather than per request.
    let client_key = source_key(conn.peer.ip());
    let local = || tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let proto = if stream.is_tls() { "https" } else { "http" };
    let underscores = ctx.config.http.underscores_in_headers;
    let tls = tls_version(client);
    // The access line names more than the proxy's own wording does (agents, pool, route).
    let wordy = crate::logging::access::format() != crate::config::access::Format::Main;
    let base = Forwarding {
        client: &client_ip,
        local_host: &local,
        proto,
        hash_header: None,
        underscores,
        route: None,
        keep_forwarded: trusted,
        agents: wordy,
    };
    // The table this worker keeps; a request sees the one in force when its head is parsed.
    let mut loaded = scratch.routes.take().unwrap_or_else(|| ctx.router.load());
    let mut cw = Wire::with_buffer(client, std::mem::take(&mut scratch.client_in));
    if let Some(p) = &partial {
        cw.preload(&p.bytes);
    }
    let mut timeout = ReadTimeout { stream: tcp, current: known.0 };
    let limits = Limits { idle: as_limit(t.idle), header: as_limit(t.header) };
    let mut timers = IdleTimers::new(limits, head_started, u64::from(resumed.is_some()), greeted);
    timers.requeued = requeued;
    let mut linger = false;
    // How the connection leaves this worker when it is not closed.
    let mut parks = None;
    // Between requests while connections wait for a worker ([`Parker::requeue`]).
    let mut requeue = false;
    // An upgrade's tunnel or a body gone quiet, to park.
    let mut quiet = None;
    'requests: loop {
        loaded.refresh(&ctx.router);
        let table: &Table = loaded.table();
        let route_http = |host: &str, target: &str| table.route_http(host, target);
        let fwd = Forwarding {
            hash_header: table.hashes_header().then_some(ctx.config.scale.hash_header.as_str()),
            route: table.routes_http().then_some(&route_http as &Router<'_>),
            ..base
        };
        // Wait for (the rest of) a request head.
        let head = loop {
            if !cw.buffered().is_empty() {
                // A reload while this request was on its way: parse it with the new table.
                if !loaded.is_current(&ctx.router) {
                    continue 'requests;
                }
                scratch.head.clear();
                match request::parse(cw.buffered(), ctx.config.http.max_head_bytes, &fwd, &mut scratch.head) {
                    Ok(Some(head)) => break Some(head),
                    // An old client's CRLF after a POST body: no next request, between requests.
                    Ok(None) if timers.served > 0 && empty_lines(cw.buffered()) => {
                        cw.consume(cw.buffered().len())
                    }
                    Ok(None) => {}
                    Err(r) => {
                        refuse_head(
                            &conn,
                            client,
                            &Failure::head(Cause::Rejected(r)),
                            &mut scratch.client_out,
                        );
                        linger = true;
                        break None;
                    }
                }
            }
            let between_requests = cw.buffered().is_empty();
            let now = Now {
                parker: parker.is_some(),
                // Connections wait for a worker, or this one's place went to another while it
                // waited on a peer: either way, the client goes back to the queue.
                pressed: between_requests
                    && (parker.is_some_and(Parker::pressed) || crate::threads::gate::stepped_aside()),
                stopping: ctx.stopping.load(Ordering::SeqCst),
                holds_plaintext: between_requests && holds_plaintext(client),
                between_requests,
            };
            // Waiting for a request: a shutdown closes the connection once idle a while.
            conn.set_idle(between_requests);
            let wait = match timers.before(&now, Instant::now()) {
                Before::Read(wait) => wait,
                Before::Park(wait) => {
                    // Idle while connections wait for a worker: requeued rather than watched.
                    requeue = wait == Wait::Idle;
                    parks = Some(wait);
                    break None;
                }
                Before::TimedOut => {
                    refuse_head(&conn, client, &Failure::head(Cause::Timeout), &mut scratch.client_out);
                    break None;
                }
                Before::Close => break None,
            };
            let max_head = ctx.config.http.max_head_bytes;
            let filled = match wait {
                // A first byte's brief wait: timed exactly.
                Some(limit) if limit <= accept::FIRST_BYTE => fill_within(&mut cw, tcp, max_head, limit),
                Some(limit) => {
                    timeout.set(limit);
                    cw.fill(max_head)
                }
                None => cw.fill_by(max_head, read_now),
            };
            conn.set_idle(false);
            let mut read = Filled::of(&filled, wait.is_some());
            let mut now = now;
            if read == Filled::Bytes && between_requests && timers.served > 0 && empty_lines(cw.buffered()) {
                cw.consume(cw.buffered().len());
                read = Filled::EmptyLines;
                now.holds_plaintext = holds_plaintext(client);
            }
            match timers.after(&now, read, Instant::now()) {
                After::Parse | After::ReadOn => {}
                After::Park(wait) => {
                    parks = Some(wait);
                    break None;
                }
                After::Trim => {
                    // Idle a while without a parker: give back the stack this worker's requests
                    // touched, so thousands of idle keep-alive clients stay cheap. Then wait on.
                    cw.release_buffer();
                    scratch.release();
                    crate::threads::stack::give_back();
                }
                After::TimedOut => {
                    refuse_head(&conn, client, &Failure::head(Cause::Timeout), &mut scratch.client_out);
                    break None;
                }
                After::TooLarge => {
                    let too_large = Failure::head(Cause::Rejected(Rejection::too_large(cw.buffered())));
                    refuse_head(&conn, client, &too_large, &mut scratch.client_out);
                    linger = true;
                    break None;
                }
                After::Close => {
                    // Not when the proxy shut it itself: at a stop, or cutting every connection.
                    if !between_requests && !ctx.stopping.load(Ordering::SeqCst) && !conn.cut() {
                        conn.abandoned_head(cw.buffered(), filled.as_ref().err());
                    }
                    break None;
                }
            }
        };
        let Some(head) = head else { break };
        let route = head.route.and_then(|i| table.route(i));
        let pool = table.pool_for(head.route);
        let key = pool.and_then(|p| hash_key(client_key, &p.balancer, cw.buffered(), &head));
        cw.consume(head.len);
        if head.h2c_stripped {
            log::debug!("req {}: Upgrade: h2c stripped (never forwarded)", head.request_id);
        }
        if head.underscored > 0 {
            ctx.counters.underscored_headers_dropped.fetch_add(head.underscored as u64, Ordering::Relaxed);
            log::debug!(
                "req {}: {} header(s) with '_' in the name dropped",
                head.request_id,
                head.underscored
            );
        }
        timers.served += 1;
        timers.taken += 1;
        // Body reads from the client wait at most idle_ms between bytes. (Without a body the
        // next read is the next request's, which sets its own timeout.)
        if !matches!(head.body, BodyKind::Empty | BodyKind::Length(0)) {
            timeout.set(t.idle);
        }

        let started = Instant::now();
        let mut record = Record::default();
        let keep_alive = head.keep_alive && !ctx.stopping.load(Ordering::SeqCst);
        let mut attempt = Attempt::default();
        record.tls = tls;
        if let Some(r) = route {
            record.route.clone_from(&r.label);
        }
        if wordy {
            // The wordings that name pool and route apart.
            if let Some(r) = route {
                record.route_name.clone_from(&r.name);
            }
            if let Some(p) = pool {
                record.pool.clone_from(&p.name);
            }
        }
        // Behind a trusted proxy: the client it forwarded for, whom limits, source-hash and the
        // access line go by.
        if trusted {
            record.client = Some(ctx.policy.real_client(conn.peer.ip(), head.forwarded_for.as_bytes()));
        }
        let ip = record.client.unwrap_or(conn.peer.ip());
        let refused = if ctx.policy.is_active() { per_request(ctx, ip, &head) } else { None };
        let key = match record.client {
            Some(real) if pool.is_some_and(|p| !p.balancer.hashes_header()) => Some(source_key(real)),
            _ => key,
        };
        let outcome = match (refused, pool) {
            (Some(why), _) => {
                Ok(Served::Done(answer_refused(why, &head, client, keep_alive, &mut record, scratch)))
            }
            (None, Some(pool)) => {
                let exchange =
                    Exchange { conn: &conn, client, ctx, head: &head, keep_alive, key, pool, route };
                exchange.run(&mut cw, scratch, &mut record, &mut attempt)
            }
            (None, None) => {
                Ok(Served::Done(answer_here(route, &head, client, keep_alive, &mut record, scratch)))
            }
        };
        ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
        let keep = match outcome {
            Ok(Served::Done(keep)) => keep,
            Ok(Served::Tunnel((sock, t))) => {
                // Its access line is written when it ends.
                quiet = Some(Quieted::Tunnel(sock, Parked { tunnel: t, head, record, started }));
                break;
            }
            Ok(Served::Body((sock, download))) => {
                let pipelined = cw.buffered().to_vec();
                let parked = download::Parked { download, head, record, started, pipelined };
                quiet = Some(Quieted::Body(sock, parked));
                break;
            }
            Err(f) => {
                record.note = f.to_string();
                match f.answer() {
                    Answer::Status(status) => {
                        record.status = status;
                        // The client stream can be trusted only if the request was read whole.
                        let close = !keep_alive || f.party == Party::Client || !attempt.body_done;
                        let mut out = Coalesce::new(client, &mut scratch.client_out);
                        let (all, head_out) =
                            write_error(&mut out, status, &record.note, Some(&head.request_id), close)
                                .unwrap_or_default();
                        record.bytes_out += all;
                        record.head_out = head_out;
                        linger = close;
                        !close
                    }
                    Answer::Close => {
                        // Gone before an answer: nginx's 499 in the access line; stalled
                        // mid-body past `idle_ms`, its 408 (`client_body_timeout`, no answer sent).
                        if record.status == 0 && f.party == Party::Client {
                            record.status = if matches!(f.cause, Cause::Timeout) { 408 } else { 499 };
                        }
                        false
                    }
                }
            }
        };
        access_log(&conn, &head, &record, started);
        // Closing with the request body unread (a backend's answer to `Expect` came first):
        // what the client still sends must not reset the response away.
        linger |= !keep && !attempt.body_done;
        if !keep {
            break;
        }
        timers.since = Instant::now();
    }
    scratch.routes = Some(loaded);
    let timeouts = (timeout.current, write);
    let pending = (parks == Some(Wait::Head)).then(|| PartialHead {
        started: timers.since,
        bytes: cw.buffered().to_vec(),
        hello: false,
    });
    let park = parks == Some(Wait::Idle);
    scratch.client_in = cw.into_buffer();
    if linger || (pending.is_none() && !park && quiet.is_none()) {
        // Closing: a TLS client gets `close_notify` first (RFC 8446 6.1, RFC 9112 9.8, as
        // nginx sends it), so that it can tell an answer read to its end from one cut short.
        stream.notify_close();
    }
    // A TLS session waits in the parker with its connection.
    let session = stream.into_session();
    conn.admitted = admitted;
    conn.timeouts = timeouts;
    if linger {
        close_lingering(conn, parker, LINGER_BODY);
        return None;
    }
    let parker = parker?;
    if pending.is_some() || park || quiet.is_some() {
        conn.tls_session = session;
    }
    match quiet {
        Some(Quieted::Tunnel(sock, parked)) => {
            upgrade::park(conn, ctx, sock, parked, scratch);
            return None;
        }
        Some(Quieted::Body(sock, parked)) => return download::park(conn, ctx, sock, parked, scratch),
        None => {}
    }
    leave(conn, ctx, parker, (pending, park, requeue), timers.since)
}

/// The request's balancer key: its `hash_header` value under header-hash (found by the one
/// parse of the head), else `client_key`, the client address's.
fn hash_key(client_key: u64, balancer: &Balancer, buf: &[u8], head: &RequestHead) -> Option<u64> {
    if balancer.hashes_header() {
        head.hash_value.clone().and_then(|r| buf.get(r)).map(header_value_key)
    } else {
        Some(client_key)
    }
}
