//! Where backends come from while running: applying a reloaded configuration (SIGHUP) and
//! re-resolving DNS names, both by the same diff of members.
//!
//! Pools are identified by name: a kept pool keeps its balancer, a new one starts with its
//! lines' members, a removed one has its members retired; the new route table is installed
//! once every kept pool's members are in place. Within a pool, a member is identified by its
//! key and address. Unchanged members keep their
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

use crate::backend::members::{self, members_of};
use crate::backend::{AdminState, Backend};
use crate::balancer::Balancer;
use crate::config::keys::{Key, KEYS};
use crate::config::{Algorithm, BackendSpec, Config, ConfigError};
use crate::conn::policy::Policy;
use crate::conn::Registry;
use crate::logging::{held_back, RateLimit};
use crate::net::addr::resolve;
use crate::route::{Router, Table, DEFAULT_POOL};

/// Applies configuration and DNS changes to the running balancer.
pub struct Discovery {
    router: Arc<Router>,
    policy: Arc<Policy>,
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
    config.every_backend().filter(|s| s.dns).map(|s| (s.name.clone(), s.addrs.clone())).collect()
}

impl Discovery {
    /// Tracks `config` as the running configuration. `stop` ends drain timers and the resolver.
    pub fn new(
        config: Config,
        router: Arc<Router>,
        policy: Arc<Policy>,
        registry: Arc<Registry>,
        stop: Receiver<()>,
    ) -> Discovery {
        let resolved = first_answers(&config);
        Discovery { router, policy, registry, running: Mutex::new(Running { config, resolved }), stop }
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
                    (
                        "proxy",
                        "listen"
                            | "mode"
                            | "workers"
                            | "active_workers"
                            | "queue"
                            | "log_file"
                            | "access_log"
                            | "access_format"
                            | "stats_interval_ms"
                    ) | ("admin", "listen")
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
        let old_table = self.router.table();
        if old.health != new.health {
            notes.push("[health] updated".to_string());
            if old.health.enabled && !new.health.enabled {
                for (_, b) in crate::stats::members(&old_table) {
                    b.health().checks_stopped();
                }
            }
        }
        if old.routes != new.routes || old.pools.len() != new.pools.len() {
            notes.push(format!("{} route(s), {} pool(s)", new.routes.len(), new.pools.len() + 1));
        }
        if old.error_pages != new.error_pages || new.error_pages.is_some() {
            match &new.error_pages {
                Some(dir) => match crate::h1::respond::load_pages(dir) {
                    Ok(pages) => {
                        notes.push(format!("{} error page(s)", pages.len()));
                        crate::h1::respond::set_pages(pages);
                    }
                    Err(e) => log::error!("reload: {e}; the error pages in force stay"),
                },
                None => crate::h1::respond::set_pages(Default::default()),
            }
        }
        for w in &new.warnings {
            log::warn!("reload: {w}");
        }
        if old.limits != new.limits {
            self.policy.update(&new.limits);
            notes.push("[limits] updated".to_string());
        }
        running.resolved = first_answers(&new);
        // The new table keeps the pools that stay (balancers, members, counters); their members
        // are brought in line before it is installed, and removed pools are emptied after.
        let table = Table::build(&new, Some(&old_table));
        let summary = self.apply_all(&table, &new, &running.resolved, Some(&old_table));
        self.router.install(table);
        let kept = self.router.table();
        let stays =
            |p: &Arc<crate::route::Pool>| kept.pools().iter().any(|k| Arc::ptr_eq(&k.balancer, &p.balancer));
        for gone in old_table.pools().iter().filter(|p| !stays(p)) {
            let removed = gone.balancer.retire_all();
            log::info!("reload: pool {} removed: {}", gone.name, self.draining(&removed, new.drain_timeout));
        }
        let keep = (running.config.listen, running.config.mode, running.config.workers);
        running.config = Config { listen: keep.0, mode: keep.1, workers: keep.2, ..new };
        notes.insert(0, summary);
        log::info!("reload: {}", notes.join("; "));
    }

    /// Resolves every DNS-named backend again and applies any change.
    /// (Lookups run without the lock; an answer for a spec a reload changed meanwhile is dropped.)
    pub fn refresh_dns(&self) {
        let specs: Vec<BackendSpec> =
            self.running.lock().config.every_backend().filter(|s| s.dns).cloned().collect();
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
        let current: Vec<&BackendSpec> = running.config.every_backend().collect();
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
        let summary = self.apply_all(&self.router.table(), &running.config, &running.resolved, None);
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

    /// Brings every pool of `table` in line with `config`; returns a summary (pools other than
    /// the default one named when new since `before` or changed, the rest counted).
    fn apply_all(
        &self,
        table: &Table,
        config: &Config,
        resolved: &HashMap<String, Vec<SocketAddr>>,
        before: Option<&Table>,
    ) -> String {
        let mut parts = Vec::new();
        // Named pools with nothing changed are counted, not listed: 500 of them made a 12 KB line.
        let mut quiet = 0;
        for spec in config.every_pool() {
            let Some(pool) = table.pools().iter().find(|p| p.name == spec.name) else { continue };
            let (summary, touched) =
                self.apply(&pool.balancer, spec.backends, resolved, spec.algorithm, config.drain_timeout);
            let new = before.is_some_and(|t| !t.pools().iter().any(|p| p.name == spec.name));
            match spec.name {
                DEFAULT_POOL => parts.push(summary),
                name if new => parts.push(format!("pool {name} added")),
                name if touched => parts.push(format!("pool {name}: {summary}")),
                _ => quiet += 1,
            }
        }
        if quiet > 0 {
            parts.push(format!("{quiet} other pool{} unchanged", if quiet == 1 { "" } else { "s" }));
        }
        parts.join("; ")
    }

    /// Makes `balancer`'s members match `specs` (DNS names at `resolved`). Returns a summary,
    /// and whether any member was added, removed or changed.
    fn apply(
        &self,
        balancer: &Balancer,
        specs: &[BackendSpec],
        resolved: &HashMap<String, Vec<SocketAddr>>,
        algorithm: Algorithm,
        drain: Duration,
    ) -> (String, bool) {
        let current = balancer.members();
        let mut next: Vec<Arc<Backend>> = Vec::new();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), 0);
        for spec in specs {
            let addrs = if spec.dns { resolved.get(&spec.name).unwrap_or(&spec.addrs) } else { &spec.addrs };
            for (name, addr) in members_of(spec, addrs) {
                match current.iter().find(|b| b.spec() == spec.name && b.addr() == addr && !b.is_retired()) {
                    Some(b) => {
                        members::follow_line(b, spec);
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
                        next.push(Arc::new(members::member(spec, name, addr)));
                    }
                }
            }
        }
        let removed: Vec<Arc<Backend>> =
            current.iter().filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b))).cloned().collect();
        // Install the new set first, then retire the old one: a pick made at any moment sees a
        // complete set (retiring first left a window in which a whole-set swap found nothing).
        balancer.replace(next, algorithm);
        for b in &removed {
            b.retire();
        }
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", added.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(self.draining(&removed, drain));
        }
        if !changed.is_empty() {
            parts.push(format!("changed {}", changed.join(", ")));
        }
        let touched = !parts.is_empty();
        parts.push(format!("{kept} unchanged"));
        (parts.join("; "), touched)
    }

    /// Says which backends were removed and how many connections they drain, and closes what
    /// is still open after `drain`.
    fn draining(&self, removed: &[Arc<Backend>], drain: Duration) -> String {
        let draining: usize = removed.iter().map(|b| b.active()).sum();
        let names: Vec<&str> = removed.iter().map(|b| b.name()).collect();
        self.close_after(removed.iter().map(|b| b.id()).collect(), drain);
        let names = names.join(", ");
        match draining {
            0 => format!("removed {names} (no open connections)"),
            n => format!(
                "removed {names} (draining {n} connection(s); any still open in {} ms are closed)",
                drain.as_millis()
            ),
        }
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
        let (_stop_tx, stop) = crossbeam_channel::bounded(0);
        let router = Arc::new(Router::new(Table::build(&config, None)));
        let balancer = router.table().default_pool().balancer.clone();
        let policy = Policy::new(&config.limits);
        let d = Discovery::new(config.clone(), router, policy, Registry::new(), stop);
        let fixed = balancer.members().iter().find(|b| b.name() == "fixed").cloned().expect("fixed");
        let a: SocketAddr = "10.9.0.1:9".parse().expect("addr");
        let b: SocketAddr = "10.9.0.2:9".parse().expect("addr");
        let mut answers = HashMap::new();
        answers.insert("web".to_string(), vec![a, b]);
        let (summary, touched) =
            d.apply(&balancer, &config.backends, &answers, config.algorithm, Duration::from_secs(1));
        assert!(touched && summary.contains("added web@10.9.0.1:9, web@10.9.0.2:9"), "{summary}");
        let first = balancer.members().iter().find(|m| m.addr() == a).cloned().expect("member a");
        answers.insert("web".to_string(), vec![a]);
        let (summary, touched) =
            d.apply(&balancer, &config.backends, &answers, config.algorithm, Duration::from_secs(1));
        assert!(touched && summary.contains("removed web@10.9.0.2:9"), "{summary}");
        assert!(summary.contains("2 unchanged"), "{summary}");
        let members = balancer.members();
        assert_eq!(members.len(), 2);
        assert!(members.iter().any(|m| Arc::ptr_eq(m, &first)), "an unchanged member keeps its state");
        assert!(members.iter().any(|m| Arc::ptr_eq(m, &fixed)));
    }
}
