//! Where backends come from while running: applying a reloaded configuration (SIGHUP) and
//! re-resolving DNS names, both by the same diff of members.
//!
//! A member is identified by its `[backends]` key and address. Unchanged members keep their
//! state (health, counters, pooled connections); changed weights and limits apply in place; new
//! members start receiving traffic; removed ones get no new connections while their open ones
//! drain, and whatever is still open after `drain_timeout_ms` is closed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use crate::backend::members::members_of;
use crate::backend::{AdminState, Backend};
use crate::balancer::Balancer;
use crate::config::keys::{Key, KEYS};
use crate::config::{BackendSpec, Config, ConfigError};
use crate::conn::Registry;
use crate::logging::{held_back, RateLimit};
use crate::net::addr::resolve;

/// Applies configuration and DNS changes to the running balancer.
pub struct Discovery {
    balancer: Arc<Balancer>,
    registry: Arc<Registry>,
    running: Mutex<Running>,
    stop: Receiver<()>,
}

struct Running {
    config: Config,
    /// The latest answer for each DNS-named backend.
    resolved: HashMap<String, Vec<SocketAddr>>,
}

static DNS_ERRORS: RateLimit = RateLimit::new();

/// The addresses each DNS-named backend resolved to when `config` was loaded.
fn first_answers(config: &Config) -> HashMap<String, Vec<SocketAddr>> {
    config.backends.iter().filter(|s| s.dns).map(|s| (s.name.clone(), s.addrs.clone())).collect()
}

impl Discovery {
    /// Tracks `config` as the running configuration. `stop` ends drain timers and the resolver.
    pub fn new(
        config: Config,
        balancer: Arc<Balancer>,
        registry: Arc<Registry>,
        stop: Receiver<()>,
    ) -> Discovery {
        let resolved = first_answers(&config);
        Discovery { balancer, registry, running: Mutex::new(Running { config, resolved }), stop }
    }

    /// Handles SIGHUP: `loaded` is the re-read configuration or its errors. An invalid one is
    /// rejected with every error logged, and the running one stays.
    pub fn reload(&self, loaded: Result<Config, Vec<ConfigError>>) {
        let new = match loaded {
            Ok(config) => config,
            Err(errors) => {
                for e in &errors {
                    log::error!("reload: {e}");
                }
                log::error!("reload rejected ({} error(s)); the running configuration stays", errors.len());
                return;
            }
        };
        let mut running = self.running.lock();
        let old = &running.config;
        // Named key by key, as the file writes them (`[timeouts] idle_ms 60000 -> 1000`).
        let restart_only = |k: &&Key| {
            matches!(k.section, "timeouts" | "http")
                || matches!(
                    (k.section, k.name),
                    ("proxy", "listen" | "mode" | "workers" | "queue" | "log_file" | "stats_interval_ms")
                        | ("admin", "listen")
                )
        };
        for k in KEYS.iter().filter(restart_only) {
            let (was, is) = ((k.show)(old), (k.show)(&new));
            if was != is {
                log::warn!(
                    "reload: {} changed ({} -> {}); it takes effect after a restart",
                    k.label(),
                    shown(&was),
                    shown(&is)
                );
            }
        }
        let mut notes = Vec::new();
        if old.algorithm != new.algorithm {
            notes.push(format!("algorithm {} -> {}", old.algorithm.name(), new.algorithm.name()));
        }
        if old.log_level != new.log_level {
            log::set_max_level(new.log_level);
            notes.push(format!("log_level -> {}", new.log_level.as_str().to_lowercase()));
        }
        if old.health != new.health {
            self.balancer.set_health_settings(new.health.clone());
            notes.push("[health] updated".to_string());
            if old.health.enabled && !new.health.enabled {
                for b in self.balancer.members().iter() {
                    b.health().checks_stopped();
                }
            }
        }
        running.resolved = first_answers(&new);
        let summary = self.apply(&new.backends, &running.resolved, new.algorithm, new.drain_timeout);
        let keep = (running.config.listen, running.config.mode, running.config.workers);
        running.config = Config { listen: keep.0, mode: keep.1, workers: keep.2, ..new };
        notes.insert(0, summary);
        log::info!("reload: {}", notes.join("; "));
    }

    /// Resolves every DNS-named backend again and applies any change.
    /// (Lookups run without the lock; an answer for a spec a reload changed meanwhile is dropped.)
    pub fn refresh_dns(&self) {
        let specs: Vec<BackendSpec> =
            self.running.lock().config.backends.iter().filter(|s| s.dns).cloned().collect();
        if specs.is_empty() {
            return;
        }
        let mut answers = HashMap::new();
        for spec in &specs {
            match resolve(&spec.host, spec.port) {
                Ok(addrs) => {
                    answers.insert(spec.name.clone(), addrs);
                }
                Err(e) => {
                    if let Some(n) = DNS_ERRORS.check() {
                        log::warn!("dns: {}: {e}; keeping its previous addresses{}", spec.name, held_back(n));
                    }
                }
            }
        }
        let mut running = self.running.lock();
        let current = &running.config.backends;
        answers.retain(|name, _| {
            let before = specs.iter().find(|s| &s.name == name);
            let now = current.iter().find(|s| &s.name == name);
            matches!((before, now), (Some(b), Some(n)) if n.dns && n.host == b.host && n.port == b.port)
        });
        let changed = answers.iter().any(|(name, addrs)| running.resolved.get(name) != Some(addrs));
        if !changed {
            return;
        }
        running.resolved.extend(answers);
        let config = &running.config;
        let summary = self.apply(&config.backends, &running.resolved, config.algorithm, config.drain_timeout);
        log::info!("dns: {summary}");
    }

    /// Starts the thread that calls [`Discovery::refresh_dns`] every `resolve_ms` as currently
    /// configured (a reload may add DNS names or change the interval).
    pub fn spawn_resolver(self: &Arc<Self>) -> std::io::Result<thread::JoinHandle<()>> {
        let me = self.clone();
        thread::Builder::new().name("resolver".into()).spawn(move || loop {
            let interval = me.running.lock().config.resolve_interval;
            match me.stop.recv_timeout(interval) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => me.refresh_dns(),
                _ => return,
            }
        })
    }

    /// Makes the balancer's members match `specs` (DNS names at `resolved`). Returns a summary.
    fn apply(
        &self,
        specs: &[BackendSpec],
        resolved: &HashMap<String, Vec<SocketAddr>>,
        algorithm: crate::config::Algorithm,
        drain: Duration,
    ) -> String {
        let current = self.balancer.members();
        let mut next: Vec<Arc<Backend>> = Vec::new();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), 0);
        for spec in specs {
            let addrs = if spec.dns { resolved.get(&spec.name).unwrap_or(&spec.addrs) } else { &spec.addrs };
            for (name, addr) in members_of(spec, addrs) {
                match current.iter().find(|b| b.spec() == spec.name && b.addr() == addr && !b.is_retired()) {
                    Some(b) => {
                        b.set_send_proxy(spec.send_proxy);
                        // Compared with the line's weight, not the one in force: an operator's
                        // runtime change survives a reload that leaves the line alone.
                        if b.line_weight() != spec.weight || b.max_conns() != spec.max_conns {
                            // Only what changed is named.
                            let mut what = b.name().to_string();
                            if b.line_weight() != spec.weight {
                                let _ = write!(what, " weight {}->{}", b.line_weight(), spec.weight);
                            }
                            if b.max_conns() != spec.max_conns {
                                let _ = write!(what, " max_conns {}->{}", b.max_conns(), spec.max_conns);
                            }
                            changed.push(what);
                            b.set_limits(spec.weight, spec.max_conns);
                            // A changed line replaces what an operator set at runtime.
                            b.set_admin_state(AdminState::Ready, Duration::ZERO);
                        } else {
                            kept += 1;
                        }
                        next.push(b.clone());
                    }
                    None => {
                        added.push(name.clone());
                        next.push(Arc::new(
                            Backend::new(name, spec.name.clone(), addr, spec.weight, spec.max_conns)
                                .with_send_proxy(spec.send_proxy),
                        ));
                    }
                }
            }
        }
        let removed: Vec<Arc<Backend>> =
            current.iter().filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b))).cloned().collect();
        // Install the new set first, then retire the old one: a pick made at any moment sees a
        // complete set (retiring first left a window in which a whole-set swap found nothing).
        self.balancer.replace(next, algorithm);
        for b in &removed {
            b.retire();
        }
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", added.join(", ")));
        }
        if !removed.is_empty() {
            let draining: usize = removed.iter().map(|b| b.active()).sum();
            let names: Vec<&str> = removed.iter().map(|b| b.name()).collect();
            parts.push(format!(
                "removed {} (draining {draining} connection(s), closed after {} ms)",
                names.join(", "),
                drain.as_millis()
            ));
            self.close_after(removed.iter().map(|b| b.id()).collect(), drain);
        }
        if !changed.is_empty() {
            parts.push(format!("changed {}", changed.join(", ")));
        }
        parts.push(format!("{kept} unchanged"));
        parts.join("; ")
    }

    /// Closes connections still attached to the removed backends `ids` after `drain`.
    fn close_after(&self, ids: Vec<u64>, drain: Duration) {
        let registry = self.registry.clone();
        let stop = self.stop.clone();
        let spawned = thread::Builder::new().name("drain".into()).spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(drain) {
                let closed = registry.close_backends(&ids);
                if closed > 0 {
                    log::warn!("drain timeout: closed {closed} connection(s) to removed backends");
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the drain timer: {e}");
        }
    }
}

/// A setting's value for a log line: an empty one says so.
fn shown(value: &str) -> &str {
    if value.is_empty() {
        "(empty)"
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    #[test]
    fn dns_answers_add_and_retire_members_keeping_the_unchanged() {
        let raw = RawConfig::parse(&b"[backends]\nweb = localhost:9\nfixed = 127.0.0.1:8\n"[..], "t")
            .expect("parse");
        let config = raw.validate().expect("valid");
        let balancer = Arc::new(Balancer::new(
            crate::backend::members::build(&config.backends),
            config.algorithm,
            config.health.clone(),
        ));
        let (_stop_tx, stop) = crossbeam_channel::bounded(0);
        let d = Discovery::new(config.clone(), balancer.clone(), Registry::new(), stop);
        let fixed = balancer.members().iter().find(|b| b.name() == "fixed").cloned().expect("fixed");
        let a: SocketAddr = "10.9.0.1:9".parse().expect("addr");
        let b: SocketAddr = "10.9.0.2:9".parse().expect("addr");
        let mut answers = HashMap::new();
        answers.insert("web".to_string(), vec![a, b]);
        let summary = d.apply(&config.backends, &answers, config.algorithm, Duration::from_secs(1));
        assert!(summary.contains("added web@10.9.0.1:9, web@10.9.0.2:9"), "{summary}");
        let first = balancer.members().iter().find(|m| m.addr() == a).cloned().expect("member a");
        answers.insert("web".to_string(), vec![a]);
        let summary = d.apply(&config.backends, &answers, config.algorithm, Duration::from_secs(1));
        assert!(summary.contains("removed web@10.9.0.2:9") && summary.contains("2 unchanged"), "{summary}");
        let members = balancer.members();
        assert_eq!(members.len(), 2);
        assert!(members.iter().any(|m| Arc::ptr_eq(m, &first)), "an unchanged member keeps its state");
        assert!(members.iter().any(|m| Arc::ptr_eq(m, &fixed)));
    }
}
