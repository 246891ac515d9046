//! Answers the proxy gives a request itself, without a backend: a route's redirect, 404 when no
//! pool takes it, and 403 or 429 from `[limits]`.

use std::io::Write;
use std::net::IpAddr;

use super::client::redirect;
use super::context::{Record, Scratch};
use crate::conn::accept::ClientStream;
use crate::conn::policy::Refused;
use crate::context::Context;
use crate::h1::request::RequestHead;
use crate::h1::respond::head_len;
use crate::h1::{BodyKind, Coalesce};
use crate::route::{Route, Target};

/// [limits] per request: whether the client `ip` (or the one a trusted proxy forwarded for) is
/// allowed, as nginx's `allow`/`deny` judge every request, so that a reload's `deny` reaches
/// connections already open; then its rate. Why it is refused, if it is.
pub(super) fn per_request(ctx: &Context, ip: IpAddr, head: &RequestHead) -> Option<Refused> {
    let verdict = ctx.policy.admits(ip).and_then(|()| ctx.policy.rate(ip));
    let why = verdict.err()?;
    ctx.refused(format_args!("req {}", head.request_id), ip, why);
    Some(why)
}

/// Answers a request `[limits]` refused: 403, or 429 with `Retry-After` (whole seconds,
/// rounded up). Returns whether the connection stays open.
pub(super) fn answer_refused(
    why: Refused,
    head: &RequestHead,
    client: &ClientStream,
    keep_alive: bool,
    record: &mut Record,
    scratch: &mut Scratch,
) -> bool {
    let close = closes(head, keep_alive);
    let retry = match why {
        Refused::Rate(wait) => Some(wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64),
        Refused::Denied | Refused::Connections => None,
    };
    let status = why.status();
    record.status = status;
    record.note = why.text().to_string();
    let bytes =
        crate::h1::respond::text_error_with(status, &record.note, Some(&head.request_id), close, retry);
    send_answer(client, scratch, record, &head.method, &bytes);
    !close
}

/// Answers a request no pool takes: its route's redirect, or 404 naming the host and path
/// when there is no route and no default pool. Returns whether the connection stays open (not
/// when the request has a body, which is not read).
pub(super) fn answer_here(
    route: Option<&Route>,
    head: &RequestHead,
    client: &ClientStream,
    keep_alive: bool,
    record: &mut Record,
    scratch: &mut Scratch,
) -> bool {
    let close = closes(head, keep_alive);
    let target = origin_form(&head.target);
    let bytes = match route.map(|r| &r.target) {
        Some(Target::Redirect(to)) => {
            record.status = to.status;
            let location = crate::route::location(&to.location, &head.host, target);
            redirect(to.status, &location, &head.request_id, close)
        }
        _ => {
            record.status = 404;
            record.note = format!("no route for {}{target}", head.host);
            crate::h1::respond::text_error(404, &record.note, Some(&head.request_id), close)
        }
    };
    send_answer(client, scratch, record, &head.method, &bytes);
    !close
}

/// Whether the connection closes after an answer of the proxy's own: when the client asked, or
/// when the request has a body, which is not read.
fn closes(head: &RequestHead, keep_alive: bool) -> bool {
    !keep_alive || !matches!(head.body, BodyKind::Empty | BodyKind::Length(0))
}

/// Writes an answer of the proxy's own, without its body to a `HEAD` (whose response has
/// none: the next response would start with it).
fn send_answer(
    client: &ClientStream,
    scratch: &mut Scratch,
    record: &mut Record,
    method: &str,
    bytes: &[u8],
) {
    let head = head_len(bytes);
    let bytes = if method == "HEAD" { &bytes[..head] } else { bytes };
    let mut out = Coalesce::new(client, &mut scratch.client_out);
    if out.write_all(bytes).and_then(|()| out.flush()).is_ok() {
        record.bytes_out += bytes.len() as u64;
        record.head_out = head as u64;
    }
}

/// The origin form of a request target (`http://host/a?b` -> `/a?b`).
fn origin_form(target: &str) -> &str {
    match target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        Some(rest) => rest.find(['/', '?']).map_or("/", |i| &rest[i..]),
        None => target,
    }
}
