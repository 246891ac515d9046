//! Route lookup by host and path prefix in a few hash probes, whatever the number of routes:
//! the routes whose prefix can match a path are exactly those keyed by one of its segment
//! prefixes (`/`, `/api`, `/api/users`), so each is looked up under each host key that can
//! match (the host, its `*.suffix`es, any host), and the earliest route in file order wins.

use std::collections::HashMap;

use crate::config::{HostPattern, RouteSpec};

/// Path prefix -> the first route (in file order) with that prefix.
type Paths = HashMap<String, u32>;

/// The routes of a table, indexed for lookup.
#[derive(Debug, Default)]
pub struct Index {
    exact: HashMap<String, Paths>,
    /// Keyed by the suffix with its dot: `.example.com`.
    suffix: HashMap<String, Paths>,
    any: Paths,
    /// Whether any route names a host (else the host is not even looked at).
    hosts: bool,
}

impl Index {
    /// Indexes `routes` by `host` (or `sni`, when `by_sni`) and path; `(i, route)` keeps the
    /// route's position in the table.
    pub fn build<'a>(routes: impl Iterator<Item = (u32, &'a RouteSpec)>, by_sni: bool) -> Index {
        let mut index = Index::default();
        for (i, r) in routes {
            let host = if by_sni { &r.sni } else { &r.host };
            let paths = match host {
                Some(HostPattern::Exact(h)) => index.exact.entry(h.clone()).or_default(),
                Some(HostPattern::Suffix(s)) => index.suffix.entry(s.clone()).or_default(),
                None => &mut index.any,
            };
            // The first in file order keeps the key.
            paths.entry(r.path.clone().unwrap_or_else(|| "/".to_string())).or_insert(i);
            index.hosts |= host.is_some();
        }
        index
    }

    /// Whether no route is indexed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffix.is_empty() && self.any.is_empty()
    }

    /// The first route (in file order) matching `host` (lowercase, no port) and `path` (the
    /// target's path, without its query).
    pub fn find(&self, host: &str, path: &str) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut consider = |paths: &Paths| {
            if paths.is_empty() {
                return;
            }
            for prefix in prefixes(path) {
                if let Some(&i) = paths.get(prefix) {
                    best = Some(best.map_or(i, |b| b.min(i)));
                }
            }
        };
        if self.hosts {
            if let Some(paths) = self.exact.get(host) {
                consider(paths);
            }
            if !self.suffix.is_empty() {
                for (dot, _) in host.match_indices('.') {
                    if let Some(paths) = self.suffix.get(&host[dot..]) {
                        consider(paths);
                    }
                }
            }
        }
        consider(&self.any);
        best
    }
}

/// The prefixes of `path` on segment boundaries, as routes are keyed: `/`, then `/api`,
/// `/api/users` for `/api/users` (and for `/api/users/`).
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let ends =
        trimmed.match_indices('/').map(|(i, _)| i).filter(|&i| i > 0).chain(std::iter::once(trimmed.len()));
    std::iter::once("/").chain(ends.filter(|&e| e > 0).map(move |e| &trimmed[..e]))
}

/// The host as routes match it: without the port, lowercase, without a trailing dot.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let bare = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets: `[::1]:8080` -> `[::1]`.
        Some(_) => host.find(']').map_or(host, |end| &host[..=end]),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(bare.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(bare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, RouteSpec};

    fn routes(text: &str) -> Vec<RouteSpec> {
        let text = format!("[proxy]\nmode = http\n[backends]\na = 127.0.0.1:1\n{text}");
        RawConfig::parse(text.as_bytes(), "t").expect("parse").validate().expect("valid").routes
    }

    fn find(index: &Index, host: &str, path: &str) -> Option<u32> {
        index.find(&normalize_host(host), path)
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries_only() {
        let r = routes("[route.api]\npath = /api\npool = default\n");
        let index = Index::build(r.iter().enumerate().map(|(i, r)| (i as u32, r)), false);
        for hit in ["/api", "/api/", "/api/x", "/api/x/y"] {
            assert_eq!(find(&index, "h", hit), Some(0), "{hit}");
        }
        for miss in ["/apix", "/ap", "/", "/x/api"] {
            assert_eq!(find(&index, "h", miss), None, "{miss}");
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_without_case_or_port_and_file_order_decides() {
        let r = routes(
            "[route.w]\nhost = *.example.com\npool = default\n[route.e]\nhost = api.example.com\npool = default\n\
             [route.p]\npath = /x\npool = default\n[route.all]\npool = default\n",
        );
        let index = Index::build(r.iter().enumerate().map(|(i, r)| (i as u32, r)), false);
        // The wildcard comes first in the file, so it wins over the exact name (file order).
        assert_eq!(find(&index, "API.Example.com:8080", "/"), Some(0));
        assert_eq!(find(&index, "a.b.example.com", "/"), Some(0));
        assert_eq!(find(&index, "example.com", "/x/1"), Some(2));
        assert_eq!(find(&index, "other.org.", "/"), Some(3));
        assert_eq!(find(&index, "[::1]:80", "/"), Some(3));
    }
}
