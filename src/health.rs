//! Whether backends are alive: per-backend state with rise/fall hysteresis (HAProxy), passive
//! failure counting from live traffic (nginx `max_fails`/`fail_timeout`), slow start after
//! recovery, and the checker thread.
//!
//! A state flips only after `fall` consecutive failed checks (down) or `rise` consecutive good
//! ones (up), and each flip is logged once: warn for down, info for up, with the reason.
//! Backends start up. The checker waits on its stop channel between rounds, so shutdown is
//! immediate.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use crate::backend::{now_ms, Backend};
use crate::balancer::Balancer;
use crate::config::{HealthSettings, Mode};
use crate::h1::{HeadError, Wire, MAX_HEADERS};

/// A state change, to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Went down; the text says after what.
    Down(String),
    /// Came back up.
    Up(String),
}

impl Transition {
    /// Logs it once: warn for down, info for up.
    pub fn log(&self, b: &Backend) {
        match self {
            Transition::Down(why) => log::warn!("{} {} DOWN {why}", b.name, b.addr),
            Transition::Up(why) => log::info!("{} {} UP {why}", b.name, b.addr),
        }
    }
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

    /// The last check's result and when it ran.
    pub fn last_check(&self) -> (String, Option<SystemTime>) {
        let s = self.state.lock();
        (s.last_result.clone(), s.last_check)
    }

    /// Active checks were turned off: a down only they could lift ends now.
    pub fn checks_stopped(&self) {
        if self.down.load(Ordering::Relaxed) && self.down_until.load(Ordering::Relaxed) == 0 {
            self.down_until.store(now_ms().max(1), Ordering::Relaxed);
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
                        self.slowstart_from.store(now_ms().max(1), Ordering::Relaxed);
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
    /// marked down (until checks bring it back, or for `fail_window` when checks are off).
    pub fn observe_failure(&self, why: &str, s: &HealthSettings) -> Option<Transition> {
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

/// Checks one backend once.
pub fn check(addr: SocketAddr, s: &HealthSettings) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&addr, s.timeout).map_err(|e| crate::upstream::describe(&e))?;
    if s.mode == Mode::Tcp {
        return Ok(());
    }
    let _ = stream.set_read_timeout(Some(s.timeout));
    let _ = stream.set_write_timeout(Some(s.timeout));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lbproxy-health\r\nConnection: close\r\n\r\n",
        s.path
    );
    (&stream).write_all(request.as_bytes()).map_err(|e| crate::upstream::describe(&e))?;
    let status = Wire::new(&stream).read_head(16 * 1024, |buf| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => Ok(Some((len, resp.code.unwrap_or(0)))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(format!("invalid response: {e}")),
        }
    });
    match status {
        Ok(status) if (200..400).contains(&status) => Ok(()),
        Ok(status) => Err(format!("status {status}")),
        Err(HeadError::Closed) => Err("connection closed before a response".to_string()),
        Err(HeadError::Io(e)) => Err(crate::upstream::describe(&e)),
        Err(HeadError::Invalid(why)) => Err(why),
    }
}

/// Starts the checker: every `interval` (plus up to 10% jitter) it checks every member in
/// parallel and logs transitions. Returns when `stop` yields or disconnects.
pub fn spawn_checker(balancer: Arc<Balancer>, stop: Receiver<()>) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("health".into()).spawn(move || loop {
        let s = balancer.health_settings();
        if s.enabled {
            let members = balancer.members();
            thread::scope(|scope| {
                for b in members.iter() {
                    let (s, balancer) = (&s, &balancer);
                    let spawned =
                        thread::Builder::new().stack_size(64 * 1024).spawn_scoped(scope, move || {
                            if let Some(t) = b.health.observe_check(check(b.addr, s), s) {
                                t.log(b);
                                if matches!(t, Transition::Up(_)) {
                                    balancer.wake();
                                }
                            }
                        });
                    if let Err(e) = spawned {
                        log::warn!("health check of {}: cannot start a thread: {e}", b.name);
                    }
                }
            });
        }
        let jitter = Duration::from_millis(fastrand::u64(..=(s.interval.as_millis() as u64 / 10)));
        match stop.recv_timeout(s.interval + jitter) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::health;

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
        assert_eq!(h.observe_failure("refused", &s), None);
        assert_eq!(h.observe_failure("refused", &s), None);
        assert!(matches!(h.observe_failure("refused", &s), Some(Transition::Down(_))));
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
        assert!(h.observe_failure("refused", &s).is_some());
        assert!(!h.is_up());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !h.is_up() {
            assert!(std::time::Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn slow_start_ramps_the_weight_after_recovery_only() {
        let s = HealthSettings { rise: 1, fall: 1, slowstart: Duration::from_secs(100), ..health() };
        let b = crate::backend::Backend::new("a".into(), "a".into(), ([127, 0, 0, 1], 1).into(), 2, 0);
        assert_eq!(b.effective_weight(now_ms()), 2000, "full weight at start");
        b.health.observe_check(Err("x".into()), &s);
        b.health.observe_check(Ok(()), &s);
        let w = b.effective_weight(now_ms());
        assert!((1..200).contains(&w), "near zero right after recovery: {w}");
        assert_eq!(b.effective_weight(now_ms() + 50_000) / 100, 10, "half way at half time");
        assert_eq!(b.effective_weight(now_ms() + 200_000), 2000);
    }
}
