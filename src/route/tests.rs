//! Unit tests of the table: which pool a request reaches, and what a redirect says.

use super::*;
use crate::config::RawConfig;

fn table(text: &str) -> Table {
    let config = RawConfig::parse(text.as_bytes(), "t").expect("parse").validate().expect("valid");
    Table::build(&config, None)
}

const HTTP: &str = "[proxy]\nmode = http\n[backends]\nweb1 = 127.0.0.1:1\n[pool.api]\napi1 = 127.0.0.1:2\n\
    [route.api]\nhost = api.example.com\npath = /api\npool = api\nstrip_prefix = on\n\
    [route.old]\nhost = old.example.com\nredirect = 301 https://new.example.com{uri}\n";

fn pool_of(t: &Table, host: &str, target: &str) -> Option<String> {
    t.pool_for(t.route_http(host, target).route).map(|p| p.name.clone())
}

#[test]
fn requests_reach_their_routes_pool_and_the_rest_the_default() {
    let t = table(HTTP);
    assert_eq!(pool_of(&t, "api.example.com:8080", "/api/users?q=1").as_deref(), Some("api"));
    let routed = t.route_http("API.example.com", "/api/users?q=1");
    assert_eq!(crate::h1::edits::stripped("/api/users?q=1", routed.strip), "/users?q=1");
    assert_eq!(pool_of(&t, "api.example.com", "/apix").as_deref(), Some("default"));
    assert_eq!(pool_of(&t, "www.example.com", "/api").as_deref(), Some("default"));
    // A redirect reaches no pool, and keeps the host to answer with.
    let old = t.route_http("old.example.com", "/a?b");
    assert!(old.answer && t.pool_for(old.route).is_none());
}

#[test]
fn without_a_default_pool_an_unrouted_request_is_answered_here() {
    let t =
        table("[proxy]\nmode = http\n[pool.api]\napi1 = 127.0.0.1:2\n[route.api]\npath = /api\npool = api\n");
    let r = t.route_http("h", "/other");
    assert!(r.answer && r.route.is_none() && t.pool_for(None).is_none());
    assert_eq!(pool_of(&t, "h", "/api").as_deref(), Some("api"));
}

#[test]
fn a_redirect_fills_each_placeholder_once() {
    let to = "https://{host}{path}?from={query}&u={uri}";
    assert_eq!(
        location(to, "Old.Example.com:80", "/a/b?x=1"),
        "https://old.example.com/a/b?from=x=1&u=/a/b?x=1"
    );
    // A placeholder in the request itself is not expanded again.
    assert_eq!(location("https://x{uri}", "h", "/{host}"), "https://x/{host}");
    assert_eq!(location("https://x/{nothing", "h", "/"), "https://x/{nothing");
}

#[test]
fn sni_routes_pick_a_pool_and_no_name_goes_to_the_default() {
    let t = table("[proxy]\nmode = tcp\n[backends]\nd = 127.0.0.1:1\n[pool.a]\na1 = 127.0.0.1:2\n[route.a]\nsni = *.a.test\npool = a\n");
    assert!(t.routes_sni());
    assert_eq!(t.route_sni(Some("x.A.test")).0.map(|p| p.name.as_str()), Some("a"));
    assert_eq!(t.route_sni(Some("b.test")).0.map(|p| p.name.as_str()), Some("default"));
    assert_eq!(t.route_sni(None).0.map(|p| p.name.as_str()), Some("default"));
}

#[test]
fn a_rebuilt_table_keeps_its_pools_balancers() {
    let first = table(HTTP);
    let config = RawConfig::parse(HTTP.as_bytes(), "t").expect("parse").validate().expect("valid");
    let second = Table::build(&config, Some(&first));
    assert!(Arc::ptr_eq(&first.pools()[1].balancer, &second.pools()[1].balancer));
    let router = Router::new(first);
    let mut loaded = router.load();
    router.install(second);
    assert!(Arc::ptr_eq(loaded.refresh(&router), &router.table()));
}

#[test]
fn an_ip_address_is_a_host_a_route_may_name_ipv6_in_brackets_or_not() {
    for host in ["[::1]", "::1", "[0:0::1]"] {
        let t = table(&format!(
            "[proxy]\nmode = http\n[backends]\nweb1 = 127.0.0.1:1\n[pool.v6]\na = 127.0.0.1:2\n\
             [route.v6]\nhost = {host}\npool = v6\n[pool.v4]\nb = 127.0.0.1:3\n[route.v4]\nhost = 127.0.0.1\npool = v4\n"
        ));
        assert_eq!(pool_of(&t, "[::1]:8080", "/").as_deref(), Some("v6"), "{host}");
        assert_eq!(pool_of(&t, "[::1]", "/x").as_deref(), Some("v6"), "{host}");
        assert_eq!(pool_of(&t, "127.0.0.1:8080", "/").as_deref(), Some("v4"), "{host}");
        assert_eq!(pool_of(&t, "[::2]", "/").as_deref(), Some("default"), "{host}");
        assert_eq!(pool_of(&t, "[0:0:0::1]:80", "/").as_deref(), Some("v6"), "{host}: any spelling");
    }
    // A server name never is an address: an `sni` route naming one could never match.
    for sni in ["::1", "[::1]", "127.0.0.1"] {
        let text = format!(
            "[proxy]\nmode = tcp\n[backends]\na = 127.0.0.1:1\n[route.r]\nsni = {sni}\npool = default\n"
        );
        let errors = RawConfig::parse(text.as_bytes(), "t").expect("parse").validate().expect_err(sni);
        let said = errors.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(said.iter().any(|e| e.contains("which a TLS server name never is")), "{sni}: {said:?}");
    }
}
