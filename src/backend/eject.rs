//! Outlier ejection, as Envoy's: a member that fails `eject_consecutive_5xx` times in a row (5xx
//! answers, failed connects, broken exchanges) is taken out of rotation for `eject_base_ms`
//! times its ejection count, at most `eject_max_ms`. It comes back by itself, or early when an
//! active check passes. The count drops by one for each `eject_base_ms` it then stays in, so a
//! member that fails again soon is out longer, one that recovered for good starts afresh.
//!
//! State only: the balancer decides whether the pool can spare the member
//! (`eject_max_percent`), and the backend logs the state lines.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// One member's ejection state.
#[derive(Debug, Default)]
pub struct Ejection {
    /// Failures in a row (reset by a good answer).
    consecutive: AtomicU32,
    /// When the ejection in force ends (ms, [`crate::clock::now_ms`]); 0: not ejected.
    until: AtomicU64,
    history: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    /// The ejection count the next duration multiplies (before healthy spans are taken off).
    times: u32,
    /// When it last came back (ms); 0: never ejected.
    returned_at: u64,
}

/// What ended an ejection, for the state line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// Its time was up.
    Expired,
    /// An active check passed.
    CheckPassed,
}

impl Ejection {
    /// Counts an answer: `failed` for a 5xx or a failed attempt. True when this failure reaches
    /// `threshold` in a row and the member is in rotation: a candidate for ejection.
    pub fn observe(&self, failed: bool, threshold: u32) -> bool {
        if !failed {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        threshold > 0 && n >= threshold && self.until.load(Ordering::Relaxed) == 0
    }

    /// Failures in a row so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Whether it is out at `now`; an ejection whose time is up ends here, once, and says so.
    pub fn check(&self, now: u64) -> (bool, Option<Return>) {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return (false, None);
        }
        if now < until {
            return (true, None);
        }
        if self.until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            // Back since its time ran out, however much later this is noticed.
            self.history.lock().returned_at = until;
            return (false, Some(Return::Expired));
        }
        (self.until.load(Ordering::Relaxed) != 0, None)
    }

    /// Ejects it at `now`: `base` times its ejection count (less one per `base` it stayed in
    /// since it last came back), at most `max`. Returns how long, and the count.
    pub fn eject(&self, now: u64, base: Duration, max: Duration) -> (Duration, u32) {
        let mut h = self.history.lock();
        let base_ms = (base.as_millis() as u64).max(1);
        if h.returned_at != 0 {
            let healthy_spans = now.saturating_sub(h.returned_at) / base_ms;
            h.times = h.times.saturating_sub(u32::try_from(healthy_spans).unwrap_or(u32::MAX));
        }
        h.times = h.times.saturating_add(1);
        let length = base.saturating_mul(h.times).min(max);
        self.until.store(now + (length.as_millis() as u64).max(1), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        (length, h.times)
    }

    /// An active check passed: an ejection in force ends now. True when one did.
    pub fn lift(&self, now: u64) -> bool {
        let until = self.until.swap(0, Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        self.history.lock().returned_at = now;
        true
    }

    /// Whether an ejection is in force (without ending an expired one).
    pub fn is_set(&self) -> bool {
        self.until.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn only_failures_in_a_row_make_a_candidate() {
        let e = Ejection::default();
        for _ in 0..4 {
            assert!(!e.observe(true, 5));
        }
        assert!(!e.observe(false, 5), "a good answer resets the run");
        for _ in 0..4 {
            assert!(!e.observe(true, 5));
        }
        assert!(e.observe(true, 5));
        assert!(!e.observe(true, 0), "0 turns it off");
    }

    #[test]
    fn each_ejection_is_longer_until_the_cap_and_healthy_spans_shorten_the_next() {
        let e = Ejection::default();
        let mut now = 1_000;
        assert_eq!(e.eject(now, BASE, MAX), (BASE, 1));
        assert_eq!(e.check(now + 29_999), (true, None));
        now += 30_000;
        assert_eq!(e.check(now), (false, Some(Return::Expired)), "back by itself, said once");
        assert_eq!(e.check(now), (false, None));
        // Fails again at once: twice as long.
        assert_eq!(e.eject(now + 10, BASE, MAX), (BASE * 2, 2));
        now += 10 + 60_000;
        assert_eq!(e.check(now).1, Some(Return::Expired));
        // Healthy for two spans: the count drops by two before this ejection adds one.
        now += 60_000;
        assert_eq!(e.eject(now, BASE, MAX), (BASE, 1));
        assert!(e.lift(now + 5), "a passing check ends it early");
        assert!(!e.lift(now + 6));
        for _ in 0..20 {
            e.eject(now + 7, BASE, MAX);
        }
        assert_eq!(e.eject(now + 7, BASE, MAX).0, MAX, "capped");
    }
}
