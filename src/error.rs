//! The two error models: [`Error`] for the process (configuration, listening, logging,
//! resources at start), and [`Failure`] for one proxied connection or request in either mode,
//! from a request head refused before any backend is asked to a relay cut: who failed, in which
//! phase, and why. From a `Failure` alone come the client's answer ([`Failure::answer`]: 400,
//! 405, 408, 413, 414, 417, 431, 501, 502, 503, 504, 505 or a close), whether it counts against the
//! backend, and the log wording, each decided in one place.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

/// What stops the proxy (or a companion) from starting or running.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The configuration has one or more problems (TLS material found bad at start); each names
    /// its file:line (or flag) and key.
    Config(Vec<ConfigError>),
    /// The listening socket could not be set up.
    Listen { addr: SocketAddr, source: io::Error },
    /// A log file could not be opened.
    LogFile { path: String, source: io::Error },
    /// A local resource ran out or a thread could not be started.
    Resource(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(errors) => {
                write!(f, "configuration has {} error(s)", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            Error::Listen { addr, source } if source.kind() == io::ErrorKind::AddrInUse => write!(
                f,
                "listen on {addr}: {source}: is another proxy_server (or dummy_server) running there? \
                 Pick another address with --listen (or [proxy] listen; the admin's with --admin)"
            ),
            Error::Listen { addr, source } => write!(f, "listen on {addr}: {source}"),
            Error::LogFile { path, source } => write!(f, "log file {path}: {source}"),
            Error::Resource(e) => write!(f, "resource: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Listen { source, .. } | Error::LogFile { source, .. } => Some(source),
            Error::Resource(e) => Some(e),
            Error::Config(_) => None,
        }
    }
}

/// Why no backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No backend is up (or every one that is was already tried).
    NoneUp { tried: usize },
    /// Every available backend stayed at `max_conns` for the whole queue timeout.
    AllFull,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoneUp { tried: 0 } => f.write_str("no backend is up"),
            Unavailable::NoneUp { tried } => write!(f, "no backend available ({tried} tried)"),
            Unavailable::AllFull => f.write_str("every backend is at max_conns (queue timeout)"),
        }
    }
}

/// Why a request is refused by rule, and with which status (400, 405, 413, 414, 417, 431, 505).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// A short reason, sent as the body and logged.
    pub why: &'static str,
}

impl Rejection {
    /// A head that outgrew `max_head_bytes` (431, RFC 6585).
    pub const HEAD_TOO_LARGE: Rejection = Rejection::new(431, "request head too large");

    /// A request line that alone outgrew `max_head_bytes` (414, as nginx answers it).
    pub const URI_TOO_LONG: Rejection = Rejection::new(414, "request line too long");

    /// A head that outgrew `max_head_bytes`, `buffered` so far: 414 while its request line has
    /// not ended (empty lines before it aside), else 431.
    pub fn too_large(buffered: &[u8]) -> Rejection {
        let line = buffered.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buffered.len());
        if buffered[line..].contains(&b'\n') {
            Rejection::HEAD_TOO_LARGE
        } else {
            Rejection::URI_TOO_LONG
        }
    }

    pub const fn new(status: u16, why: &'static str) -> Rejection {
        Rejection { status, why }
    }
}

/// Who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The client sent something wrong, went away, or was too slow.
    Client,
    /// A backend refused, reset, timed out or answered wrongly (or none could be had).
    Backend,
    /// This host: descriptors, ports, memory. Never counted against a backend.
    Local,
}

/// The phase of an exchange in which it failed. TCP mode knows `Pick`, `Connect` and `Relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the client's request head: nothing has gone to a backend.
    RequestHead,
    /// Reading the client's request body.
    Request,
    /// Choosing a backend.
    Pick,
    /// Connecting to the chosen backend.
    Connect,
    /// Sending the request head or body to the backend.
    Send,
    /// Waiting for and reading the response head.
    Head,
    /// Streaming the response body: the client already has the head.
    Body,
    /// Relaying bytes both ways (TCP mode, tunnels).
    Relay,
}

/// What went wrong.
#[derive(Debug)]
pub enum Cause {
    /// A socket error.
    Io(io::Error),
    /// A phase's time limit passed.
    Timeout,
    /// The peer closed (FIN or reset) before sending anything of what was expected.
    Closed(String),
    /// The peer's bytes break the protocol (the parser's words).
    Invalid(String),
    /// A request refused by rule (smuggling, version, method, size): the status to answer with.
    Rejected(Rejection),
    /// A body larger than allowed.
    BodyTooLarge(String),
    /// No backend could be had.
    Unavailable(Unavailable),
    /// The backend answered a status `[http] retry_on` names, and another member gets the
    /// request.
    Status(u16),
    /// The proxy cut the connection itself: the drain deadline passed, or a second Ctrl-C.
    Cut,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Io(e) => f.write_str(&crate::net::describe(e)),
            Cause::Timeout => f.write_str("timed out"),
            Cause::Closed(how) => write!(f, "closed ({how})"),
            Cause::Invalid(why) => f.write_str(why),
            Cause::Rejected(r) => f.write_str(r.why),
            Cause::BodyTooLarge(why) => f.write_str(why),
            Cause::Unavailable(why) => write!(f, "{why}"),
            Cause::Status(status) => write!(f, "answered {status} (retry_on)"),
            Cause::Cut => f.write_str("cut by the proxy's stop"),
        }
    }
}

/// How the proxy answers the client after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An error response with this status (HTTP mode).
    Status(u16),
    /// Close the connection without a word: TCP mode, a client gone, or a response under way
    /// (the client sees a truncated body, never one that looks complete).
    Close,
}

/// One failed connection or request: who, when, why, and which backend (if any).
#[derive(Debug)]
pub struct Failure {
    pub party: Party,
    pub phase: Phase,
    pub cause: Cause,
    /// The backend's name, when one was involved.
    pub backend: Option<String>,
}

impl Failure {
    /// A failure not tied to a backend.
    pub fn new(party: Party, phase: Phase, cause: Cause) -> Failure {
        Failure { party, phase, cause, backend: None }
    }

    /// A request head refused (or timed out) before any backend was asked: the client's.
    pub fn head(cause: Cause) -> Failure {
        Failure::new(Party::Client, Phase::RequestHead, cause)
    }

    /// A failure on the way to or from `backend`.
    pub fn at(backend: &str, party: Party, phase: Phase, cause: Cause) -> Failure {
        Failure { party, phase, cause, backend: Some(backend.to_string()) }
    }

    /// The proxy's own cut (the drain deadline, a second Ctrl-C) of an exchange with
    /// `backend` in `phase`: no peer's failure, so never retried nor counted.
    pub fn cut(backend: &str, phase: Phase) -> Failure {
        Failure::at(backend, Party::Local, phase, Cause::Cut)
    }

    /// What the client gets, as nginx answers the same cases.
    pub fn answer(&self) -> Answer {
        use {Cause as C, Party as P, Phase as Ph};
        match (self.party, self.phase, &self.cause) {
            (_, Ph::Body | Ph::Relay, _) => Answer::Close,
            (P::Client, Ph::RequestHead | Ph::Request, C::Invalid(_)) => Answer::Status(400),
            (P::Client, Ph::RequestHead | Ph::Request, C::Timeout) => Answer::Status(408),
            (P::Client, Ph::RequestHead | Ph::Request, C::Rejected(r)) => Answer::Status(r.status),
            (P::Client, _, C::BodyTooLarge(_)) => Answer::Status(413),
            (P::Client, _, _) => Answer::Close,
            (P::Local, _, _) => Answer::Status(503),
            (P::Backend, _, C::Unavailable(_)) => Answer::Status(503),
            (P::Backend, _, C::Status(status)) => Answer::Status(*status),
            (P::Backend, Ph::Connect | Ph::Head, C::Timeout) => Answer::Status(504),
            (P::Backend, _, _) => Answer::Status(502),
        }
    }

    /// Whether it counts against the backend (passive health): only the backend's own failures,
    /// never ours, the client's, or finding no backend at all.
    pub fn counts_against_backend(&self) -> bool {
        // A status retried is recorded as a status (`Balancer::record_status`), not again here.
        self.party == Party::Backend
            && self.backend.is_some()
            && !matches!(self.cause, Cause::Unavailable(_) | Cause::Status(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::RequestHead => "request head",
            Phase::Request => "request body",
            Phase::Pick => "choosing a backend",
            Phase::Connect => "connect",
            Phase::Send => "sending the request",
            Phase::Head => "response head",
            Phase::Body => "response body",
            Phase::Relay => "relay",
        };
        match (self.party, &self.backend) {
            (_, _) if matches!(self.cause, Cause::Unavailable(_)) => write!(f, "{}", self.cause),
            (Party::Client, _)
                if self.phase == Phase::RequestHead && matches!(self.cause, Cause::Timeout) =>
            {
                f.write_str("client: request head not complete within header_ms")
            }
            (Party::Client, _) => write!(f, "client: {phase}: {}", self.cause),
            (Party::Local, Some(b)) if matches!(self.cause, Cause::Cut) => {
                write!(f, "{phase} to {b}: {}", self.cause)
            }
            (Party::Local, Some(b)) => write!(f, "{phase} to {b}: local resource: {}", self.cause),
            (Party::Local, None) => write!(f, "{phase}: local resource: {}", self.cause),
            (Party::Backend, Some(b)) => write!(f, "{b}: {phase}: {}", self.cause),
            (Party::Backend, None) => write!(f, "backend: {phase}: {}", self.cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(code: i32) -> Cause {
        Cause::Io(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn answers_follow_nginx() {
        let table = [
            (Failure::new(Party::Client, Phase::Request, Cause::Invalid("bad".into())), Answer::Status(400)),
            (Failure::new(Party::Client, Phase::Request, Cause::Timeout), Answer::Status(408)),
            (Failure::head(Cause::Timeout), Answer::Status(408)),
            (Failure::head(Cause::Invalid("bad".into())), Answer::Status(400)),
            (Failure::head(Cause::Rejected(Rejection::HEAD_TOO_LARGE)), Answer::Status(431)),
            (Failure::head(Cause::Rejected(Rejection::too_large(b"GET /aaaa"))), Answer::Status(414)),
            (Failure::head(Cause::Rejected(Rejection::too_large(b"\r\nGET /aaa"))), Answer::Status(414)),
            (
                Failure::head(Cause::Rejected(Rejection::too_large(b"GET / HTTP/1.1\r\nX: a"))),
                Answer::Status(431),
            ),
            (Failure::head(Cause::Rejected(Rejection::new(505, "v"))), Answer::Status(505)),
            (
                Failure::new(Party::Client, Phase::Send, Cause::BodyTooLarge("big".into())),
                Answer::Status(413),
            ),
            (Failure::new(Party::Client, Phase::Send, io(libc::ECONNRESET)), Answer::Close),
            (Failure::at("a", Party::Local, Phase::Connect, io(libc::EMFILE)), Answer::Status(503)),
            (
                Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(Unavailable::AllFull)),
                Answer::Status(503),
            ),
            (Failure::at("a", Party::Backend, Phase::Connect, io(libc::ECONNREFUSED)), Answer::Status(502)),
            (Failure::at("a", Party::Backend, Phase::Head, Cause::Timeout), Answer::Status(504)),
            (Failure::at("a", Party::Backend, Phase::Head, Cause::Invalid("x".into())), Answer::Status(502)),
            (Failure::at("a", Party::Backend, Phase::Body, io(libc::ECONNRESET)), Answer::Close),
            (Failure::at("a", Party::Backend, Phase::Relay, Cause::Timeout), Answer::Close),
        ];
        for (failure, answer) in table {
            assert_eq!(failure.answer(), answer, "{failure}");
        }
    }

    #[test]
    fn only_a_backends_own_failures_count_against_it() {
        assert!(
            Failure::at("a", Party::Backend, Phase::Connect, io(libc::ECONNREFUSED)).counts_against_backend()
        );
        assert!(!Failure::at("a", Party::Local, Phase::Connect, io(libc::EMFILE)).counts_against_backend());
        assert!(!Failure::at("a", Party::Client, Phase::Send, io(libc::EPIPE)).counts_against_backend());
        let none =
            Failure::new(Party::Backend, Phase::Pick, Cause::Unavailable(Unavailable::NoneUp { tried: 0 }));
        assert!(!none.counts_against_backend());
        assert_eq!(none.to_string(), "no backend is up");
        assert_eq!(
            Failure::at("app1", Party::Backend, Phase::Connect, io(libc::ECONNREFUSED)).to_string(),
            "app1: connect: connection refused"
        );
    }

    #[test]
    fn a_refused_head_reads_as_the_clients_and_never_counts_against_a_backend() {
        let slow = Failure::head(Cause::Timeout);
        assert_eq!(slow.to_string(), "client: request head not complete within header_ms");
        let smuggled =
            Failure::head(Cause::Rejected(Rejection::new(400, "both Content-Length and Transfer-Encoding")));
        assert_eq!(smuggled.to_string(), "client: request head: both Content-Length and Transfer-Encoding");
        assert!(!slow.counts_against_backend() && !smuggled.counts_against_backend());
        // A body read that times out is the body's, with its own wording.
        let body = Failure::new(Party::Client, Phase::Request, Cause::Timeout);
        assert_eq!(
            (body.to_string().as_str(), body.answer()),
            ("client: request body: timed out", Answer::Status(408))
        );
    }
}
