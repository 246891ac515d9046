//! A running proxy's last phases: waiting for a stop (reloading on SIGHUP meanwhile), draining
//! the in-flight connections within `drain_timeout_ms`, and the summary printed at exit.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::discovery::Discovery;
use super::signals::Signals;
use super::start::Shared;
use super::{Loader, Summary};
use crate::backend::summary_line;
use crate::config::Config;
use crate::conn::{Registry, SHUTDOWN_GRACE};
use crate::tls::{Backends, Listener};

/// Why the proxy stops.
pub(super) struct Stop {
    pub why: &'static str,
    /// Another process took the listening sockets over: they stay open, for it.
    pub taken_over: bool,
}

/// Serves reloads until a stop signal, a takeover, or the signals' end.
pub(super) fn wait(
    signals: &Signals,
    loader: &Loader,
    config: &Config,
    shared: &Shared,
    discovery: &Discovery,
    taken: &Receiver<()>,
) -> Stop {
    // Without a control socket (none set, or it could not be served) no takeover can come: its
    // sender is gone, and a closed channel is always ready, so it is looked at no more.
    let mut taken = taken.clone();
    loop {
        select! {
            recv(signals.stop) -> why => return Stop { why: why.unwrap_or("shutdown"), taken_over: false },
            recv(taken) -> r => match r {
                Ok(()) => return Stop { why: "takeover", taken_over: true },
                Err(_) => taken = crossbeam_channel::never(),
            },
            recv(signals.reload) -> r => match r {
                Ok(()) => {
                    log::info!("SIGHUP: reloading {}", config.file);
                    let reloaded = loader();
                    if let Ok(new) = &reloaded {
                        reload_tls(shared.tls.as_deref(), shared.backend_tls.as_deref(), new);
                    }
                    discovery.reload(reloaded);
                }
                Err(_) => return Stop { why: "shutdown", taken_over: false },
            },
            default(Duration::from_secs(1)) => crate::threads::stack::trim_heap_if_wanted(),
        }
    }
}

/// Swaps in the certificates `new` names; a broken one is refused and the running ones stay.
fn reload_tls(tls: Option<&Listener>, backends: Option<&Backends>, new: &Config) {
    if let Some(b) = backends {
        if let Err(errors) = b.reload(new) {
            for e in &errors {
                log::error!("SIGHUP: {e}");
            }
            log::error!("SIGHUP: backend TLS settings not reloaded; keeping the running ones");
        }
    }
    let Some(tls) = tls else { return };
    match tls.reload(&new.tls, &new.file) {
        Ok(()) => log::info!("SIGHUP: TLS certificates reloaded; new connections get them"),
        Err(errors) => {
            for e in &errors {
                log::error!("SIGHUP: {e}");
            }
            log::error!("SIGHUP: TLS certificates not reloaded; keeping the running ones");
        }
    }
}

/// Closes idle keep-alive clients, then waits for the rest until the drain deadline: busy ones
/// are not cut between two requests (the next could be on its way) but get their next response
/// with `Connection: close`. Returns how many were cut.
pub(super) fn drain_all(config: &Config, registry: &Registry, signals: &Signals, stop: &Stop) -> usize {
    let idle_closed = registry.close_idle(SHUTDOWN_GRACE);
    let in_flight = registry.len().saturating_sub(idle_closed);
    let again = if stop.taken_over { "" } else { " (Ctrl-C again to cut it short)" };
    log::warn!(
        "{}: stopped accepting; draining {in_flight} connection(s) for up to {} ms{again}",
        stop.why,
        config.drain_timeout.as_millis()
    );
    drain(registry, &signals.stop, Instant::now() + config.drain_timeout)
}

/// Waits for the in-flight connections to finish until `deadline`, then closes what remains.
/// A second stop signal (Ctrl-C twice, as most servers and CLIs take it) closes them at once.
/// Returns how many were cut.
fn drain(registry: &Registry, stop: &Receiver<&'static str>, deadline: Instant) -> usize {
    // Short slices so a second Ctrl-C is seen within a blink; bounded by the deadline.
    const SLICE: Duration = Duration::from_millis(50);
    let forced = loop {
        if registry.wait_empty((Instant::now() + SLICE).min(deadline)) {
            return 0;
        }
        if let Ok(again) = stop.try_recv() {
            let forced = registry.close_all();
            log::warn!("{again} again: stopping now; cut {forced} connection(s)");
            break forced;
        }
        if Instant::now() >= deadline {
            let forced = registry.close_all();
            log::warn!("drain timeout: closed {forced} remaining connection(s)");
            break forced;
        }
    };
    registry.wait_empty(Instant::now() + Duration::from_secs(5));
    forced
}

/// What the proxy did, logged and returned at exit.
pub(super) fn summary(shared: &Shared, forced: usize) -> Summary {
    let members = crate::stats::members(&shared.router.table());
    let summary = Summary {
        connections: shared.counters.accepted.load(Ordering::Relaxed),
        forced,
        backends: members.iter().map(|(_, b)| summary_line(b)).collect(),
    };
    log::info!("served {} connection(s) ({} cut before they finished)", summary.connections, forced);
    for line in &summary.backends {
        log::info!("backend {line}");
    }
    summary
}
