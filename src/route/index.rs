//! Route lookup by host and path prefix in a few hash probes, whatever the number of routes:
//! the routes whose prefix can match a path are exactly those keyed by one of its segment
//! prefixes (`/`, `/api`, `/api/users`), so each is looked up under each host key that can
//! match (the host, its `*.suffix`es, any host), and the earliest route in file order wins.
//! Only prefixes and suffixes as long as some route's are hashed, so a request's cost is bound
//! by the table's, not by how many segments or labels the client packs into its path or Host
//! (hashing every one of them made a 60 KB path cost 0.2 s).

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
    /// The lengths of the path prefixes routes are keyed by, ascending, without duplicates.
    path_lengths: Vec<usize>,
    /// The lengths of the `.suffix` keys, likewise.
    suffix_lengths: Vec<usize>,
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
            let path = r.path.clone().unwrap_or_else(|| "/".to_string());
            index.path_lengths.push(path.len());
            paths.entry(path).or_insert(i);
            index.hosts |= host.is_some();
        }
        index.suffix_lengths = index.suffix.keys().map(String::len).collect();
        for lengths in [&mut index.path_lengths, &mut index.suffix_lengths] {
            lengths.sort_unstable();
            lengths.dedup();
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
            for prefix in prefixes(path, &self.path_lengths) {
                if let Some(&i) = paths.get(prefix) {
                    best = Some(best.map_or(i, |b| b.min(i)));
                }
            }
        };
        if self.hosts {
            if let Some(paths) = self.exact.get(host) {
                consider(paths);
            }
            // `.example.com` for `a.example.com`: the host's ends of a route suffix's length.
            let ends = self.suffix_lengths.iter().filter_map(|&n| host.len().checked_sub(n));
            for start in ends.filter(|&start| host.as_bytes()[start] == b'.') {
                if let Some(paths) = self.suffix.get(&host[start..]) {
                    consider(paths);
                }
            }
        }
        consider(&self.any);
        best
    }
}

/// The prefixes of `path` on segment boundaries, as routes are keyed, of the `lengths` given
/// (ascending): of `/`, `/api` and `/api/users` for `/api/users` (and for `/api/users/`).
fn prefixes<'a>(path: &'a str, lengths: &'a [usize]) -> impl Iterator<Item = &'a str> {
    let trimmed = path.trim_end_matches('/');
    let root = (lengths.first() == Some(&1)).then_some("/");
    // `/` is every path's prefix; a longer one ends where a segment does.
    let ends = lengths.iter().copied().filter(move |&n| {
        n > 1 && n <= trimmed.len() && trimmed.as_bytes().get(n).is_none_or(|&b| b == b'/')
    });
    root.into_iter().chain(ends.map(move |n| &trimmed[..n]))
}

/// The host as routes match it: without the port, lowercase, without a trailing dot.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let bare = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets, written as a route names it: `[0:0::1]:8080` ->
        // `[::1]`.
        Some(rest) => match rest.split_once(']').map(|(ip, _)| ip.parse::<std::net::Ipv6Addr>()) {
            Some(Ok(ip)) => return std::borrow::Cow::Owned(format!("[{ip}]")),
            _ => host.find(']').map_or(host, |end| &host[..=end]),
        },
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

    /// The prefixes looked up are only those as long as some route's: a path of 30,000
    /// segments costs two probes against routes `/` and `/a/a`, not 30,001 hashes of up to 60 KB.
    #[test]
    fn only_prefixes_as_long_as_a_routes_are_looked_up() {
        let long = "/a".repeat(30_000);
        assert_eq!(prefixes(&long, &[1, 4]).collect::<Vec<_>>(), ["/", "/a/a"]);
        assert_eq!(
            prefixes("/a/b/c/d/", &[1, 2, 4, 6, 9]).collect::<Vec<_>>(),
            ["/", "/a", "/a/b", "/a/b/c"]
        );
        assert_eq!(prefixes("/ab/c", &[2, 3]).collect::<Vec<_>>(), ["/ab"], "not `/a`: it ends mid-segment");
        assert_eq!(prefixes("/", &[1, 2]).collect::<Vec<_>>(), ["/"]);
        let r = routes(
            "[route.deep]\npath = /a/a/a\npool = default\n[route.w]\nhost = *.x.org\npool = default\n",
        );
        let index = Index::build(r.iter().enumerate().map(|(i, r)| (i as u32, r)), false);
        assert_eq!(find(&index, "h", &long), Some(0));
        assert_eq!(find(&index, "h", "/a/a"), None);
        let host = format!("{}x.org", "a.".repeat(30_000));
        assert_eq!(find(&index, &host, "/"), Some(1));
        for miss in ["x.org", "ax.org", "x.org.b"] {
            assert_eq!(find(&index, miss, "/"), None, "{miss}");
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
