//! Latency, measured two ways: lock-free histograms per backend (all-time for /metrics, recent
//! windows for p50/p99 in /stats), and exact samples with nearest-rank percentiles, as
//! simulate_client reports them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

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

/// A backend's latency: all-time histogram plus two alternating recent windows, and the
/// peak-EWMA cost `least-time` balances by.
#[derive(Debug, Default)]
pub struct Latency {
    total: Histogram,
    windows: [Histogram; 2],
    generation: [AtomicU64; 2],
    cost: PeakEwma,
}

/// The decay time of the peak-EWMA cost (Linkerd's and Finagle's default).
pub const COST_DECAY: Duration = Duration::from_secs(10);

/// What a failure or a 5xx counts as for `least-time`: slow, so that a member failing fast
/// does not attract traffic (Linkerd's lesson).
pub const FAILURE_COST: Duration = Duration::from_secs(1);

/// A member's cost as Finagle's and Linkerd's peak EWMA: a slower sample replaces it at once, a
/// faster one pulls it down by the time elapsed (τ = [`COST_DECAY`]), and unused it decays
/// toward zero with τ, so a member that was slow is tried again (Traefik #12306: without decay,
/// a balancer by latency starves a backend for good). Microseconds, with the time of the last
/// sample; `None` before any sample.
#[derive(Debug, Default)]
pub struct PeakEwma {
    state: parking_lot::Mutex<Option<(f64, u64)>>,
}

impl PeakEwma {
    /// The cost at `now_ms`: the last value decayed by the time since.
    pub fn at(&self, now_ms: u64) -> Option<f64> {
        let state = *self.state.lock();
        state.map(|(cost, at)| cost * decay(now_ms.saturating_sub(at)))
    }

    /// Takes a sample at `now_ms`.
    pub fn observe_at(&self, sample: Duration, now_ms: u64) {
        let sample = sample.as_secs_f64() * 1e6;
        let mut state = self.state.lock();
        let next = match *state {
            None => sample,
            Some((cost, at)) => {
                // Finagle's update, cost·w + sample·(1 − w): the decayed cost plus the sample's share.
                let w = decay(now_ms.saturating_sub(at));
                if sample > cost * w {
                    sample
                } else {
                    cost * w + sample * (1.0 - w)
                }
            }
        };
        *state = Some((next, now_ms));
    }
}

/// `e^(-elapsed/τ)`.
fn decay(elapsed_ms: u64) -> f64 {
    (-(elapsed_ms as f64) / COST_DECAY.as_millis() as f64).exp()
}

impl Latency {
    /// The `least-time` cost now, in microseconds; `None` before any sample.
    pub fn cost(&self) -> Option<f64> {
        self.cost.at(now_ms())
    }

    /// A `least-time` sample: a response head's time (HTTP) or a connect's (TCP).
    pub fn observe_cost(&self, d: Duration) {
        self.cost.observe_at(d, now_ms());
    }

    /// A failure or a 5xx: counted as [`FAILURE_COST`].
    pub fn penalize(&self) {
        self.cost.observe_at(FAILURE_COST, now_ms());
    }

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

    /// The all-time bucket counts (not cumulative; the last is +Inf) and the sum of durations.
    pub fn all_time(&self) -> ([u64; BUCKETS.len() + 1], Duration) {
        (self.total.snapshot(), Duration::from_micros(self.total.sum_micros.load(Ordering::Relaxed)))
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

/// A set of latency samples.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: &Latencies) {
        self.samples.extend_from_slice(&other.samples);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q`-quantile (0.0..=1.0) by nearest rank; `None` without samples.
    pub fn quantile(&mut self, q: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let rank = (q.clamp(0.0, 1.0) * self.samples.len() as f64).ceil() as usize;
        Some(self.samples[rank.saturating_sub(1).min(self.samples.len() - 1)])
    }

    /// `min 0.21  p50 0.40  p90 0.80  p99 1.20  max 3.10` in milliseconds.
    pub fn summary_ms(&mut self) -> String {
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        format!(
            "min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(self.quantile(0.0)),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_at_once_comes_down_with_time_and_decays_unused() {
        let e = PeakEwma::default();
        assert_eq!(e.at(0), None, "cold");
        e.observe_at(Duration::from_millis(1), 0);
        e.observe_at(Duration::from_millis(20), 10);
        let cost = e.at(10).expect("cost");
        assert!((cost - 20_000.0).abs() < 1.0, "a slow sample replaces it: {cost}");
        // Fast samples 10 ms apart barely move it (τ = 10 s) ...
        e.observe_at(Duration::from_millis(1), 20);
        assert!(e.at(20).expect("cost") > 19_000.0);
        // ... but unused for 30 s it has decayed by e^-3, and it is tried again.
        let later = e.at(30_020).expect("cost");
        assert!((900.0..1_100.0).contains(&later), "{later}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in (1..=100).rev() {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(l.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }

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
