//! Routing: the pools behind the listener and the routes that choose between them, as one
//! immutable [`Table`] that the [`Router`] swaps whole on reload. A worker keeps the table it
//! [`Loaded`] and looks again only when the generation moved, so a request sees one table
//! from its head to its last byte, and reading it costs one atomic load.
//!
//! HTTP routes match host and path prefix ([`index`]); TCP routes match the TLS ClientHello's
//! server name ([`sni`]). A request no route takes goes to the default pool (`[backends]`).

pub mod index;
pub mod sni;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::backend::members;
use crate::balancer::Balancer;
use crate::config::{Algorithm, Config, HeaderRules, HealthSettings, Redirect, RouteAction, RouteSpec};
use crate::h1::edits::{Edits, Routed};
use index::{normalize_host, Index};

pub use crate::config::DEFAULT_POOL;

/// A pool: its name and the balancer over its members.
pub struct Pool {
    pub name: String,
    pub balancer: Arc<Balancer>,
    /// `sticky = cookie NAME`: the cookie's name.
    pub sticky: Option<String>,
}

/// What a matching route does, resolved against its table.
pub enum Target {
    /// The pool at this position in [`Table::pools`].
    Pool(usize),
    Redirect(Redirect),
}

/// One route, ready to apply.
pub struct Route {
    pub name: String,
    /// `route api (host api.example.com, path /api) pool api`, as the decision line says it.
    pub label: String,
    pub target: Target,
    /// Path bytes to strip (`strip_prefix`), else 0.
    strip: usize,
    request: HeaderRules,
    response: HeaderRules,
}

impl Route {
    /// The route's response rules.
    pub fn response_edits(&self) -> Edits<'_> {
        edits(&self.response)
    }
}

fn edits(rules: &HeaderRules) -> Edits<'_> {
    Edits { del: &rules.del, set: &rules.set, add: &rules.add }
}

/// The pools and routes in force.
pub struct Table {
    /// Every pool; the default pool (`[backends]`) first, possibly without members.
    pools: Vec<Arc<Pool>>,
    routes: Vec<Route>,
    http: Index,
    sni: Index,
    /// Whether `[backends]` has members; without, an unrouted request gets 404.
    has_default: bool,
    hashes_header: bool,
    /// Whether some pool is sticky (every request is then routed, to find its cookie).
    sticky: bool,
}

impl Table {
    /// The table for `config`, keeping the pools of `old` (by name) with their balancers and
    /// members, whose changes [`crate::server`]'s discovery applies; new pools start with the
    /// members their lines name.
    pub fn build(config: &Config, old: Option<&Table>) -> Table {
        let mut pools = Vec::new();
        for spec in config.every_pool() {
            let health = pool_health(&config.health, spec.health_path);
            let kept = old.and_then(|t| t.pools.iter().find(|p| p.name == spec.name));
            let balancer = match kept {
                Some(p) => {
                    p.balancer.set_health_settings(health);
                    p.balancer.clone()
                }
                None => Arc::new(Balancer::new(members::build(spec.backends), spec.algorithm, health)),
            };
            let sticky = spec.sticky.map(str::to_string);
            pools.push(Arc::new(Pool { name: spec.name.to_string(), balancer, sticky }));
        }
        let position = |name: &str| pools.iter().position(|p| p.name == name).unwrap_or(0);
        let routes: Vec<Route> = config.routes.iter().map(|r| route(r, &position)).collect();
        let numbered = || config.routes.iter().enumerate().map(|(i, r)| (i as u32, r));
        let hashes_header = config.every_pool().any(|p| p.algorithm == Algorithm::HeaderHash);
        Table {
            http: Index::build(numbered().filter(|(_, r)| r.sni.is_none()), false),
            sni: Index::build(numbered().filter(|(_, r)| r.sni.is_some()), true),
            routes,
            pools,
            has_default: !config.backends.is_empty(),
            hashes_header,
            sticky: config.every_pool().any(|p| p.sticky.is_some()),
        }
    }

    /// Every pool, the default first.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The default pool (`[backends]`), even when it has no members.
    pub fn default_pool(&self) -> &Arc<Pool> {
        &self.pools[0]
    }

    /// The route at `i` (from [`Routed::route`]).
    pub fn route(&self, i: u32) -> Option<&Route> {
        self.routes.get(i as usize)
    }

    /// Whether HTTP requests need routing at all (routes by host or path, no default pool, or a
    /// sticky pool).
    pub fn routes_http(&self) -> bool {
        !self.http.is_empty() || !self.has_default || self.sticky
    }

    /// Whether some pool balances by a request header (it is looked for in every request).
    pub fn hashes_header(&self) -> bool {
        self.hashes_header
    }

    /// Routes an HTTP request by its host (as sent) and origin-form target.
    pub fn route_http(&self, host: &str, target: &str) -> Routed<'_> {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let found = self.http.find(&normalize_host(host), path).filter(|&i| self.route(i).is_some());
        let pool = self.pool_for(found);
        let cookie = pool.and_then(|p| p.sticky.as_deref());
        match found.and_then(|i| self.route(i)) {
            Some(r) => Routed {
                route: found,
                strip: r.strip,
                edits: edits(&r.request),
                answer: pool.is_none(),
                cookie,
            },
            None => Routed { answer: pool.is_none(), cookie, ..Routed::default() },
        }
    }

    /// The pool a request goes to: its route's, else the default one (`None`: no route and no
    /// `[backends]`, or a redirect).
    pub fn pool_for(&self, route: Option<u32>) -> Option<&Arc<Pool>> {
        match route.and_then(|i| self.route(i)) {
            Some(Route { target: Target::Pool(p), .. }) => self.pools.get(*p),
            Some(_) => None,
            None => self.has_default.then(|| self.default_pool()),
        }
    }

    /// The pool for a TCP connection whose ClientHello named `server` (`None`: no SNI, or not
    /// TLS), and the route that chose it.
    pub fn route_sni(&self, server: Option<&str>) -> (Option<&Arc<Pool>>, Option<&Route>) {
        let found = server.and_then(|s| self.sni.find(&normalize_host(s), "/"));
        (self.pool_for(found), found.and_then(|i| self.route(i)))
    }

    /// Whether any route matches by SNI (TCP mode peeks at the ClientHello only then).
    pub fn routes_sni(&self) -> bool {
        !self.sni.is_empty()
    }
}

/// `[health]` for a pool: the pool's own `health_path`, if any, replaces `path`.
fn pool_health(health: &HealthSettings, path: Option<&str>) -> HealthSettings {
    let mut h = health.clone();
    if let Some(p) = path {
        p.clone_into(&mut h.path);
    }
    h
}

fn route(r: &RouteSpec, position: &dyn Fn(&str) -> usize) -> Route {
    Route {
        name: r.name.clone(),
        label: match &r.action {
            RouteAction::Pool(p) => format!("route {} ({}) pool {p}", r.name, r.describe()),
            RouteAction::Redirect(_) => format!("route {} ({})", r.name, r.describe()),
        },
        target: match &r.action {
            RouteAction::Pool(p) => Target::Pool(position(p)),
            RouteAction::Redirect(to) => Target::Redirect(to.clone()),
        },
        strip: match (&r.path, r.strip_prefix) {
            (Some(p), true) if p != "/" => p.len(),
            _ => 0,
        },
        request: r.request.clone(),
        response: r.response.clone(),
    }
}

/// The table in force, swapped whole.
pub struct Router {
    generation: AtomicU64,
    table: RwLock<Arc<Table>>,
}

impl Router {
    pub fn new(table: Table) -> Router {
        Router { generation: AtomicU64::new(0), table: RwLock::new(Arc::new(table)) }
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// Puts `table` in force: requests parsed from now on see it; those in flight finish with
    /// the one they started with.
    pub fn install(&self, table: Table) {
        *self.table.write() = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The table in force, for a worker to keep ([`Loaded::refresh`]).
    pub fn load(&self) -> Loaded {
        let generation = self.generation.load(Ordering::Acquire);
        Loaded { generation, table: self.table() }
    }
}

/// A worker's copy of the table in force, refreshed when the generation moves.
pub struct Loaded {
    generation: u64,
    table: Arc<Table>,
}

impl Loaded {
    /// The table in force now (the kept one, unless a reload installed another).
    pub fn refresh(&mut self, router: &Router) -> &Arc<Table> {
        if router.generation.load(Ordering::Acquire) != self.generation {
            *self = router.load();
        }
        &self.table
    }

    /// Whether the kept table is still the one in force.
    pub fn is_current(&self, router: &Router) -> bool {
        router.generation.load(Ordering::Acquire) == self.generation
    }

    /// The table kept.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }
}

/// The redirect's `Location`: its template with `{host}` (lowercase, no port), `{uri}` (the
/// target as sent), `{path}` and `{query}` filled in.
/// One pass over the template, so a placeholder's value is never itself expanded.
pub fn location(template: &str, host: &str, target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let host = normalize_host(host);
    let mut out = String::with_capacity(template.len() + target.len() + host.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let (value, len) = [("{host}", &*host), ("{uri}", target), ("{path}", path), ("{query}", query)]
            .into_iter()
            .find(|(name, _)| after.starts_with(name))
            .map_or(("{", 1), |(name, value)| (value, name.len()));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
