//! The access-log keys of the key table (see [`super::KEYS`]).

use super::{key, Key, Kind};
use crate::config::access::{self, Format};

/// `[proxy] access_log`.
pub const ACCESS_LOG: Key = key(
    "proxy",
    "access_log",
    Kind::Path,
    "",
    "one line per request (http) or connection (tcp) in a file of its own, written by a logger thread (lines it cannot keep up with are dropped and counted, never waited for); SIGUSR1 reopens it. Empty: in the main log at level info; `off`: none",
    |c| access::describe(&c.access_log),
);
/// `[proxy] access_format`.
pub const ACCESS_FORMAT: Key = key(
    "proxy",
    "access_format",
    Kind::Choice(Format::NAMES),
    "main",
    "`combined`: Apache/nginx combined (GoAccess, awstats, shippers read it; UTC); `json`: one object per line with timings, pool, route, backend and why; `main`: the proxy's own wording",
    |c| c.access_format.name().to_string(),
);
