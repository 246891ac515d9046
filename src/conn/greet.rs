//! Taking a client connection's PROXY protocol header (`accept_proxy`), before anything else,
//! in as many parks as it takes to arrive; and the addresses it gives the connection.

use std::time::{Duration, Instant};

use super::Conn;
use crate::config::{AcceptProxy, Config};
use crate::logging::RateLimit;
use crate::net::proxy_protocol::{self, Addresses};

static BAD_PROXY_HEADER: RateLimit = RateLimit::new();

/// Where taking a connection's PROXY protocol header stands ([`Conn::greet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// Taken (or none expected): serve the connection.
    Ready,
    /// The rest has not arrived: park the connection until it does.
    Waiting,
    /// Missing or bad (logged): close the connection.
    Refused,
}

impl Conn {
    /// Takes the client's addresses from a PROXY protocol header (`None`: a LOCAL or UNKNOWN
    /// header, the socket's own addresses stand).
    pub fn set_origin(&mut self, addrs: Option<Addresses>) {
        if let Some(a) = addrs {
            self.peer = a.src;
            self.local = Some(a.dst);
        }
    }

    /// With `accept_proxy` on, takes the PROXY protocol header before anything else, as much
    /// of it as has arrived (the rest waits in the parker: [`Conn::greeting`]), and makes its
    /// client address the connection's, for both modes: logs, `X-Forwarded-For`, source-hash
    /// and the access log all read `peer`. A header missing at `header_ms` from accept, or
    /// bad, is refused: the caller closes the connection, never forwarding it.
    pub fn greet(&mut self, config: &Config) -> Greeting {
        let accept = config.scale.accept_proxy;
        if accept == AcceptProxy::Off {
            return Greeting::Ready;
        }
        let mut got = self.greeting.take().unwrap_or_default();
        let late = !config.timeouts.header.is_zero() && self.accepted.elapsed() >= config.timeouts.header;
        let read = match proxy_protocol::read_now(&self.stream, accept, &mut got) {
            Ok(None) if late => Err("no PROXY header within header_ms".to_string()),
            read => read,
        };
        match read {
            Ok(Some(header)) => {
                self.set_origin(header.addrs);
                Greeting::Ready
            }
            Ok(None) => {
                self.greeting = Some(got);
                Greeting::Waiting
            }
            Err(why) => {
                self.refuse_greeting(&why, crate::config::keys::accept_proxy_name(accept));
                Greeting::Refused
            }
        }
    }

    /// [`Conn::greet`], waiting up to `limit` in all for the header (at a stop, when the parker
    /// takes nothing). `Refused` when it is not whole by then.
    pub fn greet_within(&mut self, config: &Config, limit: Duration) -> Greeting {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return Greeting::Refused;
            }
            // Wait for bytes (or the end) without taking them: `greet` reads what is there.
            if !matches!(self.stream.peek(&mut [0u8; 1]), Ok(n) if n > 0) {
                return Greeting::Refused;
            }
            match self.greet(config) {
                Greeting::Waiting => continue,
                done => return done,
            }
        }
    }

    /// Logs (rate-limited) why a connection's PROXY header was refused (`accept`: the
    /// `accept_proxy` setting, as written).
    pub fn refuse_greeting(&self, why: &str, accept: &str) {
        if let Some(n) = BAD_PROXY_HEADER.check() {
            log::warn!(
                "conn {} from {}: {why}; closing (accept_proxy = {accept}){}",
                self.id,
                self.peer,
                crate::logging::held_back(n)
            );
        }
    }

    /// Where the client came from and the address it reached, for a PROXY header to a backend.
    pub fn origin(&self) -> Addresses {
        let dst = self.local.or_else(|| self.stream.local_addr().ok()).unwrap_or(self.peer);
        Addresses { src: self.peer, dst }
    }
}
