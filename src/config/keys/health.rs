//! The `[health]` keys of the key table (see [`super::KEYS`]): active checks, passive failure
//! counting and slow start.

use super::{key, millis, mode_name, number, Key, Kind, DAY_MS, MODES};

/// `[health] enabled`.
pub const HEALTH_ENABLED: Key =
    key("health", "enabled", Kind::Bool, "true", "active health checks from a checker thread", |c| {
        c.health.enabled.to_string()
    });
/// `[health] mode`.
pub const HEALTH_MODE: Key = key(
    "health",
    "mode",
    Kind::Choice(MODES),
    "",
    "`tcp`: connect; `http`: `GET path` expecting 2xx/3xx; empty: the proxy's mode",
    |c| mode_name(c.health.mode),
);
/// `[health] path`.
pub const HEALTH_PATH: Key =
    key("health", "path", Kind::Text, "/health", "the http check's request path, sent with `Host:` the member's `name:port` as its line writes a DNS name, else its address", |c| c.health.path.clone());
/// `[health] interval_ms`.
pub const INTERVAL_MS: Key = key(
    "health",
    "interval_ms",
    millis(10, 3_600_000),
    "2000",
    "how often each backend is checked (plus up to 10% jitter)",
    |c| c.health.interval.as_millis().to_string(),
);
/// `[health] timeout_ms`.
pub const TIMEOUT_MS: Key =
    key("health", "timeout_ms", millis(1, 600_000), "1000", "how long a check may take", |c| {
        c.health.timeout.as_millis().to_string()
    });
/// `[health] rise`.
pub const RISE: Key =
    key("health", "rise", number(1, 100), "2", "consecutive good checks to come back up", |c| {
        c.health.rise.to_string()
    });
/// `[health] fall`.
pub const FALL: Key =
    key("health", "fall", number(1, 100), "3", "consecutive failed checks to go down", |c| {
        c.health.fall.to_string()
    });
/// `[health] max_fails`.
pub const MAX_FAILS: Key = key(
    "health",
    "max_fails",
    number(0, 1000),
    "3",
    "live-traffic failures within `fail_window_ms` that mark a backend down (0: off)",
    |c| c.health.max_fails.to_string(),
);
/// `[health] fail_window_ms`.
pub const FAIL_WINDOW_MS: Key =
    key("health", "fail_window_ms", millis(0, DAY_MS), "10000", "the window `max_fails` counts in", |c| {
        c.health.fail_window.as_millis().to_string()
    });
/// `[health] observe_5xx`.
pub const OBSERVE_5XX: Key =
    key("health", "observe_5xx", Kind::Bool, "false", "http: count 5xx responses as failures", |c| {
        c.health.observe_5xx.to_string()
    });
/// `[health] slowstart_ms`.
pub const SLOWSTART_MS: Key = key(
    "health",
    "slowstart_ms",
    millis(0, DAY_MS),
    "0",
    "ramp a recovered backend's weight from near 0 to full over this long",
    |c| c.health.slowstart.as_millis().to_string(),
);
/// `[health] eject_consecutive_5xx`.
pub const EJECT_CONSECUTIVE_5XX: Key = key(
    "health",
    "eject_consecutive_5xx",
    number(0, 1000),
    "5",
    "outlier ejection (Envoy's): this many 5xx answers or failed attempts in a row take a member out of rotation (0: off)",
    |c| c.health.eject_consecutive_5xx.to_string(),
);
/// `[health] eject_base_ms`.
pub const EJECT_BASE_MS: Key = key(
    "health",
    "eject_base_ms",
    millis(1, DAY_MS),
    "30000",
    "an ejection lasts this long times the member's ejection count (which drops by one for each such span it stays healthy); a passing active check ends it early",
    |c| c.health.eject_base.as_millis().to_string(),
);
/// `[health] eject_max_ms`.
pub const EJECT_MAX_MS: Key =
    key("health", "eject_max_ms", millis(1, DAY_MS), "300000", "the longest an ejection lasts", |c| {
        c.health.eject_max.as_millis().to_string()
    });
/// `[health] eject_max_percent`.
pub const EJECT_MAX_PERCENT: Key = key(
    "health",
    "eject_max_percent",
    number(0, 100),
    "50",
    "never eject more than this share of a pool at once (rounded down: a pool of one is never ejected)",
    |c| c.health.eject_max_percent.to_string(),
);
