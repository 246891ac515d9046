//! One request's exchange with a backend, in named steps: [`Exchange::pick`], [`Exchange::connect`]
//! (a pooled connection, or a fresh one through [`crate::upstream::dial`]), [`Exchange::send`]
//! (head, then the body streamed from the client), the response head with its informational
//! ones before it ([`interim`]), [`Exchange::respond`] (the
//! response streamed back, re-framed for the client) and [`Exchange::release`] (pool the backend
//! connection, or close it). What a failed attempt may retry is decided by [`super::retry`];
//! the attempt's state lives in one [`Attempt`].

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use super::context::{Attempt, BackendStream, Exchange, Record, Scratch, VIA};
use super::interim::{self, Verdict};

use super::retry::{self, Retry};
use super::upgrade::{self, Switched};
use crate::backend::Backend;
use crate::balancer::Pick;
use crate::config::as_limit;
use crate::conn::accept::ClientStream;
use crate::error::{Cause, Failure, Party, Phase};
use crate::events;
use crate::h1::response::{ClientSide, ResponseHead};
use crate::h1::{BodyError, BodyKind, Coalesce, Wire};
use crate::logging::{held_back, RateLimit};
use crate::tls::stream::Stream;
use crate::upstream;

static UNAVAILABLE: RateLimit = RateLimit::new();

/// How a relayed exchange left the client connection.
pub(super) enum Served {
    /// The response went out: whether the connection stays open for another request.
    Done(bool),
    /// An upgrade's tunnel went quiet: its backend socket and state, to park.
    Tunnel((TcpStream, Box<upgrade::Tunnel>)),
}

impl Exchange<'_> {
    /// Forwards the request and its response, when relayed: whether the client connection
    /// stays open, or the tunnel an upgrade became, gone quiet.
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
        loop {
            let pick = self.pick(attempt)?;
            let backend: Arc<Backend> = pick.guard.backend().clone();
            backend.name().clone_into(&mut record.backend);
            record.reason.clone_from(&pick.reason);
            if events::wants_pick() {
                events::pick(&self.label(), &self.conn.peer, backend.name(), pick.algorithm, &pick.reason);
            }
            let (stream, reused) = match self.connect(&backend, attempt) {
                Ok(found) => found,
                Err(f) => {
                    self.recover(f, &backend, false, attempt)?;
                    continue;
                }
            };
            let attached = self.conn.attach(stream.tcp(), backend.id());
            let mut bw = Wire::with_buffer(&stream, std::mem::take(&mut scratch.backend_in));
            let side = ClientSide {
                method: &self.head.method,
                version: self.head.version,
                keep_alive: self.keep_alive,
                request_id: &self.head.request_id,
                via: VIA,
                upgrade: self.head.upgrade.is_some(),
            };
            let resp = match self.send(cw, &mut bw, &side, &backend, scratch, record, attempt) {
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
                    self.recover(f, &backend, reused, attempt)?;
                    continue;
                }
            };
            record.status = resp.status;
            if resp.status == 101 {
                record.bytes_in += scratch.head.len() as u64;
                let outcome = upgrade::switch(self, cw, &mut bw, &stream, &backend, scratch, record);
                scratch.backend_in = bw.into_buffer();
                drop(attached);
                return match outcome? {
                    Switched::Ended => Ok(Served::Done(false)),
                    Switched::Quiet(progress, open) => {
                        Ok(Served::Tunnel(upgrade::quiet(stream, pick, progress, open)))
                    }
                };
            }
            self.ctx.balancer.record_status(&backend, resp.status);
            let surplus = self.respond(&mut bw, &resp, &backend, scratch, record);
            scratch.backend_in = bw.into_buffer();
            let surplus = surplus?;
            // The whole response is read, so the backend side is done: its slot and connection
            // are given back before the last bytes go to the client, so that the client's next
            // request finds them.
            // Bytes sent to the backend: the rewritten head as well as the body.
            record.bytes_in += scratch.head.len() as u64;
            backend.record_bytes(record.bytes_in, record.bytes_out);
            drop(attached);
            drop(pick);
            backend.latency().record(started.elapsed());
            // A backend that answered before the body was sent expects it still: never pooled.
            if attempt.body_done {
                self.release(stream, &backend, &resp, surplus);
            }
            Coalesce::resume(self.client, &mut scratch.client_out)
                .flush()
                .map_err(|e| Failure::new(Party::Client, Phase::Body, Cause::Io(e)))?;
            return Ok(Served::Done(resp.client_keep_alive));
        }
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

    /// Chooses a backend not yet tried. With none left, the answer is the last backend's
    /// failure if one broke (502), else "no backend" (503).
    fn pick(&self, attempt: &mut Attempt) -> Result<Pick, Failure> {
        let queue = self.ctx.config.timeouts.queue;
        match self.ctx.balancer.pick(self.key, &attempt.tried, queue) {
            Ok(pick) => Ok(pick),
            Err(_) if attempt.broke.is_some() => Err(attempt
                .broke
                .take()
                .unwrap_or_else(|| Failure::new(Party::Backend, Phase::Pick, Cause::Timeout))),
            Err(why) => {
                if let Some(n) = UNAVAILABLE.check() {
                    log::warn!("req {}: {why}; answering 503{}", self.head.request_id, held_back(n));
                }
                Err(Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(why)))
            }
        }
    }

    /// A quiet pooled connection to `backend`, or a fresh one. Returns it and whether it was
    /// pooled.
    fn connect(&self, backend: &Backend, attempt: &mut Attempt) -> Result<(BackendStream, bool), Failure> {
        let pooled = if attempt.fresh_only { None } else { backend.take_idle() };
        attempt.fresh_only = false;
        if let Some(stream) = pooled {
            return Ok((Stream::Plain(stream), true));
        }
        let t = &self.ctx.config.timeouts;
        let label = self.label();
        let stream = upstream::dial(&self.ctx.balancer, backend, t.connect, self.conn, &label)?;
        let tls = self.ctx.backend_tls.as_deref();
        let stream =
            upstream::secure(&self.ctx.balancer, backend, stream, tls, t.connect).inspect_err(|f| {
                log::warn!("{label}: {} {}: {}", backend.name(), backend.addr(), f.cause);
            })?;
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
        if self.head.expect_continue && !attempt.continued {
            bout.flush().map_err(to_backend)?;
            if let Verdict::Final(resp) =
                interim::await_continue(self, bw, side, backend.name(), scratch, attempt)?
            {
                return Ok(Verdict::Final(resp));
            }
        }
        let mut bout = Coalesce::resume(stream, &mut scratch.backend_out);
        attempt.body_touched = true;
        let rechunk = self.head.body == BodyKind::Chunked;
        let limit = self.ctx.config.http.max_body_bytes;
        match cw.forward_body(self.head.body, &mut bout, rechunk, limit) {
            Ok(n) => {
                record.bytes_in += n;
                attempt.body_done = true;
            }
            Err(BodyError::Sink(e)) => return Err(to_backend(e)),
            Err(BodyError::TooLarge) => {
                let cause = Cause::BodyTooLarge("request body over max_body_bytes".into());
                return Err(Failure::new(Party::Client, Phase::Send, cause));
            }
            Err(BodyError::Source(e)) if e.kind() == io::ErrorKind::InvalidData => {
                let cause = Cause::Invalid(format!("request body: {e}"));
                return Err(Failure::new(Party::Client, Phase::Request, cause));
            }
            Err(BodyError::Source(e)) => return Err(Failure::new(Party::Client, Phase::Send, Cause::Io(e))),
        }
        bout.flush().map_err(to_backend)?;
        Ok(Verdict::Continue)
    }

    /// After a failed attempt: retry (`Ok`), or give the failure back to answer the client.
    fn recover(
        &self,
        f: Failure,
        backend: &Backend,
        reused: bool,
        attempt: &mut Attempt,
    ) -> Result<(), Failure> {
        let replayable = self.head.retryable && !attempt.body_touched;
        let decision = retry::after(&f, reused, replayable);
        // Connect failures were recorded where they happened, in `upstream`.
        let count = f.phase != Phase::Connect && f.counts_against_backend();
        match decision {
            Retry::Fresh => {
                attempt.tried.retry_same();
                log::debug!(
                    "req {}: pooled connection to {} was stale ({f}); retrying",
                    self.head.request_id,
                    backend.name()
                );
                attempt.fresh_only = true;
                Ok(())
            }
            Retry::NextBackend => {
                attempt.tried.insert(backend);
                if count {
                    // With no backend left to try, don't promise one.
                    let n = attempt.tried.failed();
                    if self.ctx.balancer.any_left(&attempt.tried) {
                        log::warn!("req {}: {f}; trying the next backend", self.head.request_id);
                    } else {
                        log::warn!(
                            "req {}: {f}; no backend left to try ({n} attempt{} failed)",
                            self.head.request_id,
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    self.ctx.balancer.record_failure(backend, &f);
                }
                if events::wants_retry() {
                    events::retry(&self.label(), &self.conn.peer, backend.name(), &f.to_string());
                }
                if f.phase != Phase::Connect {
                    attempt.broke = Some(f);
                }
                Ok(())
            }
            Retry::GiveUp => {
                if count {
                    self.ctx.balancer.record_failure(backend, &f);
                }
                Err(f)
            }
        }
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
        let chunk_out = resp.client_body == BodyKind::Chunked;
        match bw.forward_body(resp.body, &mut cout, chunk_out, None) {
            Ok(n) => record.bytes_out += n,
            Err(BodyError::Sink(e)) => return Err(client_gone(e)),
            Err(BodyError::Source(e)) => {
                // As nginx: what arrived goes on to the client, then the connection closes, so
                // the client sees a truncated body, never one that looks complete.
                let _ = cout.flush();
                let f = Failure::at(backend.name(), Party::Backend, Phase::Body, Cause::Io(e));
                self.ctx.balancer.record_failure(backend, &f);
                return Err(f);
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
        if surplus > 0 {
            log::warn!(
                "req {}: {} sent {surplus} byte(s) beyond the response's framing; discarded, connection closed",
                self.head.request_id,
                backend.name()
            );
            return;
        }
        // A connection that began with a PROXY header speaks for one client only (as nginx and
        // HAProxy rule): never pooled.
        if !resp.backend_reusable || backend.send_proxy().is_some() {
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
        match httparse::parse_chunk_size(cw.buffered()) {
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
