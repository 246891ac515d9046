//! What a failed attempt may do next, in both modes, as nginx's `proxy_next_upstream error`
//! with `non_idempotent` off: a connect failure always moves on to the next backend (nothing
//! was sent); a request goes again only when nothing of the response reached the client and
//! nothing of the request body was consumed, and it is idempotent (or carries an
//! `Idempotency-Key`). TCP mode's attempts are connects only.

use crate::error::{Cause, Failure, Party, Phase};

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A pooled connection turned out stale: send again on a fresh connection.
    Fresh,
    /// The backend failed: try the next best one.
    NextBackend,
    /// Answer the client with the failure.
    GiveUp,
}

/// Decides after `f`. `reused`: the attempt used a pooled connection. `replayable`: the
/// request is idempotent, none of its body was consumed and nothing (not even a 1xx) went to
/// the client.
pub fn after(f: &Failure, reused: bool, replayable: bool) -> Retry {
    let lost_before_response =
        matches!((f.phase, &f.cause), (Phase::Send, _) | (Phase::Head, Cause::Closed(_)));
    match f.party {
        Party::Backend if f.phase == Phase::Connect => Retry::NextBackend,
        Party::Backend if lost_before_response && replayable && reused => Retry::Fresh,
        Party::Backend if lost_before_response && replayable => Retry::NextBackend,
        _ => Retry::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn backend(phase: Phase, cause: Cause) -> Failure {
        Failure::at("a", Party::Backend, phase, cause)
    }

    fn reset() -> Cause {
        Cause::Io(io::Error::from(io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn connect_failures_always_move_on() {
        let refused =
            || backend(Phase::Connect, Cause::Io(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(after(&refused(), false, false), Retry::NextBackend, "nothing was sent, POST too");
        assert_eq!(after(&refused(), false, true), Retry::NextBackend);
    }

    #[test]
    fn a_stale_pooled_connection_is_replaced_not_blamed() {
        assert_eq!(after(&backend(Phase::Send, reset()), true, true), Retry::Fresh);
        assert_eq!(
            after(&backend(Phase::Head, Cause::Closed("end of stream".into())), true, true),
            Retry::Fresh
        );
        assert_eq!(
            after(&backend(Phase::Head, Cause::Closed("reset".into())), false, true),
            Retry::NextBackend
        );
    }

    #[test]
    fn what_cannot_be_replayed_is_answered() {
        // Not idempotent, or its body already consumed.
        assert_eq!(after(&backend(Phase::Send, reset()), true, false), Retry::GiveUp);
        assert_eq!(after(&backend(Phase::Head, Cause::Closed("eof".into())), false, false), Retry::GiveUp);
        // Some of the response arrived, or it was too slow, or invalid: never replayed.
        assert_eq!(after(&backend(Phase::Head, Cause::Timeout), false, true), Retry::GiveUp);
        assert_eq!(after(&backend(Phase::Head, Cause::Invalid("x".into())), false, true), Retry::GiveUp);
        assert_eq!(after(&backend(Phase::Head, reset()), false, true), Retry::GiveUp, "reset mid-head");
        assert_eq!(after(&backend(Phase::Body, reset()), false, true), Retry::GiveUp);
        // Ours or the client's: never another backend's business.
        let local =
            Failure::at("a", Party::Local, Phase::Connect, Cause::Io(io::Error::from_raw_os_error(24)));
        assert_eq!(after(&local, false, true), Retry::GiveUp);
        let client = Failure::new(Party::Client, Phase::Send, reset());
        assert_eq!(after(&client, false, true), Retry::GiveUp);
    }
}
