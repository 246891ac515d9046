//! The routing keys of the key table (see [`super::KEYS`]); pools and routes themselves are
//! sections of their own (`[pool.NAME]`, `[route.NAME]`), read by `config::routing`.

use super::{key, Key, Kind};

/// `[proxy] error_pages`.
pub const ERROR_PAGES: Key = key(
    "proxy",
    "error_pages",
    Kind::Path,
    "",
    "http: a directory whose `NNN.html` replaces the body of the proxy's own NNN answers (400, 403, 404, 408, 413, 414, 429, 431, 502, 503, 504), as nginx's `error_page`; read at start and reload; empty: built-in bodies",
    |c| c.error_pages.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
);
