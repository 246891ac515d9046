//! The `[admin]` keys and `[backends] resolve_ms` and `sticky` of the key table (see [`super::KEYS`]).

use super::{flagged, key, millis, Key, Kind, DAY_MS};

/// `[admin] listen`.
pub const ADMIN_LISTEN: Key = flagged(
    key(
        "admin",
        "listen",
        Kind::Address,
        "",
        "e.g. `127.0.0.1:8081`: the dashboard `/`, `/events`, `/stats`, `/metrics`, `/health` and `POST /backends/NAME/ACTION`; empty: off",
        |c| c.admin.map(|a| a.to_string()).unwrap_or_default(),
    ),
    "--admin",
);
/// `[admin] token`.
pub const ADMIN_TOKEN: Key = key(
    "admin",
    "token",
    Kind::Text,
    "",
    "when set (8 to 256 visible ASCII characters), every POST must carry `Authorization: Bearer TOKEN` (else 401); empty: no check",
    // A secret: --check says whether it is set, never what it is.
    |c| if c.admin_token.is_some() { "(set)".to_string() } else { String::new() },
);
/// `[backends] resolve_ms`.
pub const RESOLVE_MS: Key = key(
    "backends",
    "resolve_ms",
    millis(100, DAY_MS),
    "30000",
    "how often host names are resolved again (every address becomes a member)",
    |c| c.resolve_interval.as_millis().to_string(),
);
/// `[backends] sticky` (a pool's is `[pool.NAME] sticky`).
pub const STICKY: Key = key(
    "backends",
    "sticky",
    Kind::Text,
    "",
    "http: `cookie` or `cookie NAME` (default name `lb`): a client's requests stay on one member by a cookie the proxy sets, as HAProxy's `cookie ... insert indirect`; empty: off",
    |c| c.sticky.as_ref().map(|n| format!("cookie {n}")).unwrap_or_default(),
);
