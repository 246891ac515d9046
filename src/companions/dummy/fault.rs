//! The fault lab: ways the dummy misbehaves on purpose, so the proxy's handling of broken
//! backends can be watched and tested. HTTP faults are chosen per request (`?fault=MODE`);
//! line-mode faults per server (`--fault reset-after=N`). The catalogue here is the single
//! source for the names, `--help` and the 400 that lists them.

use std::io::{self, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use super::reply::{Framing, Reply};

/// How long the dummy waits before a stray response or a reset that follows bytes it wrote:
/// long enough for those bytes to reach the peer first (a reset discards unsent data), and for
/// a proxy to have finished the exchange and pooled the connection.
pub const PAUSE: Duration = Duration::from_millis(50);

/// The pause between body bytes for `drip`.
pub const DRIP_EVERY: Duration = Duration::from_millis(10);

/// `slow-head`'s wait when the request gives no `delay_ms`.
pub const SLOW_HEAD_DEFAULT: Duration = Duration::from_millis(2000);

/// How many bytes `bad-length` promises beyond those it sends.
pub const BAD_LENGTH_SHORT: u64 = 100;

/// What `garbage` sends: not an HTTP status line.
pub const GARBAGE: &[u8] = b"GARBAGE \x00\x01\x02\xff not HTTP at all\r\n\r\n";

/// A per-request HTTP fault (`?fault=MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFault {
    /// Reset (SO_LINGER 0, close) without answering.
    ResetBefore,
    /// Close (FIN) without answering.
    CloseBefore,
    /// Head with the full Content-Length, half the body, then reset.
    ResetMid,
    /// A complete response, then 50 ms later a second, unrequested one on the same connection.
    Extra,
    /// The body one byte per 10 ms.
    Drip,
    /// Nothing until `delay_ms` (default 2000) has passed, then the response.
    SlowHead,
    /// A Content-Length larger than the body sent, then close.
    BadLength,
    /// Bytes that are not HTTP, then close.
    Garbage,
    /// The body, then at once (same write) a second complete response past Content-Length.
    Overlong,
}

/// Every HTTP fault with its name, in the order [`HELP`] documents them.
pub const HTTP_FAULTS: [(HttpFault, &str); 9] = [
    (HttpFault::ResetBefore, "reset-before"),
    (HttpFault::CloseBefore, "close-before"),
    (HttpFault::ResetMid, "reset-mid"),
    (HttpFault::Extra, "extra"),
    (HttpFault::Drip, "drip"),
    (HttpFault::SlowHead, "slow-head"),
    (HttpFault::BadLength, "bad-length"),
    (HttpFault::Garbage, "garbage"),
    (HttpFault::Overlong, "overlong"),
];

/// The fault lab's part of `dummy_server --help` (a unit test checks it names every mode).
pub const HELP: &str = "\
Fault lab, HTTP: add fault=MODE to a request's query (GET /x?fault=extra) and the dummy
misbehaves on that request, logging it at info (`fault extra on GET /x from ...`):
  reset-before  RST (SO_LINGER 0, then close) without a response
  close-before  FIN without a response
  reset-mid     head with the full Content-Length, half the body, 50 ms, then RST
  extra         the response, then 50 ms later a stray second response on the same
                connection (`HTTP/1.1 200 OK` ... `STRAY from NAME`); on HEAD too: the
                head, then the stray response (the \"body on HEAD\" attack)
  drip          the body at one byte per 10 ms
  slow-head     nothing for delay_ms (query parameter, default 2000), then the response
  bad-length    Content-Length 100 more than the body sent, then FIN
  garbage       bytes that are not HTTP, then FIN
  overlong      the body and a stray response in the same write (bytes past
                Content-Length); the connection stays open
Faults frame bodies with Content-Length (chunked=1 is ignored); bytes=N and status=N apply.
An unknown mode gets a 400 that lists these.

Fault lab, lines (TCP echo): --fault NAME=VALUE applies to every line connection:
  reset-after=N  RST right after echoing N lines (0: when the first line arrives)";

impl HttpFault {
    /// The fault named `name`, if there is one.
    pub fn parse(name: &str) -> Option<HttpFault> {
        HTTP_FAULTS.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// The fault's name as written in `?fault=`.
    pub fn name(self) -> &'static str {
        HTTP_FAULTS.iter().find(|(f, _)| *f == self).map_or("?", |(_, n)| n)
    }

    /// The names of all HTTP faults, comma-separated.
    pub fn names() -> String {
        HTTP_FAULTS.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
    }
}
/// What the connection does after a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request (if the request allowed keep-alive).
    Continue,
    /// Drop the connection (it may already be set to reset).
    Close,
}

/// Carries out `fault` for a request whose ordinary answer is `reply`. `delay` is the
/// request's `delay_ms`, if any. The stray response names `served_by`.
pub fn run(
    fault: HttpFault,
    out: &mut TcpStream,
    reply: &Reply,
    delay: Option<Duration>,
) -> io::Result<After> {
    let len = reply.body.len();
    let body_to =
        |out: &mut dyn Write| if reply.head_only { Ok(()) } else { reply.body.write_range(out, 0, len) };
    let keep = if reply.keep_alive { After::Continue } else { After::Close };
    match fault {
        HttpFault::ResetBefore => {
            reset(out);
            Ok(After::Close)
        }
        HttpFault::CloseBefore => Ok(After::Close),
        HttpFault::ResetMid => {
            out.write_all(&reply.head(Framing::Length(len)))?;
            if !reply.head_only {
                reply.body.write_range(out, 0, len / 2)?;
            }
            thread::sleep(PAUSE);
            reset(out);
            Ok(After::Close)
        }
        HttpFault::Extra => {
            reply.write(out)?;
            thread::sleep(PAUSE);
            out.write_all(&stray(&reply.served_by))?;
            // Said once written, so a watcher (or a test) knows the stray bytes are on the wire.
            log::info!("fault extra: stray response written");
            Ok(keep)
        }
        HttpFault::Drip => {
            out.write_all(&reply.head(Framing::Length(len)))?;
            if !reply.head_only {
                for i in 0..len {
                    thread::sleep(DRIP_EVERY);
                    reply.body.write_range(out, i, i + 1)?;
                }
            }
            Ok(keep)
        }
        HttpFault::SlowHead => {
            thread::sleep(delay.unwrap_or(SLOW_HEAD_DEFAULT));
            reply.write(out)?;
            Ok(keep)
        }
        HttpFault::BadLength => {
            out.write_all(&reply.head(Framing::Length(len + BAD_LENGTH_SHORT)))?;
            body_to(out)?;
            Ok(After::Close)
        }
        HttpFault::Garbage => {
            out.write_all(GARBAGE)?;
            Ok(After::Close)
        }
        HttpFault::Overlong => {
            // One buffer, one write: the surplus arrives with the body, not after it.
            let mut all = reply.head(Framing::Length(len));
            body_to(&mut all)?;
            all.extend_from_slice(&stray(&reply.served_by));
            out.write_all(&all)?;
            Ok(keep)
        }
    }
}

/// The stray response `extra` and `overlong` send: complete and recognisable, so a client that
/// receives it through a proxy can tell it was misdelivered.
pub fn stray(served_by: &str) -> Vec<u8> {
    let body = format!("STRAY from {served_by}\n");
    format!(
        "HTTP/1.1 200 OK\r\nX-Served-By: {served_by}\r\nX-Fault: stray\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Makes the coming close of `stream` a reset (RST) rather than a FIN.
pub fn reset(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        log::warn!("cannot set SO_LINGER 0 (the close will be a FIN): {e}");
    }
}

/// A line-mode (TCP echo) fault, set for the whole server with `--fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFault {
    /// Reset each connection right after echoing this many lines (0: at its first line).
    ResetAfter(u64),
}

/// The line-mode faults `--fault` accepts, for its error message.
pub const LINE_FAULTS: &str = "reset-after=N";

impl LineFault {
    /// Parses `NAME=VALUE` (the `--fault` syntax); the error says what is accepted.
    pub fn parse(spec: &str) -> Result<LineFault, String> {
        let (name, value) = spec.split_once('=').unwrap_or((spec, ""));
        match name {
            "reset-after" => value
                .parse()
                .map(LineFault::ResetAfter)
                .map_err(|_| format!("reset-after needs a line count, as in reset-after=3 (got {value:?})")),
            _ => Err(format!("unknown line fault {name:?}; line faults: {LINE_FAULTS}")),
        }
    }
}

impl std::fmt::Display for LineFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineFault::ResetAfter(n) => write!(f, "reset-after={n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_http_fault_round_trips_through_its_name() {
        for (fault, name) in HTTP_FAULTS {
            assert_eq!(HttpFault::parse(name), Some(fault));
            assert_eq!(fault.name(), name);
            assert!(HELP.contains(&format!("\n  {name} ")), "--help does not document {name}");
        }
        assert!(HELP.contains(&format!("\n  {LINE_FAULTS} ")), "--help does not document {LINE_FAULTS}");
        assert_eq!(HttpFault::parse("Extra"), None, "names are exact");
        assert!(HttpFault::names().starts_with("reset-before, close-before, "));
    }

    #[test]
    fn line_faults_parse_and_reject_clearly() {
        assert_eq!(LineFault::parse("reset-after=3"), Ok(LineFault::ResetAfter(3)));
        assert_eq!(LineFault::ResetAfter(3).to_string(), "reset-after=3");
        let e = LineFault::parse("reset-after=x").expect_err("not a number");
        assert!(e.contains("reset-after=3"), "{e}");
        let e = LineFault::parse("reset-after").expect_err("no value");
        assert!(e.contains("line count"), "{e}");
        let e = LineFault::parse("drip").expect_err("unknown");
        assert!(e.contains("unknown line fault \"drip\"") && e.contains(LINE_FAULTS), "{e}");
    }

    #[test]
    fn the_stray_response_is_complete_and_names_its_sender() {
        let s = String::from_utf8(stray("dummy-1")).expect("utf8");
        let (head, body) = s.split_once("\r\n\r\n").expect("head");
        assert_eq!(body, "STRAY from dummy-1\n");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }
}
