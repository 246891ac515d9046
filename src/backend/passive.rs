//! What live traffic says about a backend: failures counted for passive health (nginx's
//! `max_fails`), the end of an outlier ejection, and the state lines both write.

use std::sync::atomic::Ordering;

use super::eject::Return;
use super::health::Transition;
use super::Backend;
use crate::clock::now_ms;
use crate::config::HealthSettings;
use crate::error::{Cause, Failure, Phase};

impl Backend {
    /// The one rule for passive health: whether a failure on live traffic counts against this
    /// backend. Only its own failures do, never ours (a descriptor shortage), the client's, or
    /// finding no backend at all ([`Failure::counts_against_backend`]). Each one counts in
    /// `failures`. One in connecting or in an HTTP exchange also counts towards `max_fails`
    /// within `fail_window` and can mark it down (as nginx counts `max_fails`); an error once
    /// bytes flow (a TCP relay's, a response body's) does not, and a relay's idle timeout is
    /// nobody's failure. Returns whether it counted.
    /// `last`: no other member of its pool could serve (it is not marked down then).
    pub fn record_failure(&self, f: &Failure, s: &HealthSettings, last: bool) -> bool {
        if !f.counts_against_backend() {
            return false;
        }
        match f.phase {
            Phase::Relay if matches!(f.cause, Cause::Timeout) => return false,
            Phase::Relay | Phase::Body => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            _ => {}
        }
        self.record_fail(&f.cause.to_string(), s, last);
        true
    }

    /// A `5xx` answer, when `observe_5xx` counts it as a failure (`last` as for
    /// [`Backend::record_failure`]).
    pub fn record_status(&self, status: u16, s: &HealthSettings, last: bool) {
        if status >= 500 && s.observe_5xx {
            self.record_fail(&format!("status {status}"), s, last);
        }
    }

    fn record_fail(&self, why: &str, s: &HealthSettings, last: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.health.observe_failure(why, s, last) {
            self.log_transition(&t);
        }
    }

    /// Logs a state change once, with the reason: warn for down and ejected, info for up and
    /// back; the dashboard gets it as a state event.
    pub fn log_transition(&self, t: &Transition) {
        let (word, state, why) = match t {
            Transition::Down(why) => ("DOWN", "down", why),
            Transition::Up(why) => ("UP", "up", why),
            Transition::Ejected(why) => ("EJECTED", "ejected", why),
            Transition::Returned(why) => ("BACK", self.state_text(), why),
            Transition::Spared(why) => ("STAYS", self.state_text(), why),
        };
        let line = format!("{} {} {word} {why}", self.name, self.addr);
        match t {
            Transition::Down(_) | Transition::Ejected(_) | Transition::Spared(_) => log::warn!("{line}"),
            Transition::Up(_) | Transition::Returned(_) => log::info!("{line}"),
        }
        crate::events::state(&self.name, state, &line);
    }

    /// Whether an ejection keeps it out of rotation now. One whose time is up ends here, and
    /// its line is logged once.
    pub fn is_ejected(&self) -> bool {
        if !self.ejection.is_set() {
            return false;
        }
        let (out, back) = self.ejection.check(now_ms());
        if back == Some(Return::Expired) {
            self.log_transition(&Transition::Returned("after its ejection ran out".into()));
        }
        out
    }

    /// A passing active check ends an ejection early.
    pub fn check_passed(&self) {
        if self.ejection.lift(now_ms()) {
            self.log_transition(&Transition::Returned("after a passing check ended its ejection".into()));
        }
    }
}
