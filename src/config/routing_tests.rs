//! Unit tests of `[pool.NAME]` and `[route.NAME]`: what they become, and every error naming
//! its line.

use super::super::{Config, ConfigError, RawConfig};
use super::*;

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    RawConfig::parse(text.as_bytes(), "t.ini").and_then(|raw| raw.validate())
}

fn messages(text: &str) -> Vec<String> {
    parse(text).expect_err("config should be rejected").iter().map(|e| e.to_string()).collect()
}

const GOOD: &str = "[proxy]\nmode = http\n[backends]\nweb1 = 127.0.0.1:9090\n\
    [pool.api]\nalgorithm = round-robin\nhealth_path = /ping\napi1 = 127.0.0.1:9100 weight=2\n\
    [route.api]\nhost = API.example.com\npath = /api/\npool = api\nstrip_prefix = on\n\
    set_request_header.X-Env = prod\nadd_request_header.X-Tag = a\ndel_request_header = X-Debug, X-Internal\n\
    set_response_header.Strict-Transport-Security = max-age=1\ndel_response_header = Server\n\
    [route.old]\nhost = *.old.example.com\nredirect = 301 https://new.example.com{uri}\n\
    [route.secure]\nredirect = https\n";

#[test]
fn pools_and_routes_are_read_in_file_order() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.pools.len(), 1);
    let api = &c.pools[0];
    assert_eq!(
        (api.name.as_str(), api.algorithm, api.health_path.as_deref()),
        ("api", Algorithm::RoundRobin, Some("/ping"))
    );
    assert_eq!(api.backends[0].weight, 2);
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api", "old", "secure"]);
    let r = &c.routes[0];
    assert_eq!(r.host, Some(HostPattern::Exact("api.example.com".into())));
    assert_eq!(r.path.as_deref(), Some("/api"));
    assert!(r.strip_prefix);
    assert_eq!(r.request.set, [("X-Env".to_string(), "prod".to_string())]);
    assert_eq!(r.request.add, [("X-Tag".to_string(), "a".to_string())]);
    assert_eq!(r.request.del, ["X-Debug", "X-Internal"]);
    assert_eq!(r.response.del, ["Server"]);
    assert_eq!(c.routes[1].host, Some(HostPattern::Suffix(".old.example.com".into())));
    let https = RouteAction::Redirect(Redirect { status: 308, location: "https://{host}{uri}".into() });
    assert_eq!(c.routes[2].action, https);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_routing_error_names_its_line() {
    let text = "[proxy]\nmode = http\n[backends]\nweb1 = 127.0.0.1:9090\n\
        [pool.api]\nweb1 = 127.0.0.1:9100\n\
        [route.a]\npool = apii\n\
        [route.b]\npool = api\nset_request_header.Bad Name = x\n\
        [route.c]\nredirect = 300 https://x{uri}\n\
        [route.d]\nredirect = 301 https://x{url}\n\
        [route.e]\npool = api\ndel_request_header = X-Forwarded-For\n\
        [route.f]\npool = api\nsni = api.example.com\n\
        [route.g]\nhots = x\npool = api\n\
        [route.h]\n";
    let errs = messages(text);
    let has = |prefix: &str, part: &str| errs.iter().any(|e| e.starts_with(prefix) && e.contains(part));
    assert!(has("t.ini:6: [pool.api] web1:", "already used at line 4"), "{errs:?}");
    assert!(has("t.ini:8: [route.a] pool:", "unknown pool 'apii' (pools: default, api)"), "{errs:?}");
    assert!(has("t.ini:11: [route.b] set_request_header.Bad Name:", "not a header name"), "{errs:?}");
    assert!(has("t.ini:13: [route.c] redirect:", "'300' is not one of 301"), "{errs:?}");
    assert!(has("t.ini:15: [route.d] redirect:", "unknown placeholder {url}"), "{errs:?}");
    assert!(has("t.ini:18: [route.e] del_request_header:", "proxy's own header"), "{errs:?}");
    assert!(has("t.ini:19: [route.f]:", "needs mode = tcp"), "{errs:?}");
    assert!(has("t.ini:23: [route.g] hots:", "did you mean 'host'?"), "{errs:?}");
    assert!(has("t.ini:25: [route.h]:", "needs 'pool = NAME'"), "{errs:?}");
    // A redirect that does not parse is that one error, not also a route without an action.
    assert!(!has("t.ini:12: [route.c]:", "needs 'pool = NAME'"), "{errs:?}");
}

#[test]
fn sni_is_tcp_only_and_never_mixed_with_http_rules() {
    let base = "[proxy]\nmode = tcp\n[pool.a]\na1 = 127.0.0.1:1\n";
    let c = parse(&format!("{base}[route.a]\nsni = *.example.com\npool = a\n")).expect("valid");
    assert_eq!(c.routes[0].sni, Some(HostPattern::Suffix(".example.com".into())));
    let errs = messages(&format!("{base}[route.a]\nsni = a.example.com\npath = /x\npool = a\n"));
    assert!(errs.iter().any(|e| e.contains("don't mix them")), "{errs:?}");
    let errs = messages(&format!("{base}[route.a]\nhost = a.example.com\npool = a\n"));
    assert!(errs.iter().any(|e| e.contains("a route needs sni")), "{errs:?}");
    let errs = messages(&format!("{base}[route.a]\npool = a\n"));
    assert!(errs.iter().any(|e| e.contains("in tcp mode a route needs sni")), "{errs:?}");
}

#[test]
fn an_unreachable_pool_is_a_warning_and_no_default_pool_is_allowed() {
    let c = parse(
        "[proxy]\nmode = http\n[pool.a]\na1 = 127.0.0.1:1\n[pool.b]\nb1 = 127.0.0.1:2\n[route.a]\npool = a\n",
    )
    .expect("valid without [backends]");
    assert!(c.backends.is_empty());
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].to_string(), "t.ini:5: [pool.b]: no route sends requests to this pool");
}

#[test]
fn repeated_and_misnamed_sections_are_errors() {
    let errs = messages(
        "[backends]\na = 127.0.0.1:1\n[pool.x]\nb = 127.0.0.1:2\n[pool.x]\n[pool.default]\n[route.a b]\n",
    );
    assert!(
        errs.iter().any(|e| e.starts_with("t.ini:5: repeated section [pool.x] (first at line 3)")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.starts_with("t.ini:6: the pool 'default' is [backends]")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("t.ini:7: invalid route name 'a b'")), "{errs:?}");
}

#[test]
fn check_shows_pools_and_routes_with_their_lines() {
    let text = parse(GOOD).expect("valid").to_string();
    assert!(text.contains("# t.ini:5\n[pool.api]\nalgorithm = round-robin\nhealth_path = /ping\n"), "{text}");
    assert!(
        text.contains("[route.api]\nhost = api.example.com\npath = /api\npool = api\nstrip_prefix = on\n"),
        "{text}"
    );
    assert!(text.contains("[route.secure]\nredirect = 308 https://{host}{uri}\n"), "{text}");
}
