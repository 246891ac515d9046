//! Rendering the numbers: the /stats JSON, the /metrics Prometheus text, and the counters
//! that belong to the whole process. The histograms themselves live in [`crate::backend::latency`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::backend::latency::BUCKETS;
use crate::backend::{Backend, WEIGHT_SCALE};
use crate::clock::now_ms;
use crate::route::Table;

/// What the workers and the parker are doing now, read when `/stats` or `/metrics` is asked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live {
    /// Connections queued for a free worker (the workers' channel's length).
    pub waiting_for_worker: usize,
    /// Connections waiting in the parker: idle keep-alive, unfinished heads and handshakes,
    /// quiet relays and tunnels.
    pub parked: usize,
    /// Worker threads (`workers`).
    pub workers: usize,
    /// Workers serving a connection now.
    pub workers_busy: usize,
    /// Worker threads alive (threadpool's `active_count`).
    pub worker_threads: usize,
    /// Jobs that panicked (caught; the worker carried on).
    pub worker_panics: u64,
    /// Workers taking connections at once (`active_workers`, resolved).
    pub workers_active: usize,
    /// Workers asleep in reserve, for when active ones wait long on a peer.
    pub workers_reserve: usize,
    /// Places handed from a worker waiting long on a peer to a reserve one.
    pub worker_handoffs: u64,
}

/// Reads [`Live`] when called.
pub struct LiveGauges(pub Box<dyn Fn() -> Live + Send + Sync>);

impl std::fmt::Debug for LiveGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGauges")
    }
}

impl ProxyCounters {
    /// The live gauges now (zeros before the workers run).
    pub fn live(&self) -> Live {
        self.live.get().map(|g| (g.0)()).unwrap_or_default()
    }
}

/// Whole-process counters shown beside the backends.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// HTTP requests answered (any status).
    pub requests: AtomicU64,
    /// The gauges read when asked (set once the workers and the parker run).
    pub live: std::sync::OnceLock<LiveGauges>,
    /// TLS handshakes completed on the listener.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed: refused, timed out, plain HTTP or garbage.
    pub tls_handshake_failures: AtomicU64,
    /// Request headers dropped for an underscore in their name (`underscores_in_headers` off).
    pub underscored_headers_dropped: AtomicU64,
    /// Clients turned away by `[limits]`: not allowed (403), over the rate, over the connection
    /// limit (429).
    pub refused_denied: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_connections: AtomicU64,
}

impl ProxyCounters {
    /// Clients turned away by `[limits]`, by why: `denied`, `rate`, `connections`.
    pub fn refusals(&self) -> [(&'static str, u64); 3] {
        [
            ("denied", self.refused_denied.load(Ordering::Relaxed)),
            ("rate", self.refused_rate.load(Ordering::Relaxed)),
            ("connections", self.refused_connections.load(Ordering::Relaxed)),
        ]
    }

    /// [`ProxyCounters::refusals`] as the JSON object `/stats` and the dashboard show.
    pub fn refused(&self) -> serde_json::Value {
        self.refusals().into_iter().map(|(why, n)| (why.to_string(), json!(n))).collect()
    }
}

fn secs_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One backend of `pool` and its numbers, as /stats, the API's answers and the dashboard show
/// them.
pub fn backend_json(pool: &str, b: &Backend) -> serde_json::Value {
    let (last, at) = b.health().last_check();
    let ms = |q: f64| b.latency().recent_quantile(q).map(|s| if s.is_finite() { s * 1000.0 } else { -1.0 });
    json!({
        "name": b.name(),
        "pool": pool,
        "address": b.addr().to_string(),
        "state": b.state_text(),
        "slow_start": b.health().slowstart_fraction(now_ms()).is_some(),
        "health": if b.health().is_up() { "up" } else { "down" },
        "admin": b.admin_state().name(),
        "weight": b.weight(),
        "effective_weight": b.effective_weight(now_ms()) as f64 / WEIGHT_SCALE as f64,
        "max_conns": b.max_conns(),
        "active": b.active(),
        "queued": b.queued(),
        "total": b.total(),
        "failures": b.failures(),
        "bytes_up": b.bytes().0,
        "bytes_down": b.bytes().1,
        "idle_pooled": b.idle_count(),
        "tunnels": b.tunnels(),
        "last_check": { "result": last, "time": at.map(secs_since_epoch) },
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99) },
    })
}

/// The /stats document; `tracked`: client addresses whose rate `[limits]` tracks now.
pub fn stats_json(table: &Table, counters: &ProxyCounters, tracked: usize) -> String {
    let members = members(table);
    let live = counters.live();
    let pools: Vec<_> = table
        .pools()
        .iter()
        .map(|p| {
            let names: Vec<String> = p.balancer.members().iter().map(|b| b.name().to_string()).collect();
            json!({
                "name": p.name,
                "algorithm": p.balancer.algorithm().name(),
                "queued": p.balancer.queued(),
                "backends": names,
            })
        })
        .collect();
    let doc = json!({
        "algorithm": table.default_pool().balancer.algorithm().name(),
        "connections_accepted": counters.accepted.load(Ordering::Relaxed),
        "requests": counters.requests.load(Ordering::Relaxed),
        "queued": queued(table),
        "pools": pools,
        "waiting_for_worker": live.waiting_for_worker,
        "parked": live.parked,
        "workers": live.workers,
        "workers_busy": live.workers_busy,
        "worker_threads": live.worker_threads,
        "worker_panics": live.worker_panics,
        "workers_active": live.workers_active,
        "workers_reserve": live.workers_reserve,
        "worker_handoffs": live.worker_handoffs,
        "tls_handshakes": counters.tls_handshakes.load(Ordering::Relaxed),
        "tls_handshake_failures": counters.tls_handshake_failures.load(Ordering::Relaxed),
        "underscored_headers_dropped": counters.underscored_headers_dropped.load(Ordering::Relaxed),
        "clients_tracked": tracked,
        "refused": counters.refused(),
        "access_log": json!({
            "written": crate::logging::access::written(),
            "dropped": crate::logging::access::dropped(),
        }),
        "backends": members
            .iter()
            .map(|(pool, b)| backend_json(pool, b))
            .collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The /metrics document, Prometheus text format 0.0.4.
pub fn metrics_text(table: &Table, counters: &ProxyCounters) -> String {
    let members = members(table);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&Backend) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (pool, b) in members.iter() {
            let _ = writeln!(out, "{name}{{backend=\"{}\",pool=\"{pool}\"}} {}", b.name(), value(b));
        }
    };
    family("lb_backend_up", "gauge", "Whether the backend is up (1) or down (0).", &|b| {
        u8::from(b.health().is_up() && !b.is_retired()).to_string()
    });
    family("lb_backend_weight", "gauge", "Effective weight (slow start included).", &|b| {
        (b.effective_weight(now_ms()) as f64 / WEIGHT_SCALE as f64).to_string()
    });
    family("lb_backend_active_connections", "gauge", "Connections or requests in flight.", &|b| {
        b.active().to_string()
    });
    family(
        "lb_requests_total",
        "counter",
        "Connections (tcp) or requests (http) sent to the backend.",
        &|b| b.total().to_string(),
    );
    family("lb_backend_failures_total", "counter", "Failed connects and broken exchanges.", &|b| {
        b.failures().to_string()
    });
    family("lb_backend_sent_bytes_total", "counter", "Bytes relayed from clients to the backend.", &|b| {
        b.bytes().0.to_string()
    });
    family(
        "lb_backend_received_bytes_total",
        "counter",
        "Bytes relayed from the backend to clients.",
        &|b| b.bytes().1.to_string(),
    );
    let name = "lb_request_duration_seconds";
    let _ =
        writeln!(out, "# HELP {name} Request (http) or connection (tcp) duration.\n# TYPE {name} histogram");
    for (pool, b) in members.iter() {
        let (counts, sum) = b.latency().all_time();
        let labels = format!("backend=\"{}\",pool=\"{pool}\"", b.name());
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = sum.as_secs_f64();
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "# HELP lb_connections_accepted_total Client connections accepted.\n\
         # TYPE lb_connections_accepted_total counter\nlb_connections_accepted_total {}",
        counters.accepted.load(Ordering::Relaxed)
    );
    let live = counters.live();
    let gauges: [(&str, &str, &str, u64); 7] = [
        (
            "lb_accept_queue_length",
            "gauge",
            "Accepted connections waiting for a free worker.",
            live.waiting_for_worker as u64,
        ),
        (
            "lb_parked_connections",
            "gauge",
            "Connections waiting in the parker, without a worker.",
            live.parked as u64,
        ),
        ("lb_workers", "gauge", "Worker threads.", live.workers as u64),
        ("lb_workers_busy", "gauge", "Workers serving a connection now.", live.workers_busy as u64),
        ("lb_workers_reserve", "gauge", "Workers asleep in reserve.", live.workers_reserve as u64),
        (
            "lb_worker_handoffs_total",
            "counter",
            "Places handed from a worker waiting long on a peer to a reserve one.",
            live.worker_handoffs,
        ),
        (
            "lb_worker_panics_total",
            "counter",
            "Jobs that panicked (caught; the worker carried on).",
            live.worker_panics,
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP lb_tls_handshakes_total TLS handshakes completed on the listener.\n\
         # TYPE lb_tls_handshakes_total counter\nlb_tls_handshakes_total {}",
        counters.tls_handshakes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lb_tls_handshake_failures_total TLS handshakes that failed (refused, timed out, not TLS).\n\
         # TYPE lb_tls_handshake_failures_total counter\nlb_tls_handshake_failures_total {}",
        counters.tls_handshake_failures.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lb_underscored_headers_dropped_total Request headers dropped for an underscore in their name.\n\
         # TYPE lb_underscored_headers_dropped_total counter\nlb_underscored_headers_dropped_total {}",
        counters.underscored_headers_dropped.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lb_access_log_dropped_total Access lines dropped because the logger thread was behind (a slow or full disk).\n\
         # TYPE lb_access_log_dropped_total counter\nlb_access_log_dropped_total {}",
        crate::logging::access::dropped()
    );
    let _ = writeln!(
        out,
        "# HELP lb_clients_refused_total Clients turned away by [limits], by why.\n# TYPE lb_clients_refused_total counter"
    );
    for (why, n) in counters.refusals() {
        let _ = writeln!(out, "lb_clients_refused_total{{why=\"{why}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP lb_tunnels_open Open upgraded connections (WebSocket) per backend.\n# TYPE lb_tunnels_open gauge"
    );
    for (pool, b) in members.iter() {
        let _ = writeln!(out, "lb_tunnels_open{{backend=\"{}\",pool=\"{pool}\"}} {}", b.name(), b.tunnels());
    }
    let _ = writeln!(
        out,
        "# HELP lb_queue_length Connections or requests waiting for a backend slot.\n\
         # TYPE lb_queue_length gauge\nlb_queue_length {}",
        queued(table)
    );
    out
}

/// Every pool's members, each with its pool's name.
pub fn members(table: &Table) -> Vec<(String, std::sync::Arc<Backend>)> {
    let mut all = Vec::new();
    for p in table.pools() {
        all.extend(p.balancer.members().iter().map(|b| (p.name.clone(), b.clone())));
    }
    all
}

/// Picks waiting for a slot, in every pool.
pub fn queued(table: &Table) -> usize {
    table.pools().iter().map(|p| p.balancer.queued()).sum()
}
