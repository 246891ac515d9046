//! Whether a backend is alive, as state only: rise/fall hysteresis (HAProxy), passive failure
//! counting from live traffic (nginx `max_fails`/`fail_timeout`), and slow start after recovery.
//!
//! A state flips only after `fall` consecutive failed checks (down) or `rise` consecutive good
//! ones (up). Each flip is returned once as a [`Transition`], and the caller logs it (see
//! [`crate::backend::Backend::log_transition`]). Backends start up. The checks themselves run
//! in [`crate::balancer::checker`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::clock::now_ms;
use crate::config::HealthSettings;

/// A state change, to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Went down; the text says after what.
    Down(String),
    /// Came back up.
    Up(String),
    /// Taken out of rotation by outlier ejection (see [`crate::backend::eject`]).
    Ejected(String),
    /// Back in rotation after an ejection.
    Returned(String),
    /// Reached `max_fails` but kept in rotation: no other member of its pool could serve.
    Spared(String),
}

#[derive(Debug, Default)]
struct State {
    successes: u32,
    failures: u32,
    last_result: String,
    last_check: Option<SystemTime>,
    passive: VecDeque<u64>,
}

/// One backend's health.
#[derive(Debug)]
pub struct Health {
    down: AtomicBool,
    /// When set (ms), a passive mark-down ends by itself then (no active checks to lift it).
    down_until: AtomicU64,
    slowstart_from: AtomicU64,
    slowstart_len: AtomicU64,
    state: Mutex<State>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            down: AtomicBool::new(false),
            down_until: AtomicU64::new(0),
            slowstart_from: AtomicU64::new(0),
            slowstart_len: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }
}

impl Health {
    /// Whether traffic may go here.
    pub fn is_up(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let until = self.down_until.load(Ordering::Relaxed);
        if until != 0 && now_ms() >= until {
            self.down_until.store(0, Ordering::Relaxed);
            self.down.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// While slow-starting: (ms elapsed, ramp length).
    pub fn slowstart_fraction(&self, now: u64) -> Option<(u64, u64)> {
        let from = self.slowstart_from.load(Ordering::Relaxed);
        if from == 0 {
            return None;
        }
        let len = self.slowstart_len.load(Ordering::Relaxed);
        let done = now.saturating_sub(from);
        if done >= len {
            self.slowstart_from.store(0, Ordering::Relaxed);
            return None;
        }
        Some((done, len))
    }

    /// Starts ramping the weight up over `len` from now (an operator put the backend back in
    /// rotation); nothing when `len` is zero.
    pub fn begin_slowstart(&self, len: std::time::Duration) {
        if !len.is_zero() {
            self.slowstart_len.store(len.as_millis() as u64, Ordering::Relaxed);
            self.slowstart_from.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The last check's result and when it ran.
    pub fn last_check(&self) -> (String, Option<SystemTime>) {
        let s = self.state.lock();
        (s.last_result.clone(), s.last_check)
    }

    /// Active checks were turned off: a down only they could lift ends now.
    pub fn checks_stopped(&self) {
        if self.down.load(Ordering::Relaxed) && self.down_until.load(Ordering::Relaxed) == 0 {
            self.down_until.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Marks it down at once (tests, operators).
    pub fn force_down(&self, why: &str) {
        self.down.store(true, Ordering::Relaxed);
        self.state.lock().last_result = why.to_string();
    }

    /// Records an active check's result; returns the transition it caused, if any.
    pub fn observe_check(&self, result: Result<(), String>, s: &HealthSettings) -> Option<Transition> {
        let mut st = self.state.lock();
        st.last_check = Some(SystemTime::now());
        let down = self.down.load(Ordering::Relaxed);
        match result {
            Ok(()) => {
                st.last_result = "ok".to_string();
                st.failures = 0;
                st.successes += 1;
                if down && st.successes >= s.rise {
                    st.successes = 0;
                    st.passive.clear();
                    self.down_until.store(0, Ordering::Relaxed);
                    if !s.slowstart.is_zero() {
                        self.slowstart_len.store(s.slowstart.as_millis() as u64, Ordering::Relaxed);
                        self.slowstart_from.store(now_ms(), Ordering::Relaxed);
                    }
                    self.down.store(false, Ordering::Relaxed);
                    return Some(Transition::Up(format!("after {} successful checks", s.rise)));
                }
            }
            Err(why) => {
                st.successes = 0;
                st.failures += 1;
                if !down && st.failures >= s.fall {
                    self.down.store(true, Ordering::Relaxed);
                    self.down_until.store(0, Ordering::Relaxed);
                    let t = Transition::Down(format!("after {} failed checks: {why}", st.failures));
                    st.last_result = why;
                    return Some(t);
                }
                st.last_result = why;
            }
        }
        None
    }

    /// Records a live-traffic failure; after `max_fails` within `fail_window` the backend is
    /// marked down (until checks bring it back, or for `fail_window` when checks are off),
    /// unless it is the `last` member of its pool that could serve: live traffic never takes a
    /// pool's last one out, as nginx never marks its last server down (a pool answering only
    /// 503 helps no one, and a client could cause it). Active checks still can.
    pub fn observe_failure(&self, why: &str, s: &HealthSettings, last: bool) -> Option<Transition> {
        if s.max_fails == 0 {
            return None;
        }
        let now = now_ms();
        let window = s.fail_window.as_millis() as u64;
        let mut st = self.state.lock();
        st.passive.push_back(now);
        while st.passive.front().is_some_and(|&t| now.saturating_sub(t) > window) {
            st.passive.pop_front();
        }
        if self.down.load(Ordering::Relaxed) || st.passive.len() < s.max_fails as usize {
            return None;
        }
        st.passive.clear();
        if last {
            return Some(Transition::Spared(format!(
                "in rotation after {} failures in live traffic within {window} ms ({why}): \
                 no other member of its pool could serve",
                s.max_fails
            )));
        }
        st.successes = 0;
        self.down.store(true, Ordering::Relaxed);
        if !s.enabled {
            self.down_until.store(now + window.max(1), Ordering::Relaxed);
        }
        Some(Transition::Down(format!(
            "after {} failures in live traffic within {window} ms: {why}",
            s.max_fails
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::health;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn fall_and_rise_need_consecutive_results_and_flip_once() {
        let s = HealthSettings { rise: 2, fall: 3, ..health() };
        let h = Health::default();
        let fail = || Err::<(), _>("connection refused".to_string());
        assert_eq!(h.observe_check(fail(), &s), None);
        assert_eq!(h.observe_check(fail(), &s), None);
        assert_eq!(h.observe_check(Ok(()), &s), None, "a success resets the count");
        assert_eq!(h.observe_check(fail(), &s), None);
        assert_eq!(h.observe_check(fail(), &s), None);
        assert_eq!(
            h.observe_check(fail(), &s),
            Some(Transition::Down("after 3 failed checks: connection refused".into()))
        );
        assert!(!h.is_up());
        assert_eq!(h.observe_check(fail(), &s), None, "logged once");
        assert_eq!(h.observe_check(Ok(()), &s), None);
        assert_eq!(h.observe_check(Ok(()), &s), Some(Transition::Up("after 2 successful checks".into())));
        assert!(h.is_up());
    }

    #[test]
    fn turning_checks_off_lifts_a_down_only_checks_could_lift() {
        let s = HealthSettings { fall: 1, ..health() };
        let h = Health::default();
        assert!(h.observe_check(Err("refused".into()), &s).is_some());
        assert!(!h.is_up());
        h.checks_stopped();
        assert!(h.is_up());
    }

    #[test]
    fn passive_failures_within_the_window_mark_down() {
        let s = HealthSettings { max_fails: 3, fail_window: Duration::from_secs(60), ..health() };
        let h = Health::default();
        assert_eq!(h.observe_failure("refused", &s, false), None);
        assert_eq!(h.observe_failure("refused", &s, false), None);
        assert!(matches!(h.observe_failure("refused", &s, false), Some(Transition::Down(_))));
        // A pool's last member reaches the count but stays: live traffic never empties a pool.
        let last = Health::default();
        assert_eq!(last.observe_failure("refused", &s, true), None);
        assert_eq!(last.observe_failure("refused", &s, true), None);
        assert!(matches!(last.observe_failure("refused", &s, true), Some(Transition::Spared(_))));
        assert!(last.is_up());
        assert!(!h.is_up());
        // Active checks bring it back.
        assert_eq!(h.observe_check(Ok(()), &s), None);
        assert!(matches!(h.observe_check(Ok(()), &s), Some(Transition::Up(_))));
    }

    #[test]
    fn without_checks_a_passive_mark_down_expires() {
        let s = HealthSettings {
            enabled: false,
            max_fails: 1,
            fail_window: Duration::from_millis(30),
            ..health()
        };
        let h = Health::default();
        assert!(h.observe_failure("refused", &s, false).is_some());
        assert!(!h.is_up());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !h.is_up() {
            assert!(std::time::Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
    }
}
