//! Routes an earlier route leaves unreachable. File order decides between routes that both
//! match, so a route that an earlier one matches wherever it does never wins (`*.example.com`
//! before `api.example.com`, or the same match written twice): each gets a warning, as
//! `nginx -t` warns of a conflicting server name.

use std::collections::HashMap;

use super::routing::{HostPattern, RouteSpec};

/// Whether `outer` matches every name `inner` does (`None`: any name).
fn covers_host(outer: &Option<HostPattern>, inner: &Option<HostPattern>) -> bool {
    match (outer, inner) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostPattern::Exact(a)), Some(HostPattern::Exact(b))) => a == b,
        (Some(HostPattern::Exact(_)), Some(HostPattern::Suffix(_))) => false,
        (Some(HostPattern::Suffix(s)), Some(HostPattern::Exact(b) | HostPattern::Suffix(b))) => {
            b.ends_with(s.as_str())
        }
    }
}

/// Whether the prefix `outer` matches every path `inner` does (`None` and `/`: any path).
fn covers_path(outer: Option<&str>, inner: Option<&str>) -> bool {
    match (outer.filter(|p| *p != "/"), inner.filter(|p| *p != "/")) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.strip_prefix(a).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

/// Whether `a` matches every request `b` does.
fn covers(a: &RouteSpec, b: &RouteSpec) -> bool {
    covers_host(&a.host, &b.host)
        && covers_host(&a.sni, &b.sni)
        && covers_path(a.path.as_deref(), b.path.as_deref())
}

/// The name of an exact pattern.
fn exact(p: &Option<HostPattern>) -> Option<&str> {
    match p {
        Some(HostPattern::Exact(h)) => Some(h.as_str()),
        _ => None,
    }
}

/// Each route an earlier one covers, with the first that does: `(shadowed, by)`, as indexes.
/// Only routes that could cover are compared: one naming an exact host or SNI covers only routes
/// naming the same, so thousands of such routes stay near linear.
pub(super) fn shadowed(routes: &[RouteSpec]) -> Vec<(usize, usize)> {
    let mut by_host: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_sni: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut broad: Vec<usize> = Vec::new();
    let mut found = Vec::new();
    for (i, b) in routes.iter().enumerate() {
        let named = |map: &HashMap<&str, Vec<usize>>, key: Option<&str>| {
            key.and_then(|k| map.get(k)).map_or(&[][..], Vec::as_slice).to_vec()
        };
        let mut candidates = named(&by_host, exact(&b.host));
        candidates.extend(named(&by_sni, exact(&b.sni)));
        candidates.extend(&broad);
        candidates.sort_unstable();
        if let Some(&a) = candidates.iter().find(|&&a| covers(&routes[a], b)) {
            found.push((i, a));
        }
        match (exact(&b.host), exact(&b.sni)) {
            (Some(h), _) => by_host.entry(h).or_default().push(i),
            (None, Some(s)) if b.host.is_none() => by_sni.entry(s).or_default().push(i),
            _ => broad.push(i),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::{HeaderRules, RouteAction};

    fn route(name: &str, host: Option<&str>, path: Option<&str>, sni: Option<&str>) -> RouteSpec {
        let pattern = |s: &str| match s.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(s.to_string()),
        };
        RouteSpec {
            name: name.to_string(),
            line: 0,
            host: host.map(pattern),
            path: path.map(String::from),
            sni: sni.map(pattern),
            action: RouteAction::Pool("default".to_string()),
            strip_prefix: false,
            request: HeaderRules::default(),
            response: HeaderRules::default(),
        }
    }

    #[test]
    fn a_route_an_earlier_one_covers_is_found_with_the_first_that_does() {
        let routes = [
            route("wild", Some("*.example.com"), Some("/api"), None),
            route("exact", Some("api.example.com"), Some("/api/v1"), None),
            route("other_path", Some("api.example.com"), Some("/apis"), None),
            route("bare", Some("example.com"), None, None),
            route("twice", Some("example.com"), None, None),
            route("deeper_wild", Some("*.a.example.com"), Some("/api"), None),
            route("sni", None, None, Some("db.internal")),
            route("sni_again", None, None, Some("db.internal")),
            route("catch_all", None, None, None),
            route("after_all", Some("late.test"), None, None),
        ];
        let names = |(b, a): (usize, usize)| (routes[b].name.as_str(), routes[a].name.as_str());
        let found: Vec<_> = shadowed(&routes).into_iter().map(names).collect();
        assert_eq!(
            found,
            [
                ("exact", "wild"),
                ("twice", "bare"),
                ("deeper_wild", "wild"),
                ("sni_again", "sni"),
                ("after_all", "catch_all"),
            ]
        );
    }

    #[test]
    fn prefixes_cover_on_segment_boundaries_only() {
        assert!(covers_path(Some("/api"), Some("/api/v1")) && covers_path(Some("/api"), Some("/api")));
        assert!(!covers_path(Some("/api"), Some("/apis")) && !covers_path(Some("/api"), None));
        assert!(covers_path(Some("/"), Some("/x")) && covers_path(None, Some("/x")));
    }
}
