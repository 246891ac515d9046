//! The `[limits]` keys of the key table (see [`super::KEYS`]): per-client rate and connection
//! limits, and who may connect at all.

use super::{key, number, Key, Kind};

/// `[limits] rate`.
pub const RATE: Key = key(
    "limits",
    "rate",
    Kind::Text,
    "",
    "per client address: `N/s` or `N/m`, a token bucket (governor; nginx `limit_req`); http: more gets 429 with `Retry-After`, tcp: new connections over it are closed at accept; empty: off",
    |c| c.limits.rate.map(|(n, per)| format!("{n}/{}", if per.as_secs() == 60 { "m" } else { "s" })).unwrap_or_default(),
);
/// `[limits] burst`.
pub const BURST: Key = key(
    "limits",
    "burst",
    number(0, 1_000_000),
    "0",
    "requests (tcp: connections) allowed at once above `rate`",
    |c| c.limits.burst.to_string(),
);
/// `[limits] max_conns_per_client`.
pub const MAX_CONNS_PER_CLIENT: Key = key(
    "limits",
    "max_conns_per_client",
    number(0, 1_000_000),
    "0",
    "concurrent connections per client address (nginx `limit_conn`); http: one more gets 429 and close, tcp: closed at accept; 0: no limit",
    |c| c.limits.max_conns_per_client.to_string(),
);
/// `[limits] max_clients`.
pub const MAX_CLIENTS: Key = key(
    "limits",
    "max_clients",
    number(16, 10_000_000),
    "100000",
    "client addresses whose rate is tracked at once; past it the least recently seen are forgotten, so a flood from many addresses keeps memory bounded",
    |c| c.limits.max_clients.to_string(),
);
/// `[limits] allow`.
pub const ALLOW: Key = key(
    "limits",
    "allow",
    Kind::Text,
    "",
    "addresses and CIDR blocks (`10.0.0.0/8, ::1`): when set, only these may connect (http: others get 403; tcp: closed at accept); empty: everyone",
    |c| c.limits.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
);
/// `[limits] deny`.
pub const DENY: Key =
    key("limits", "deny", Kind::Text, "", "addresses and CIDR blocks refused, checked before `allow`", |c| {
        c.limits.deny.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    });
/// `[limits] trusted_proxies`.
pub const TRUSTED_PROXIES: Key = key(
    "limits",
    "trusted_proxies",
    Kind::Text,
    "",
    "http: peers whose `X-Forwarded-For` is believed; the client is its right-most address that is not itself trusted (nginx `real_ip_recursive on`); anyone else's is appended to, never believed. Their `X-Forwarded-Proto` (`http` or `https`) is kept too: they must set it themselves",
    |c| c.limits.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
);
