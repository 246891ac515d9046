//! TCP mode: each accepted connection is balanced once, connected (with retries), relayed, and
//! logged at its end with bytes each way and duration.

use std::fmt;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::balancer::Balancer;
use crate::config::Config;
use crate::registry::Conn;
use crate::relay::{self, HelperJob, Side};
use crate::upstream;

/// What a TCP-mode worker needs, shared by all workers.
pub struct TcpContext {
    pub config: Config,
    pub balancer: Arc<Balancer>,
    pub helpers: Sender<HelperJob>,
}

struct Label<'a>(&'a Conn);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} from {}", self.0.id, self.0.peer)
    }
}

/// Serves one client connection to its end. Never panics on network errors; every outcome is
/// logged.
pub fn serve(conn: Conn, ctx: &TcpContext, buf: &mut Vec<u8>) {
    let label = Label(&conn);
    let (backend, pick) = match upstream::connect(&ctx.balancer, &label, ctx.config.timeouts.connect) {
        Ok(found) => found,
        Err(e) => {
            log::error!("{label}: {e}; closing the client");
            return;
        }
    };
    let backend = Arc::new(backend);
    let attached = conn.attach(&backend);
    let outcome = relay::relay(&conn.stream, &backend, ctx.config.timeouts.idle, &ctx.helpers, buf);
    drop(attached);
    let b = &ctx.balancer.backends()[pick.guard.index()];
    // The connection is over: give its slot back before saying so, so that whoever reads the
    // log line sees the count already lowered.
    drop(pick);
    b.record_bytes(outcome.up, outcome.down);
    let ms = conn.accepted.elapsed().as_millis();
    match outcome.error {
        None => log::info!(
            "conn {} closed: {} -> {} {} bytes up, {} bytes down, {ms} ms",
            conn.id,
            conn.peer,
            b.name,
            outcome.up,
            outcome.down
        ),
        Some((side, e)) => {
            if side == Side::Backend && e.kind() != std::io::ErrorKind::TimedOut {
                b.record_failure();
            }
            log::warn!(
                "conn {} ended by {} error ({e}): {} -> {} {} bytes up, {} bytes down, {ms} ms",
                conn.id,
                if side == Side::Client { "client" } else { "backend" },
                conn.peer,
                b.name,
                outcome.up,
                outcome.down
            )
        }
    }
}
