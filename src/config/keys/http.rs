//! The `[http]` keys of the key table (see [`super::KEYS`]): backend connection reuse, request
//! size limits and which request headers reach a backend.

use super::{key, millis, number, Key, Kind, DAY_MS};

/// `[http] backend_keepalive`.
pub const BACKEND_KEEPALIVE: Key = key(
    "http",
    "backend_keepalive",
    number(0, 10_000),
    "512",
    "http: idle persistent connections kept per backend (the default, as `workers`, closes none a request could reuse)",
    |c| c.http.backend_keepalive.to_string(),
);
/// `[http] backend_idle_ms`.
pub const BACKEND_IDLE_MS: Key = key(
    "http",
    "backend_idle_ms",
    millis(1, DAY_MS),
    "4000",
    "http: a pooled backend connection idle longer than this is closed instead of reused, as nginx's upstream `keepalive_timeout`; keep it below the backend's own keep-alive timeout (the default is under the 5 s of Node, uvicorn and Apache; HAProxy purges idle server connections within about 5 s)",
    |c| c.http.backend_idle.as_millis().to_string(),
);
/// `[http] max_head_bytes`.
pub const MAX_HEAD_BYTES: Key = key(
    "http",
    "max_head_bytes",
    number(1024, 1 << 20),
    "65536",
    "http: larger request heads get 431 (414 when the request line alone is larger); a larger response head, or a response's 1xx heads together, get 502",
    |c| c.http.max_head_bytes.to_string(),
);
/// `[http] max_body_bytes`.
pub const MAX_BODY_BYTES: Key = key(
    "http",
    "max_body_bytes",
    number(0, u64::MAX >> 1),
    "0",
    "http: larger request bodies get 413 (0: no limit)",
    |c| c.http.max_body_bytes.unwrap_or(0).to_string(),
);
/// `[http] underscores_in_headers`.
pub const UNDERSCORES_IN_HEADERS: Key = key(
    "http",
    "underscores_in_headers",
    Kind::Bool,
    "false",
    "http: forward request headers whose names contain `_` (off: dropped and counted, as nginx's `underscores_in_headers off`, since a CGI, WSGI or PHP backend reads `X_Forwarded_For` as `X-Forwarded-For`)",
    |c| c.http.underscores_in_headers.to_string(),
);
/// `[http] retry_on`.
pub const RETRY_ON: Key = key(
    "http",
    "retry_on",
    Kind::Text,
    "",
    "http: statuses (e.g. `502, 503, 504`) after which an idempotent request whose body was not sent is tried once more on another member, as HAProxy's `retry-on`; never a POST (without `Idempotency-Key`). Empty: off",
    |c| c.http.retry_on.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
);
