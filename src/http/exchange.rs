//! One request's exchange with a backend, in named steps: [`Exchange::connect`] (a pooled
//! connection, or a fresh one through [`crate::upstream::dial`]), [`Exchange::send`] (head,
//! then the body streamed from the client), the response head with its informational ones
//! before it ([`interim`]), [`Exchange::respond`] (the response streamed back, re-framed for
//! the client) and [`Exchange::release`] (pool the backend connection, or close it). Together
//! they are one [`Exchange::attempt`]; the one retry loop of both modes
//! ([`crate::upstream::tries`]) picks the backend for each and decides after a failure. The
//! request's state across attempts lives in one [`Attempt`].

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{reusable, Attempt, BackendStream, Exchange, Record, Scratch, VIA};
use super::download;
use super::interim::{self, Verdict};

use super::upgrade::{self, Switched};
use super::watch::{self, WatchedWrites, Watching};
use crate::backend::Backend;
use crate::balancer::{sticky_id, Pick};
use crate::config::as_limit;
use crate::conn::accept::ClientStream;
use crate::error::{Cause, Failure, Party, Phase};
use crate::h1::edits::Edits;
use crate::h1::response::{ClientSide, ResponseHead};
use crate::h1::{BodyError, BodyKind, Coalesce, Wire};
use crate::logging::{held_back, RateLimit};
use crate::route::Route;
use crate::tls::stream::Stream;
use crate::upstream::retry::{self, Retry};
use crate::upstream::{self, tries};

static UNAVAILABLE: RateLimit = RateLimit::new();

/// How a relayed exchange left the client connection.
pub(super) enum Served {
    /// The response went out: whether the connection stays open for another request.
    Done(bool),
    /// An upgrade's tunnel went quiet: its backend socket and state, to park.
    Tunnel((TcpStream, Box<upgrade::Tunnel>)),
    /// A large body's client went quiet (a slow reader): its backend socket and state, to park.
    Body((TcpStream, Box<download::Download>)),
}

impl Exchange<'_> {
    /// The member the request's sticky cookie names (its id), if the pool is sticky and the
    /// cookie well-formed (16 hex digits); anything else counts as no cookie.
    fn sticky(&self) -> Option<u64> {
        let value = self.head.sticky.as_deref().filter(|_| self.pool.sticky.is_some())?;
        (value.len() == 16).then(|| u64::from_str_radix(value, 16).ok()).flatten()
    }

    /// Forwards the request and its response, when relayed: whether the client connection
    /// stays open, or the tunnel an upgrade became, gone quiet. Backends are tried by the one
    /// retry loop ([`tries::run`]), each attempt being [`Exchange::attempt`].
    // Not inlined into `serve`: an idle worker's live stack stays shallow (see `crate::threads::stack`).
    #[inline(never)]
    pub(super) fn run(
        &self,
        cw: &mut Wire<&ClientStream<'_>>,
        scratch: &mut Scratch,
        record: &mut Record,
        attempt: &mut Attempt,
    ) -> Result<Served, Failure> {
        let started = Instant::now();
        self.precheck(cw)?;
        attempt.body_done = !self.has_body();
        let label = self.label();
        let who = tries::Client { label: &label, conn: self.conn, key: self.key, sticky: self.sticky() };
        let queue = self.ctx.config.timeouts.queue;
        tries::run(&self.pool.balancer, who, queue, |pick, backend| {
            self.attempt(pick, backend, cw, scratch, record, attempt, started)
        })
        .inspect_err(|f| {
            if let Cause::Unavailable(why) = &f.cause {
                if let Some(n) = UNAVAILABLE.check() {
                    log::warn!("{label}: {why}; answering 503{}", held_back(n));
                }
            }
        })
    }

    /// One attempt on the picked backend: connect (or reuse), send, read the response head,
    /// then stream the response or switch to a tunnel. A failure comes back with what to do
    /// next ([`retry::after`]).
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        pick: Pick,
        backend: &Arc<Backend>,
        cw: &mut Wire<&ClientStream<'_>>,
        scratch: &mut Scratch,
        record: &mut Record,
        attempt: &mut Attempt,
        started: Instant,
    ) -> Result<Served, (Failure, Retry)> {
        let give_up = |f: Failure| (f, Retry::GiveUp);
        backend.name().clone_into(&mut record.backend);
        record.reason.clone_from(&pick.reason);
        record.attempts += 1;
        // This backend's 1xx heads are its own to count: none of another's.
        attempt.interim_bytes = 0;
        let tried_at = Instant::now();
        let (stream, reused) = self.connect(backend, attempt).map_err(|f| self.decide(f, false, attempt))?;
        record.connect = Some(if reused { Duration::ZERO } else { tried_at.elapsed() });
        let attached = self.conn.attach(stream.tcp(), backend.id());
        // A sticky pool: the client gets its member's cookie unless it sent that one.
        let set_cookie = self.pool.sticky.as_ref().and_then(|name| {
            let id = sticky_id(backend.name());
            let secure = if self.client.is_tls() { "; Secure" } else { "" };
            (self.sticky() != Some(id)).then(|| format!("{name}={id:016x}; Path=/; HttpOnly{secure}"))
        });
        let mut bw = Wire::with_buffer(&stream, std::mem::take(&mut scratch.backend_in));
        let side = ClientSide {
            method: &self.head.method,
            version: self.head.version,
            keep_alive: self.keep_alive,
            request_id: &self.head.request_id,
            via: VIA,
            upgrade: self.head.upgrade.is_some(),
            edits: self.route.map_or(Edits::NONE, Route::response_edits),
            set_cookie: set_cookie.as_deref(),
        };
        let resp = match self.send(cw, &mut bw, &side, backend, scratch, record, attempt) {
            Ok(Verdict::Final(resp)) => Ok(resp),
            Ok(Verdict::Continue) => {
                interim::read_final(self, &mut bw, &side, backend.name(), scratch, attempt, None)
            }
            Err(f) => Err(f),
        };
        let resp = match resp {
            Ok(resp) => resp,
            Err(f) => {
                scratch.backend_in = bw.into_buffer();
                return Err(self.decide(f, reused, attempt));
            }
        };
        record.status = resp.status;
        record.head_time = Some(tried_at.elapsed());
        // Passive health and ejection: a 5xx extends the member's run of failures, any other
        // status (a 101 too) ends it; retried or not, the status is the backend's.
        self.pool.balancer.record_status(backend, resp.status);
        // least-time's sample: the response head's time, a 5xx counted as slow.
        if self.pool.balancer.measures_time() {
            match resp.status {
                500.. => backend.latency().penalize(),
                _ => backend.latency().observe_cost(tried_at.elapsed()),
            }
        }
        if self.retries_status(resp.status, attempt, backend) {
            // `retry_on`: this answer goes no further; the connection closes with its body unread.
            attempt.status_retried = true;
            scratch.backend_in = bw.into_buffer();
            let f = Failure::at(backend.name(), Party::Backend, Phase::Head, Cause::Status(resp.status));
            return Err((f, Retry::NextBackend));
        }
        // Bytes sent to the backend: the rewritten head as well as the body, counted once this
        // backend's answer is the one the client gets (whole, truncated or a tunnel).
        record.bytes_in += scratch.head.len() as u64;
        if resp.status == 101 {
            let outcome = upgrade::switch(self, cw, &mut bw, &stream, backend, scratch, record);
            scratch.backend_in = bw.into_buffer();
            drop(attached);
            return match outcome.map_err(give_up)? {
                Switched::Ended => Ok(Served::Done(false)),
                Switched::Quiet(progress, open) => {
                    Ok(Served::Tunnel(upgrade::quiet(stream, pick, progress, open)))
                }
            };
        }
        if let Some(len) = download::fits(self.ctx, &resp, &stream, attempt.body_done) {
            let turn = download::start(self, &mut bw, &stream, pick, &resp, len, scratch, record, started);
            scratch.backend_in = bw.into_buffer();
            drop(attached);
            let turn = turn.map_err(give_up)?;
            return match download::first(self.ctx, self.client.tcp(), stream, turn, record)
                .map_err(give_up)?
            {
                Ok(keep) => Ok(Served::Done(keep)),
                Err(quiet) => Ok(Served::Body(quiet)),
            };
        }
        let surplus = self.respond(&mut bw, &resp, backend, scratch, record);
        scratch.backend_in = bw.into_buffer();
        // What moved counts, whole or cut short by either side, as in HAProxy's counters.
        backend.record_bytes(record.bytes_in, record.bytes_out);
        let surplus = surplus.map_err(give_up)?;
        // The whole response is read, so the backend side is done: its slot and connection
        // are given back before the last bytes go to the client, so that the client's next
        // request finds them.
        drop(attached);
        drop(pick);
        backend.latency().record(started.elapsed());
        // A backend that answered before the body was sent expects it still: never pooled.
        if attempt.body_done {
            self.release(stream, backend, &resp, surplus);
        }
        Coalesce::resume(self.client, &mut scratch.client_out)
            .flush()
            .map_err(|e| give_up(Failure::new(Party::Client, Phase::Body, Cause::Io(e))))?;
        Ok(Served::Done(resp.client_keep_alive))
    }

    /// Refuses what must never reach a backend, before choosing one: a declared body over
    /// `max_body_bytes`, a malformed first chunk-size line.
    fn precheck(&self, cw: &mut Wire<&ClientStream<'_>>) -> Result<(), Failure> {
        if let (BodyKind::Length(n), Some(max)) = (self.head.body, self.ctx.config.http.max_body_bytes) {
            if n > max {
                let cause = Cause::BodyTooLarge(format!("body of {n} bytes over {max}"));
                return Err(Failure::new(Party::Client, Phase::Request, cause));
            }
        }
        if self.head.body == BodyKind::Chunked && !self.head.expect_continue {
            first_chunk_is_valid(cw)?;
        }
        Ok(())
    }

    /// A quiet pooled connection to `backend`, or a fresh one. Returns it and whether it was
    /// pooled.
    fn connect(&self, backend: &Backend, attempt: &mut Attempt) -> Result<(BackendStream, bool), Failure> {
        let pooled =
            if attempt.fresh_only { None } else { backend.take_idle(self.ctx.config.http.backend_idle) };
        attempt.fresh_only = false;
        if let Some(stream) = pooled {
            return Ok((Stream::Plain(stream), true));
        }
        let t = &self.ctx.config.timeouts;
        let label = self.label();
        let stream = upstream::dial(backend, t.connect, self.conn, &label)?;
        let stream = upstream::secure(backend, stream, self.ctx.backend_tls.as_deref(), t.connect)?;
        let stream_tcp = stream.tcp();
        let _ = stream_tcp.set_read_timeout(as_limit(t.response));
        let _ = stream_tcp.set_write_timeout(as_limit(t.idle));
        Ok((stream, false))
    }

    /// Sends the rewritten head, then streams the body from the client. A client that expects
    /// `100 Continue` sends its body only on the backend's word (see [`interim`]): a final
    /// answer before it comes back as [`Verdict::Final`], and the body is never read.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        cw: &mut Wire<&ClientStream<'_>>,
        bw: &mut Wire<&BackendStream>,
        side: &ClientSide<'_>,
        backend: &Backend,
        scratch: &mut Scratch,
        record: &mut Record,
        attempt: &mut Attempt,
    ) -> Result<Verdict, Failure> {
        let stream = bw.stream;
        let to_backend =
            |e: io::Error| Failure::at(backend.name(), Party::Backend, Phase::Send, Cause::Io(e));
        let mut bout = Coalesce::new(stream, &mut scratch.backend_out);
        bout.write_all(&scratch.head).map_err(to_backend)?;
        if !self.has_body() {
            bout.flush().map_err(to_backend)?;
            return Ok(Verdict::Continue);
        }
        // A client may send its body without waiting for the `100` (RFC 9110 10.1.1): once all
        // of it is here, there is nothing to wait for. (Part of it is not enough: the client
        // may wait for the `100` to send the rest.)
        let whole = matches!(self.head.body, BodyKind::Length(n) if cw.buffered().len() as u64 >= n);
        if self.head.expect_continue && !attempt.continued && !whole {
            bout.flush().map_err(to_backend)?;
            if let Verdict::Final(resp) =
                interim::await_continue(self, bw, side, backend.name(), scratch, attempt)?
            {
                return Ok(Verdict::Final(resp));
            }
        }
        attempt.body_touched = true;
        let rechunk = self.head.body == BodyKind::Chunked;
        let limit = self.ctx.config.http.max_body_bytes;
        // What came with a `100` is the start of the backend's answer: a refusal is answered at
        // once, and anything else leaves the socket mid-answer, where the watch can't look.
        // (A `tls` backend is never watched, and its early answer is read after the body.)
        let watched = if stream.is_tls() { Ok(false) } else { watch::watchable(bw.buffered()) };
        // The backend refused the body or stopped taking it: it may have answered (a 413, a 401).
        let mut early = |e: io::Error, scratch: &mut Scratch, attempt: &mut Attempt| {
            let heard = interim::early_answer(self, bw, side, backend.name(), scratch, attempt)?;
            heard.map(Verdict::Final).ok_or_else(|| to_backend(e))
        };
        let watched = match watched {
            Ok(watched) => watched,
            Err(refused) => return early(refused, scratch, attempt),
        };
        let wait = as_limit(self.ctx.config.timeouts.idle);
        let writes = WatchedWrites::new(stream, wait, watched);
        let mut bout = Coalesce::resume(writes, &mut scratch.backend_out);
        let watching = Watching::new(self.client, stream, wait, watched);
        match cw.reading_through(watching, |w| w.forward_body(self.head.body, &mut bout, rechunk, limit)) {
            Ok(n) => {
                record.bytes_in += n;
                attempt.body_done = true;
            }
            Err(BodyError::Sink(e, n)) => {
                record.bytes_in += n;
                return early(e, scratch, attempt);
            }
            Err(BodyError::Source(e, n)) if watch::is_refusal(&e) => {
                record.bytes_in += n;
                return early(e, scratch, attempt);
            }
            Err(BodyError::TooLarge) => {
                let cause = Cause::BodyTooLarge("request body over max_body_bytes".into());
                return Err(Failure::new(Party::Client, Phase::Send, cause));
            }
            Err(BodyError::Source(e, n)) if e.kind() == io::ErrorKind::InvalidData => {
                record.bytes_in += n;
                // Shown after its phase: `request body: bad chunk size`.
                let cause = Cause::Invalid(e.to_string());
                return Err(Failure::new(Party::Client, Phase::Request, cause));
            }
            Err(BodyError::Source(e, n)) => {
                record.bytes_in += n;
                let cause = if crate::net::is_timeout(&e) { Cause::Timeout } else { Cause::Io(e) };
                return Err(Failure::new(Party::Client, Phase::Send, cause));
            }
        }
        match bout.flush() {
            Ok(()) => Ok(Verdict::Continue),
            Err(e) => early(e, scratch, attempt),
        }
    }

    /// Whether `[http] retry_on` sends this request to another member after `status`: once,
    /// while no member has failed before (a stale pooled connection replaced by a fresh one
    /// does not count), for an idempotent request none of
    /// whose body was read and to whose client nothing was sent (no 1xx either), when another
    /// member can take it; else the backend's own answer goes to the client.
    fn retries_status(&self, status: u16, attempt: &Attempt, backend: &Backend) -> bool {
        self.ctx.config.http.retry_on.contains(&status)
            && self.head.retryable
            && !attempt.moved_on
            && !attempt.body_touched
            && !attempt.continued
            && !attempt.informed
            && !attempt.status_retried
            && self.pool.balancer.has_other(backend)
    }

    /// A failed attempt and what may follow ([`retry::after`]): a stale pooled connection is
    /// replaced by a fresh one.
    fn decide(&self, f: Failure, reused: bool, attempt: &mut Attempt) -> (Failure, Retry) {
        // Not once a 1xx went to the client: it would get that head again.
        let replayable = self.head.retryable && !attempt.body_touched && !attempt.informed;
        let next = retry::after(&f, reused, replayable);
        attempt.fresh_only = next == Retry::Fresh;
        attempt.moved_on |= next == Retry::NextBackend;
        (f, next)
    }

    /// Writes the response head and streams the body to the client, leaving its tail in
    /// `scratch.client_out` for the caller to flush. Returns how many bytes the backend sent
    /// beyond the response's framing (already read into the buffer).
    fn respond(
        &self,
        bw: &mut Wire<&BackendStream>,
        resp: &ResponseHead,
        backend: &Backend,
        scratch: &mut Scratch,
        record: &mut Record,
    ) -> Result<usize, Failure> {
        let client_gone = |e: io::Error| Failure::new(Party::Client, Phase::Body, Cause::Io(e));
        let mut cout = Coalesce::new(self.client, &mut scratch.client_out);
        cout.write_all(&scratch.resp_head).map_err(client_gone)?;
        record.bytes_out += scratch.resp_head.len() as u64;
        record.head_out = scratch.resp_head.len() as u64;
        let chunk_out = resp.client_body == BodyKind::Chunked;
        match bw.forward_body(resp.body, &mut cout, chunk_out, None) {
            Ok(n) => record.bytes_out += n,
            Err(BodyError::Sink(e, n)) => {
                // What went out before the client left counts, as in nginx's `$bytes_sent`.
                record.bytes_out += n;
                return Err(client_gone(e));
            }
            Err(BodyError::Source(e, n)) => {
                record.bytes_out += n;
                // As nginx: what arrived goes on to the client, then the connection closes, so
                // the client sees a truncated body, never one that looks complete.
                let _ = cout.flush();
                return Err(Failure::at(backend.name(), Party::Backend, Phase::Body, Cause::Io(e)));
            }
            Err(BodyError::TooLarge) => {
                let cause = Cause::Invalid("response body too large".into());
                return Err(Failure::at(backend.name(), Party::Backend, Phase::Body, cause));
            }
        }
        Ok(bw.buffered().len())
    }

    /// Pools the backend connection when its response ended exactly at its framing with nothing
    /// more buffered; otherwise closes it (surplus bytes are discarded and logged).
    fn release(&self, stream: BackendStream, backend: &Backend, resp: &ResponseHead, surplus: usize) {
        if !reusable(&self.head.request_id, backend, resp, surplus) {
            return;
        }
        // The idle pool keeps plain sockets; a TLS connection's state would not survive it, so
        // TLS backend connections are closed after their response (a known cost: one handshake
        // per request to a `tls` backend).
        let Stream::Plain(stream) = stream else { return };
        // No peek here: every reuse peeks first (`Backend::take_idle`), which sees whatever a peek
        // now would see and whatever arrives later, so one peek per request is enough.
        backend.put_idle(stream, self.ctx.config.http.backend_keepalive);
    }
}

/// Reads until the first chunk-size line of a chunked body is complete and checks it, so a
/// malformed or overflowing size is refused before anything reaches a backend.
fn first_chunk_is_valid(cw: &mut Wire<&ClientStream<'_>>) -> Result<(), Failure> {
    let bad = |why: &str| Failure::new(Party::Client, Phase::Request, Cause::Invalid(why.to_string()));
    loop {
        match crate::h1::parse_chunk_line(cw.buffered()) {
            Ok(httparse::Status::Complete(_)) => return Ok(()),
            Err(_) => return Err(bad("invalid chunk size line")),
            Ok(httparse::Status::Partial) if cw.buffered().len() > 1024 => {
                return Err(bad("chunk size line too long"))
            }
            Ok(httparse::Status::Partial) => match cw.fill(crate::h1::MAX_HEAD) {
                Ok(0) => {
                    let cause = Cause::Closed("inside the body".into());
                    return Err(Failure::new(Party::Client, Phase::Request, cause));
                }
                Ok(_) => {}
                Err(e) => return Err(Failure::new(Party::Client, Phase::Request, Cause::Io(e))),
            },
        }
    }
}
