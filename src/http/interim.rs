//! Informational responses and `Expect: 100-continue`. A backend's 1xx (`103 Early Hints`,
//! `102`, its `100 Continue`) goes on to an HTTP/1.1 client before the final response, as
//! HAProxy forwards them (RFC 9110 15.2); an HTTP/1.0 client never sees one. A client that
//! expects `100 Continue` lets the backend decide: its `100` lets the body through, its final
//! answer (a 413, a 401) reaches the client before a byte of the body is sent, and a backend that
//! says nothing within [`EXPECT_WAIT`] gets the body anyway, after the proxy's own `100`.
//! Without `Expect`, a backend that answers before the body is in (a 413, a 401, a 501) has its
//! answer reach the client at once ([`early_answer`]), as HAProxy forwards it, rather than a 502
//! or a wait for the rest of the upload: whether it then closes, stops reading, or reads on
//! (nginx's `client_max_body_size`). [`super::watch`] is how the proxy notices it.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::context::{Attempt, BackendStream, Exchange, Scratch};
use crate::config::as_limit;
use crate::error::{Cause, Failure, Party, Phase};
use crate::h1::response::{self, ClientSide, ResponseHead};
use crate::h1::{Coalesce, Wire};

/// How long a backend may take to answer `Expect: 100-continue` before the proxy sends the
/// `100` itself: a client waits only so long (RFC 9110 10.1.1), curl for 1 s.
pub const EXPECT_WAIT: Duration = Duration::from_secs(1);

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the backend said to an `Expect: 100-continue` request before its body.
pub enum Verdict {
    /// Send the body: the backend's `100` (or, after its silence, the proxy's) went to the
    /// client.
    Continue,
    /// The backend's final response came first: the body is never read, and the client
    /// connection closes after this response.
    Final(ResponseHead),
}

/// Reads response heads from the backend until a final one (or, with `until`, a `100` by that
/// deadline), forwarding each informational head to an HTTP/1.1 client as it comes. A `100`
/// after the proxy already sent its own is not sent twice. The 1xx heads of one request count
/// against `max_head_bytes` together, as Go's HTTP client counts them against its header limit:
/// a backend that sends them without end gets a 502, not a client held forever.
pub fn read_final(
    x: &Exchange<'_>,
    bw: &mut Wire<&BackendStream>,
    side: &ClientSide<'_>,
    backend: &str,
    scratch: &mut Scratch,
    attempt: &mut Attempt,
    until: Option<Instant>,
) -> Result<ResponseHead, Failure> {
    let max_head = x.ctx.config.http.max_head_bytes;
    loop {
        if let Some(deadline) = until {
            // The whole wait is bounded, however many 1xx heads come first.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::at(backend, Party::Backend, Phase::Head, Cause::Timeout));
            }
            let _ = bw.stream.tcp().set_read_timeout(Some(left));
        }
        let resp = read_head(bw, side, max_head, &mut scratch.resp_head)
            .map_err(|cause| Failure::at(backend, Party::Backend, Phase::Head, cause))?;
        if resp.status >= 200 || resp.status == 101 {
            return Ok(resp);
        }
        attempt.interim_bytes += resp.len;
        if attempt.interim_bytes > max_head {
            let why = format!("invalid response: 1xx heads over max_head_bytes ({max_head}) in all");
            return Err(Failure::at(backend, Party::Backend, Phase::Head, Cause::Invalid(why)));
        }
        let continues = resp.status == 100;
        if side.version == 1 && !(continues && attempt.continued) {
            to_client(x, &scratch.resp_head, &mut scratch.client_out)?;
            attempt.informed |= !continues;
            log::debug!("req {}: {backend} sent {}; forwarded", x.head.request_id, resp.status);
        }
        if continues {
            attempt.continued = true;
            if until.is_some() {
                return Ok(resp);
            }
        }
    }
}

/// Waits up to [`EXPECT_WAIT`] in all for the backend's word on a request whose head it has (with
/// `Expect: 100-continue`) and whose body the client holds back.
pub fn await_continue(
    x: &Exchange<'_>,
    bw: &mut Wire<&BackendStream>,
    side: &ClientSide<'_>,
    backend: &str,
    scratch: &mut Scratch,
    attempt: &mut Attempt,
) -> Result<Verdict, Failure> {
    match heard_soon(x, bw, side, backend, scratch, attempt, false) {
        Ok(resp) if resp.status == 100 => Ok(Verdict::Continue),
        Ok(resp) => Ok(Verdict::Final(resp)),
        Err(f) if f.party == Party::Backend && matches!(f.cause, Cause::Timeout) => {
            log::debug!("req {}: {backend} silent on Expect; sending 100 Continue", x.head.request_id);
            to_client(x, CONTINUE, &mut scratch.client_out)?;
            attempt.continued = true;
            Ok(Verdict::Continue)
        }
        Err(f) => Err(f),
    }
}

/// Once the backend refused the rest of the request body (the watch of [`super::watch`] saw
/// its answer begin) or a write of the body to it failed (it closed, reset, or stopped reading
/// until the write timed out): the final answer it sent, read within [`EXPECT_WAIT`] (it is
/// normally there already). `Ok(None)` when there is none. The client
/// connection closes after it, since the rest of the body stays unread, and the backend
/// connection is never pooled: part of the body may have gone out. A `tls` backend's is not
/// looked for: its unsent records would be flushed first, and wait again.
pub fn early_answer(
    x: &Exchange<'_>,
    bw: &mut Wire<&BackendStream>,
    side: &ClientSide<'_>,
    backend: &str,
    scratch: &mut Scratch,
    attempt: &mut Attempt,
) -> Result<Option<ResponseHead>, Failure> {
    if bw.stream.is_tls() {
        return Ok(None);
    }
    match heard_soon(x, bw, side, backend, scratch, attempt, true) {
        Ok(resp) => {
            log::debug!(
                "req {}: {backend} answered {} before the whole body was sent; forwarded",
                x.head.request_id,
                resp.status
            );
            Ok(Some(ResponseHead { backend_reusable: false, ..resp }))
        }
        // The client left as a 1xx went to it, or the backend's answer is garbage: that says more.
        Err(f) if f.party == Party::Client || matches!(f.cause, Cause::Invalid(_)) => Err(f),
        Err(_) => Ok(None),
    }
}

/// The backend's word within [`EXPECT_WAIT`] (`response_ms` if shorter), read as for a client
/// connection that closes after a final answer, since the body is left unread; the backend's
/// read timeout is restored after. With `past_100`, a `100` is read past.
fn heard_soon(
    x: &Exchange<'_>,
    bw: &mut Wire<&BackendStream>,
    side: &ClientSide<'_>,
    backend: &str,
    scratch: &mut Scratch,
    attempt: &mut Attempt,
    past_100: bool,
) -> Result<ResponseHead, Failure> {
    let response = x.ctx.config.timeouts.response;
    let wait = if response.is_zero() { EXPECT_WAIT } else { EXPECT_WAIT.min(response) };
    let deadline = Instant::now() + wait;
    let early = ClientSide { keep_alive: false, ..*side };
    let heard = loop {
        match read_final(x, bw, &early, backend, scratch, attempt, Some(deadline)) {
            Ok(resp) if past_100 && resp.status == 100 => continue,
            heard => break heard,
        }
    };
    let _ = bw.stream.tcp().set_read_timeout(as_limit(response));
    heard
}

/// Sends an informational head to the client at once.
fn to_client(x: &Exchange<'_>, head: &[u8], buf: &mut Vec<u8>) -> Result<(), Failure> {
    let mut out = Coalesce::new(x.client, buf);
    out.write_all(head)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(Party::Client, Phase::Send, Cause::Io(e)))
}

/// Reads one response head, rewritten for the client into `out` (an informational one too:
/// see [`interim::read_final`]).
pub fn read_head(
    bw: &mut Wire<&BackendStream>,
    side: &ClientSide<'_>,
    max_head: usize,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, Cause> {
    let mut received = false;
    loop {
        if !bw.buffered().is_empty() {
            out.clear();
            match response::parse(bw.buffered(), max_head, side, out) {
                Ok(Some(r)) => {
                    bw.consume(r.len);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(why) => return Err(Cause::Invalid(format!("invalid response: {why}"))),
            }
        }
        match bw.fill(max_head) {
            Ok(0) if received => {
                return Err(Cause::Invalid("connection closed inside the response head".into()))
            }
            Ok(0) => return Err(Cause::Closed("end of stream".into())),
            Ok(_) => received = true,
            Err(e) if crate::net::is_timeout(&e) => return Err(Cause::Timeout),
            Err(e)
                if !received
                    && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) =>
            {
                return Err(Cause::Closed(crate::net::describe(&e)))
            }
            Err(e) if crate::h1::is_head_too_large(&e) => {
                return Err(Cause::Invalid("invalid response: response head too large".into()))
            }
            Err(e) => return Err(Cause::Io(e)),
        }
    }
}
