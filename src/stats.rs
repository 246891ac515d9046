//! Numbers about the proxy: latency histograms per backend (all-time for /metrics, recent
//! windows for p50/p99 in /stats), the /stats JSON, and the /metrics Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::backend::{now_ms, Backend, WEIGHT_SCALE};
use crate::balancer::Balancer;

/// Histogram bucket upper bounds, in seconds (Prometheus' defaults, finer at the low end).
pub const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Length of one recent-latency window; p50/p99 cover the current and the previous one.
const WINDOW_MS: u64 = 30_000;

/// A lock-free latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.sum_micros.store(0, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// A backend's latency: all-time histogram plus two alternating recent windows.
#[derive(Debug, Default)]
pub struct Latency {
    total: Histogram,
    windows: [Histogram; 2],
    generation: [AtomicU64; 2],
}

impl Latency {
    /// Records one request (HTTP) or connection (TCP) duration.
    pub fn record(&self, d: Duration) {
        self.total.record(d);
        let generation = now_ms() / WINDOW_MS + 1;
        let slot = (generation % 2) as usize;
        if self.generation[slot].swap(generation, Ordering::Relaxed) != generation {
            self.windows[slot].reset();
        }
        self.windows[slot].record(d);
    }

    /// The recent `q`-quantile (upper bound of its bucket), in seconds; `None` without data.
    pub fn recent_quantile(&self, q: f64) -> Option<f64> {
        let now = now_ms() / WINDOW_MS + 1;
        let mut counts = [0u64; BUCKETS.len() + 1];
        for slot in 0..2 {
            if now.saturating_sub(self.generation[slot].load(Ordering::Relaxed)) <= 1 {
                for (c, n) in counts.iter_mut().zip(self.windows[slot].snapshot()) {
                    *c += n;
                }
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// Whole-process counters shown beside the backends.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// HTTP requests answered (any status).
    pub requests: AtomicU64,
    /// Accepted connections waiting for a free worker (sampled at each accept).
    pub accept_queue: std::sync::atomic::AtomicUsize,
}

fn secs_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn backend_json(b: &Backend) -> serde_json::Value {
    let (last, at) = b.health.last_check();
    let ms = |q: f64| b.latency.recent_quantile(q).map(|s| if s.is_finite() { s * 1000.0 } else { -1.0 });
    json!({
        "name": b.name,
        "address": b.addr.to_string(),
        "state": if b.is_retired() { "draining" } else if b.health.is_up() { "up" } else { "down" },
        "weight": b.weight(),
        "effective_weight": b.effective_weight(now_ms()) as f64 / WEIGHT_SCALE as f64,
        "max_conns": b.max_conns(),
        "active": b.active.load(Ordering::Relaxed),
        "queued": b.queued.load(Ordering::Relaxed),
        "total": b.total.load(Ordering::Relaxed),
        "failures": b.failures.load(Ordering::Relaxed),
        "bytes_up": b.bytes_up.load(Ordering::Relaxed),
        "bytes_down": b.bytes_down.load(Ordering::Relaxed),
        "idle_pooled": b.idle.len(),
        "last_check": { "result": last, "time": at.map(secs_since_epoch) },
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99) },
    })
}

/// The /stats document.
pub fn stats_json(balancer: &Balancer, counters: &ProxyCounters) -> String {
    let members = balancer.members();
    let doc = json!({
        "algorithm": balancer.algorithm().name(),
        "connections_accepted": counters.accepted.load(Ordering::Relaxed),
        "requests": counters.requests.load(Ordering::Relaxed),
        "queued": balancer.queued(),
        "waiting_for_worker": counters.accept_queue.load(Ordering::Relaxed),
        "backends": members.iter().map(|b| backend_json(b)).collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The /metrics document, Prometheus text format 0.0.4.
pub fn metrics_text(balancer: &Balancer, counters: &ProxyCounters) -> String {
    let members = balancer.members();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&Backend) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for b in members.iter() {
            let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", b.name, value(b));
        }
    };
    family("lb_backend_up", "gauge", "Whether the backend is up (1) or down (0).", &|b| {
        u8::from(b.health.is_up() && !b.is_retired()).to_string()
    });
    family("lb_backend_weight", "gauge", "Effective weight (slow start included).", &|b| {
        (b.effective_weight(now_ms()) as f64 / WEIGHT_SCALE as f64).to_string()
    });
    family("lb_backend_active_connections", "gauge", "Connections or requests in flight.", &|b| {
        b.active.load(Ordering::Relaxed).to_string()
    });
    family(
        "lb_requests_total",
        "counter",
        "Connections (tcp) or requests (http) sent to the backend.",
        &|b| b.total.load(Ordering::Relaxed).to_string(),
    );
    family("lb_backend_failures_total", "counter", "Failed connects and broken exchanges.", &|b| {
        b.failures.load(Ordering::Relaxed).to_string()
    });
    family("lb_backend_sent_bytes_total", "counter", "Bytes relayed from clients to the backend.", &|b| {
        b.bytes_up.load(Ordering::Relaxed).to_string()
    });
    family(
        "lb_backend_received_bytes_total",
        "counter",
        "Bytes relayed from the backend to clients.",
        &|b| b.bytes_down.load(Ordering::Relaxed).to_string(),
    );
    let name = "lb_request_duration_seconds";
    let _ =
        writeln!(out, "# HELP {name} Request (http) or connection (tcp) duration.\n# TYPE {name} histogram");
    for b in members.iter() {
        let counts = b.latency.total.snapshot();
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "{name}_bucket{{backend=\"{}\",le=\"{le}\"}} {cumulative}", b.name);
        }
        cumulative += counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{backend=\"{}\",le=\"+Inf\"}} {cumulative}", b.name);
        let sum = b.latency.total.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{backend=\"{}\"}} {sum}", b.name);
        let _ = writeln!(out, "{name}_count{{backend=\"{}\"}} {cumulative}", b.name);
    }
    let _ = writeln!(
        out,
        "# HELP lb_connections_accepted_total Client connections accepted.\n\
         # TYPE lb_connections_accepted_total counter\nlb_connections_accepted_total {}",
        counters.accepted.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lb_accept_queue_length Accepted connections waiting for a free worker.\n\
         # TYPE lb_accept_queue_length gauge\nlb_accept_queue_length {}",
        counters.accept_queue.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lb_queue_length Connections or requests waiting for a backend slot.\n\
         # TYPE lb_queue_length gauge\nlb_queue_length {}",
        balancer.queued()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_quantiles_come_from_the_buckets() {
        let l = Latency::default();
        assert_eq!(l.recent_quantile(0.5), None);
        for _ in 0..98 {
            l.record(Duration::from_micros(300));
        }
        l.record(Duration::from_millis(40));
        l.record(Duration::from_secs(20));
        assert_eq!(l.recent_quantile(0.5), Some(0.0005));
        assert_eq!(l.recent_quantile(0.99), Some(0.05));
        assert_eq!(l.recent_quantile(1.0), Some(f64::INFINITY));
    }
}
