//! The one retry loop of both modes: choose a backend not yet tried, run an attempt on it, and
//! after a failure do what [`super::retry::after`] decided (the same backend afresh, the next
//! best, or give up). Every failed attempt is recorded through the one passive-health rule
//! ([`Backend::record_failure`]) and logged once its sequel is known, so a line never promises
//! a backend that is not there:
//!
//! ```text
//! conn 3 from 127.0.0.1:35730: connect to app2 127.0.0.1:9092 failed (connection refused); retrying app1 127.0.0.1:9091
//! req 6f1c…: app1: response head: closed (end of stream); no other backend to try (2 attempts failed)
//! ```

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use super::retry::Retry;
use crate::backend::Backend;
use crate::balancer::{Balancer, Pick, Tried};
use crate::conn::Conn;
use crate::error::{Cause, Failure, Party, Phase};
use crate::events;

/// Who is being served, for the log and the dashboard's events.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    /// Names the connection or request in the log (`conn 17 from 127.0.0.1:51234`, `req <id>`).
    pub label: &'a dyn Display,
    /// Its connection: where it came from, and whether the proxy has cut it ([`Conn::cut`]).
    pub conn: &'a Conn,
    /// The balancer's hash key; `None`: no key.
    pub key: Option<u64>,
    /// The member a sticky cookie names (its id), tried first.
    pub sticky: Option<u64>,
}

/// Tries backends for `client` until `attempt` succeeds on one or it is time to give up.
/// `attempt` gets the pick (its slot counted) and its backend, and answers with its result or
/// with the failure and what to do about it. Gives back the attempt's result, or
/// the failure to answer the client with: the last backend's that broke mid-exchange if any
/// (502), else why none could be chosen (503); a local shortage or a failure not to retry as it
/// is.
pub fn run<T>(
    balancer: &Balancer,
    client: Client<'_>,
    queue: Duration,
    mut attempt: impl FnMut(Pick, &Arc<Backend>) -> Result<T, (Failure, Retry)>,
) -> Result<T, Failure> {
    let mut tried = Tried::default();
    // A backend that failed after the request went out: when no other can take it, the answer.
    let mut broke: Option<Failure> = None;
    // The failed attempt not yet logged: its line names what comes next.
    let mut failed: Option<String> = None;
    let mut sticky = client.sticky;
    loop {
        // The cookie's member first, once; when it cannot take the request, the algorithm.
        let stuck = sticky.take().map(|id| balancer.pick_sticky(id, &tried));
        let chosen = match stuck {
            Some(Ok(pick)) => Ok(pick),
            Some(Err(was)) => balancer.pick(client.key, &tried, queue).map(|mut pick| {
                let was = was.as_deref().unwrap_or("(unknown)");
                pick.reason = format!("sticky cookie {was} unavailable → {}", pick.reason);
                pick
            }),
            None => balancer.pick(client.key, &tried, queue),
        };
        let pick = match chosen {
            Ok(pick) => pick,
            Err(why) => {
                if let Some(what) = failed.take() {
                    let n = tried.failed();
                    log::warn!(
                        "{}: {what}; no other backend to try ({n} attempt{} failed)",
                        client.label,
                        if n == 1 { "" } else { "s" }
                    );
                }
                return Err(broke
                    .unwrap_or_else(|| Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(why))));
            }
        };
        let backend: Arc<Backend> = pick.guard.backend().clone();
        if let Some(what) = failed.take() {
            log::warn!("{}: {what}; retrying {} {}", client.label, backend.name(), backend.addr());
        }
        if events::wants_pick() {
            events::pick(client.label, &client.conn.peer, backend.name(), pick.algorithm, &pick.reason);
        }
        let (f, retry) = match attempt(pick, &backend) {
            Ok(done) => return Ok(done),
            // Cut by the proxy's stop: no backend's failure, and nothing more is tried.
            Err((f, _)) if client.conn.cut() => {
                if let Some(what) = failed.take() {
                    log::warn!("{}: {what}; not retried after all: cut by the proxy's stop", client.label);
                }
                return Err(Failure::cut(backend.name(), f.phase));
            }
            Err(failed) => failed,
        };
        // A stale pooled connection is replaced, not blamed: neither counted towards passive
        // health and ejection, nor, for least-time, as slow. Any other failure of the
        // backend's own is, whatever its speed; never a client that left, nor our shortage.
        if retry != Retry::Fresh {
            balancer.record_failure(&backend, &f);
            if balancer.measures_time() && f.counts_against_backend() {
                backend.latency().penalize();
            }
        }
        match retry {
            Retry::GiveUp => return Err(f),
            Retry::Fresh => {
                log::debug!(
                    "{}: pooled connection to {} was stale ({f}); retrying",
                    client.label,
                    backend.name()
                );
                tried.retry_same();
            }
            Retry::NextBackend => {
                if events::wants_retry() {
                    events::retry(client.label, &client.conn.peer, backend.name(), &f.to_string());
                }
                tried.insert(&backend);
                failed = Some(what_failed(&backend, &f));
                // A connect failure sent nothing: "no backend" (503) stays the truer answer.
                if f.phase != Phase::Connect {
                    broke = Some(f);
                }
            }
        }
    }
}

/// A failed attempt, as its log line says it: `connect to app2 127.0.0.1:9092 failed
/// (connection refused)`, or the failure itself after the connect.
fn what_failed(backend: &Backend, f: &Failure) -> String {
    if f.phase == Phase::Connect {
        format!("connect to {} {} failed ({})", backend.name(), backend.addr(), f.cause)
    } else {
        f.to_string()
    }
}
