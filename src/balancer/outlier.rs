//! What live traffic's results do to a pool: each failure or status is recorded against its
//! member (passive health, [`Backend::record_failure`]), and a member failing
//! `eject_consecutive_5xx` times in a row is ejected, unless `eject_max_percent` of the pool is
//! out already (Envoy's outlier detection; see [`crate::backend::eject`]).

use super::Balancer;
use crate::backend::health::Transition;
use crate::backend::{now_ms, Backend};
use crate::error::{Failure, Phase};
use crate::logging::{held_back, RateLimit};

/// "Not ejected: the pool's share is out" is said at most once a second.
static CAPPED: RateLimit = RateLimit::new();

impl Balancer {
    /// Records `f` against `b` under the current health settings ([`Backend::record_failure`]
    /// is the rule); returns whether it counted. A failure before the response (connect, send,
    /// response head) also counts towards ejection.
    pub fn record_failure(&self, b: &Backend, f: &Failure) -> bool {
        let last = !self.others_could_serve(b);
        let (counted, threshold) = {
            let s = self.health.lock();
            (b.record_failure(f, &s, last), s.eject_consecutive_5xx)
        };
        let before_response = !matches!(f.phase, Phase::Relay | Phase::Body);
        if counted && before_response && b.ejection().observe(true, threshold) {
            self.eject(b, &f.cause.to_string());
        }
        counted
    }

    /// Records a response status against `b` ([`Backend::record_status`]): a 5xx extends its
    /// run of failures (and may eject it), anything else ends the run.
    pub fn record_status(&self, b: &Backend, status: u16) {
        if status < 500 {
            // The common case needs no settings, so it takes no lock: the run just ends.
            b.ejection().observe(false, 0);
            return;
        }
        let last = !self.others_could_serve(b);
        let threshold = {
            let s = self.health.lock();
            b.record_status(status, &s, last);
            s.eject_consecutive_5xx
        };
        if b.ejection().observe(status >= 500, threshold) {
            self.eject(b, &format!("status {status}"));
        }
    }

    /// Whether a member other than `b` could take a request (in service, up, not ejected).
    fn others_could_serve(&self, b: &Backend) -> bool {
        let state = self.core.state.lock();
        state.members.iter().any(|m| !std::ptr::eq(&**m, b) && m.is_available())
    }

    /// A connection made (tcp mode's success): ends `b`'s run of failures.
    pub fn record_success(&self, b: &Backend) {
        b.ejection().observe(false, 0);
    }

    /// Ejects `b`, which just failed `eject_consecutive_5xx` times in a row (the last: `why`),
    /// unless the pool already has its `eject_max_percent` out. Decided under the member lock,
    /// so two members failing at once cannot both take the last place.
    fn eject(&self, b: &Backend, why: &str) {
        let s = self.health.lock().clone();
        let state = self.core.state.lock();
        if b.ejection().is_set() {
            return;
        }
        let members = state.members.len();
        let out = state.members.iter().filter(|m| m.is_ejected()).count();
        let cap = members * s.eject_max_percent as usize / 100;
        // Nor the last member that could serve (the others down or in maintenance): a pool
        // with none answers nothing but 503 until the ejection ends.
        let others = state.members.iter().any(|m| !std::ptr::eq(&**m, b) && m.is_available());
        if out >= cap || !others {
            drop(state);
            if let Some(n) = CAPPED.check() {
                let why_not = if others {
                    format!("{out} of {members} already ejected (eject_max_percent {})", s.eject_max_percent)
                } else {
                    "no other member could serve".to_string()
                };
                log::warn!(
                    "{} {} failed {} times in a row (last: {why}) but stays: {why_not}{}",
                    b.name(),
                    b.addr(),
                    s.eject_consecutive_5xx,
                    held_back(n)
                );
            }
            return;
        }
        let (length, times) = b.ejection().eject(now_ms(), s.eject_base, s.eject_max);
        drop(state);
        let nth = if times == 1 { String::new() } else { format!(", ejection {times}") };
        let n = s.eject_consecutive_5xx;
        let failures = if n == 1 { "1 failure".to_string() } else { format!("{n} failures in a row") };
        // Envoy's rule: a passing active check ends an ejection early; the line says so.
        let early = if s.enabled { " or until a health check passes" } else { "" };
        b.log_transition(&Transition::Ejected(format!(
            "after {failures} (last: {why}); out for {} ms{early}{nth}",
            length.as_millis()
        )));
    }
}
