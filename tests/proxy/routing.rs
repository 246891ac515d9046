//! Routing (issue #22): pools behind one listener chosen by host, path or TLS SNI, header
//! rules, redirects, error pages, and reloads that move routes under load. Every backend is a
//! real dummy_server named for its pool, so `X-Served-By` says which pool answered.

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::tls::{client_config, tls_connect, Ca};

use crate::util::*;

/// One request on a new connection with this Host.
fn request(addr: SocketAddr, host: &str, target: &str, extra: &str) -> Resp {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    send_raw(addr, raw.as_bytes(), "GET").0
}

fn served_by(r: &Resp) -> &str {
    r.header("X-Served-By").unwrap_or("-")
}

/// An http proxy with `sections` (pools, routes, `[backends]`) after its base settings.
fn routed_proxy(sections: &str, proxy_extra: &str) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n{proxy_extra}\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n{sections}"
    );
    proxy_with(&config, &[])
}

#[test]
fn host_wildcard_and_path_prefix_pick_pools_in_file_order_and_the_rest_go_to_the_default() {
    let (_web, web) = dummy("web1");
    let (_api, api) = dummy("api1");
    let (_adm, adm) = dummy("adm1");
    let sections = format!(
        "[backends]\nweb1 = {web}\n[pool.api]\napi1 = {api}\n[pool.adm]\nadm1 = {adm}\n\
         [route.api]\nhost = api.example.com\npath = /api\npool = api\nstrip_prefix = on\n\
         [route.wild]\nhost = *.example.com\npool = adm\n\
         [route.img]\npath = /img\npool = adm\n"
    );
    let (p, addr) = routed_proxy(&sections, "");
    let cases = [
        ("api.example.com", "/api/users?q=1", "api1"),
        ("API.Example.COM:8080", "/api", "api1"),
        // Not on a segment boundary: the next route in file order (the wildcard) takes it.
        ("api.example.com", "/apix", "adm1"),
        ("a.b.example.com", "/api/x", "adm1"),
        ("other.org", "/img/logo.png", "adm1"),
        ("other.org", "/imgx", "web1"),
        ("example.com", "/", "web1"),
    ];
    for (host, target, want) in cases {
        let r = request(addr, host, target, "");
        assert_eq!((r.status, served_by(&r)), (200, want), "{host}{target}: {}", r.text());
    }
    // strip_prefix: the backend sees the rest of the path, query kept; /api alone becomes /.
    let echo = request(addr, "api.example.com", "/api/echo?q=1", "").text();
    assert!(echo.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{echo}");
    // Each request's line is written after its answer, so two close requests on two
    // connections may log in either order: wait for this one's own line.
    p.wait_for("\"GET /api/users?q=1\" route api (host api.example.com, path /api) pool api -> api1");
    let stats = proxy_stats(admin_addr(&p));
    let pools: Vec<&str> =
        stats["pools"].as_array().expect("pools").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(pools, ["default", "api", "adm"]);
    assert_eq!(backend_stats(admin_addr(&p), "api1")["pool"], "api");
    let metrics = http_get(admin_addr(&p), "/metrics").text();
    assert!(metrics.contains("lb_requests_total{backend=\"api1\",pool=\"api\"} 3"), "{metrics}");
}

#[test]
fn header_rules_set_add_and_delete_both_ways_and_the_proxys_own_headers_stay() {
    let (_api, api) = dummy("api1");
    let sections = format!(
        "[pool.api]\napi1 = {api}\n[route.api]\npath = /\npool = api\n\
         set_request_header.X-Env = prod\nadd_request_header.X-Tag = added\n\
         del_request_header = X-Debug, X-Internal\nset_request_header.Host = internal.api\n\
         set_response_header.Strict-Transport-Security = max-age=31536000\n\
         add_response_header.X-Route = api\ndel_response_header = X-Served-By\n"
    );
    let (_p, addr) = routed_proxy(&sections, "");
    let r = request(
        addr,
        "front.example",
        "/echo",
        "X-Env: dev\r\nX-Tag: client\r\nX-Debug: 1\r\nx-internal: 2\r\n",
    );
    assert_eq!(r.status, 200);
    let echo = r.text().to_ascii_lowercase();
    assert!(echo.contains("x-env: prod\r\n") && !echo.contains("x-env: dev"), "{echo}");
    assert!(echo.contains("x-tag: client\r\n") && echo.contains("x-tag: added\r\n"), "{echo}");
    assert!(!echo.contains("x-debug") && !echo.contains("x-internal"), "{echo}");
    assert!(echo.contains("host: internal.api\r\n") && !echo.contains("front.example"), "{echo}");
    // The proxy's own headers are added after the rules, and no rule may name them (`Via`
    // only on the response).
    for own in ["x-request-id: ", "x-forwarded-for: 127.0.0.1", "x-forwarded-proto: http"] {
        assert!(echo.contains(own), "{own}: {echo}");
    }
    assert!(!echo.contains("via:"), "{echo}");
    assert_eq!(r.header("Via"), Some("1.1 lbproxy"));
    assert_eq!(r.header("Strict-Transport-Security"), Some("max-age=31536000"));
    assert_eq!(r.header("X-Route"), Some("api"));
    assert_eq!(r.header("X-Served-By"), None, "deleted from the response");
    assert!(r.header("X-Request-ID").is_some());
}

#[test]
fn redirects_fill_every_placeholder_and_https_redirects_a_plain_listener() {
    let (_web, web) = dummy("web1");
    let sections = format!(
        "[backends]\nweb1 = {web}\n\
         [route.old]\nhost = old.example.com\nredirect = 301 https://new.example.com{{uri}}\n\
         [route.parts]\nhost = parts.example.com\nredirect = 302 https://{{host}}/x{{path}}?was={{query}}\n\
         [route.secure]\nhost = secure.example.com\nredirect = https\n"
    );
    let (p, addr) = routed_proxy(&sections, "");
    let r = request(addr, "old.example.com", "/a/b?c=1", "");
    assert_eq!((r.status, r.header("Location")), (301, Some("https://new.example.com/a/b?c=1")));
    let r = request(addr, "Parts.Example.com:8080", "/p?q=2", "");
    assert_eq!((r.status, r.header("Location")), (302, Some("https://parts.example.com/x/p?was=q=2")));
    let r = request(addr, "secure.example.com", "/login?next=/", "");
    assert_eq!((r.status, r.header("Location")), (308, Some("https://secure.example.com/login?next=/")));
    // Redirected without a backend; everyone else still proxied, on the same connection.
    let mut s = connect(addr);
    s.write_all(b"GET /r HTTP/1.1\r\nHost: old.example.com\r\n\r\n").expect("send");
    let mut wire = lbproxy::h1::Wire::new(s);
    assert_eq!(read_response(&mut wire, "GET").status, 301);
    let next = get(&mut wire, "/", "");
    assert_eq!((next.status, served_by(&next)), (200, "web1"));
    // A HEAD gets the redirect without a body, so the next response on the connection is whole.
    wire.stream.write_all(b"HEAD /h HTTP/1.1\r\nHost: old.example.com\r\n\r\n").expect("send");
    let head = read_response(&mut wire, "HEAD");
    assert_eq!((head.status, head.body.len()), (301, 0));
    let next = get(&mut wire, "/", "");
    assert_eq!((next.status, served_by(&next)), (200, "web1"));
    // An absolute-form target: the Location takes its path, not the whole URL.
    let abs =
        "GET http://old.example.com/a?b=1 HTTP/1.1\r\nHost: old.example.com\r\nConnection: close\r\n\r\n";
    let r = send_raw(addr, abs.as_bytes(), "GET").0;
    assert_eq!(r.header("Location"), Some("https://new.example.com/a?b=1"));
    let line = p.wait_for("route old (host old.example.com) -> -");
    assert!(line.contains(" 301 "), "{line}");
}

#[test]
fn error_pages_replace_404_502_and_503_bodies_and_no_default_pool_means_404() {
    let (_dead_socket, dead) = dead_addr();
    // A backend whose answer is no HTTP: 502, as nginx and HAProxy answer it.
    let garbage = raw_backend(|_| b"not http at all\r\n\r\n".to_vec(), 1);
    let pages = tempfile::tempdir().expect("tempdir");
    for status in [404, 502, 503] {
        std::fs::write(pages.path().join(format!("{status}.html")), format!("<h1>custom {status}</h1>\n"))
            .expect("page");
    }
    let sections = format!(
        "[pool.dead]\ndead1 = {dead}\n[pool.bad]\nbad1 = {}\n\
         [route.dead]\npath = /dead\npool = dead\n[route.bad]\npath = /bad\npool = bad\n",
        garbage.addr
    );
    let extra = format!("error_pages = {}", pages.path().display());
    let (p, addr) = routed_proxy(&sections, &extra);
    let r = request(addr, "nowhere.example", "/other", "");
    assert_eq!(r.status, 404);
    let html = Some("text/html; charset=utf-8");
    assert_eq!((r.text().as_str(), r.header("Content-Type")), ("<h1>custom 404</h1>\n", html));
    p.wait_for("[no route for nowhere.example/other]");
    let r = request(addr, "h", "/bad", "");
    assert_eq!((r.status, r.text().as_str()), (502, "<h1>custom 502</h1>\n"));
    // Refused by its only backend: 503 (no server available), as HAProxy answers.
    let r = request(addr, "h", "/dead", "");
    assert_eq!((r.status, r.text().as_str()), (503, "<h1>custom 503</h1>\n"));
    // A status without a page keeps the built-in text.
    let r = send_raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET").0;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("repeated Host"), "{}", r.text());
    // Pages are read again on reload, not per request.
    std::fs::write(pages.path().join("404.html"), "<h1>new 404</h1>\n").expect("page");
    assert_eq!(request(addr, "h", "/other", "").text(), "<h1>custom 404</h1>\n");
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "3 error page(s)");
    assert_eq!(request(addr, "h", "/other", "").text(), "<h1>new 404</h1>\n");
}

/// A TLS-terminating proxy in tcp mode for `names`, in front of a dummy called `name`: a TLS
/// backend whose certificate the client checks.
fn tls_backend(ca: &Ca, name: &str, names: &[&str]) -> (Proc, Proc, SocketAddr, tempfile::TempDir) {
    let (d, daddr) = dummy(name);
    let certs = tempfile::tempdir().expect("tempdir");
    ca.write(certs.path(), name, names);
    let dir = certs.path().display();
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 8\n[health]\nenabled = false\n\
         [tls]\ncert = {dir}/{name}.pem\nkey = {dir}/{name}.key\n[backends]\n{name} = {daddr}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    (p, d, addr, certs)
}

#[test]
fn sni_routes_tls_untouched_to_the_backend_whose_certificate_matches_and_the_rest_to_the_default() {
    let ca = Ca::new("routing CA");
    let (_ap, _ad, api, _ac) = tls_backend(&ca, "api", &["api.example.com"]);
    let (_wp, _wd, www, _wc) = tls_backend(&ca, "www", &["www.example.com", "localhost"]);
    let (_plain, plain) = dummy("plain1");
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 16\naccess_log = access.log\naccess_format = json\n\
         [health]\nenabled = false\n[backends]\nwww = {www}\n\
         [pool.api]\napi-tls = {api}\n[route.api]\nsni = *.example.com\npool = api\n\
         [route.www]\nsni = www.example.com\npool = default\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let client = client_config(&ca, None);
    let fetch = |name: &str| {
        let mut tls = tls_connect(addr, client.clone(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        write!(tls, "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").expect("send");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // The client's certificate check passes only if the bytes reached the right backend.
    assert!(fetch("api.example.com").contains("X-Served-By: api"), "api");
    // The wildcard comes first in the file, so www.example.com goes to api too, and fails
    // the certificate check there: file order decides, as for http routes.
    assert!(tls_connect(addr, client.clone(), "www.example.com").is_err());
    // No SNI match: the default pool.
    assert!(fetch("localhost").contains("X-Served-By: www"));
    p.wait_for("route api (sni *.example.com) pool api");
    p.wait_for("-> api-tls");
    // The connection's json line names the SNI route that chose its pool (the default pool's,
    // none).
    let log = p.dir().join("access.log");
    let line_of = |backend: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text.lines().find(|l| l.contains(&format!("\"backend\":\"{backend}\"")));
        found.map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
    };
    wait_until("both connections logged", || line_of("api-tls").is_some() && line_of("www").is_some());
    let api_line = line_of("api-tls").expect("api line");
    assert_eq!(
        (api_line["route"].as_str(), api_line["pool"].as_str()),
        (Some("api"), Some("api")),
        "{api_line}"
    );
    let www_line = line_of("www").expect("www line");
    assert!(www_line.get("route").is_none(), "{www_line}");
    // Not TLS at all: the default pool too, bytes untouched (here a plain backend).
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 16\n[health]\nenabled = false\n[backends]\nplain1 = {plain}\n\
         [pool.api]\napi-tls = {api}\n[route.api]\nsni = api.example.com\npool = api\n"
    );
    let (_p2, addr2) = proxy_with(&config, &[]);
    let mut s = connect(addr2);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("X-Served-By: plain1"), "{out}");
}

#[test]
fn a_reload_storm_moving_a_path_between_pools_with_broken_configs_fails_no_request_and_each_sees_one_table() {
    let (_a, a) = dummy("a1");
    let (_b, b) = dummy("b1");
    let (_w, w) = dummy("w1");
    let config = |to: &str| {
        format!(
            "[proxy]\nmode = http\nworkers = 32\n[health]\nenabled = false\n[backends]\nw1 = {w}\n\
             [pool.a]\na1 = {a}\n[pool.b]\nb1 = {b}\n\
             [route.moving]\npath = /moving\npool = {to}\n[route.other]\npath = /other\npool = {}\n",
            if to == "a" { "b" } else { "a" }
        )
    };
    let (p, addr) = proxy_with(&config("a"), &[]);
    let path = p.dir().join("config.ini");
    // Keep-alive clients: each request on a kept connection sees the table in force when its
    // head is read.
    let load = Load::start(4, move |_| {
        let mut wire = lbproxy::h1::Wire::new(connect(addr));
        move || -> Result<(), String> {
            wire.stream.write_all(b"GET /moving HTTP/1.1\r\nHost: t\r\n\r\n").map_err(|e| e.to_string())?;
            let r = read_response(&mut wire, "GET");
            match (r.status, served_by(&r)) {
                (200, "a1" | "b1") => Ok(()),
                other => Err(format!("/moving answered {other:?}")),
            }
        }
    });
    load.wait_ok(20);
    for i in 0..20 {
        let to = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(&path, config(to)).expect("rewrite");
        let mark = p.mark();
        p.signal("HUP");
        p.wait_for_since(mark, "reload: ");
        // Once the reload is logged, the new table is in force for every new request.
        let r = request(addr, "t", "/moving", "");
        assert_eq!((r.status, served_by(&r)), (200, &*format!("{to}1")), "after reload {i}");
        let r = request(addr, "t", "/other", "");
        assert_eq!((r.status, served_by(&r)), (200, if to == "a" { "b1" } else { "a1" }), "after reload {i}");
        // A broken config mid-storm (a route to a pool that is not there) is refused whole: the
        // table in force stays.
        if i % 5 == 4 {
            std::fs::write(&path, config(to).replace("pool = a\n", "pool = nowhere\n")).expect("rewrite");
            let mark = p.mark();
            p.signal("HUP");
            p.wait_for_since(mark, "reload rejected");
            let r = request(addr, "t", "/moving", "");
            assert_eq!((r.status, served_by(&r)), (200, &*format!("{to}1")), "after broken reload {i}");
        }
    }
    let served = load.finish_without_failures();
    assert!(served >= 20, "{served}");
}

#[test]
fn health_checks_follow_each_pools_path_and_retries_stay_in_the_chosen_pool() {
    let (_web, web) = dummy("web1");
    let (_api, api) = dummy("api1");
    let (_sick, sick) = dummy("sick1");
    let (_dead_socket, dead) = dead_addr();
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n\
         [health]\ninterval_ms = 100\nfall = 2\nrise = 2\n[admin]\nlisten = 127.0.0.1:0\n\
         [backends]\nweb1 = {web}\n\
         [pool.api]\napi1 = {api}\napi-dead = {dead}\n\
         [pool.sick]\nhealth_path = /health?status=503\nsick1 = {sick}\n\
         [route.api]\npath = /api\npool = api\n[route.sick]\npath = /sick\npool = sick\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    // The pool's own health path fails; the default pool's (/health) passes on its member.
    let down = p.wait_for(&format!("sick1 {sick} DOWN"));
    assert!(down.contains("status 503"), "{down}");
    // A member refusing connections is retried on its pool's other member, never elsewhere.
    for _ in 0..6 {
        let r = request(addr, "h", "/api/x", "");
        assert_eq!((r.status, served_by(&r)), (200, "api1"), "{}", r.text());
    }
    let r = request(addr, "h", "/sick", "");
    assert_eq!(r.status, 503, "the sick pool has no member up; web1 is not borrowed: {}", r.text());
    let r = request(addr, "h", "/", "");
    assert_eq!((r.status, served_by(&r)), (200, "web1"));
    let admin = admin_addr(&p);
    assert_eq!(backend_stats(admin, "web1")["state"], "up", "{}", proxy_stats(admin));
}

#[test]
fn a_client_stalling_in_its_client_hello_is_closed_at_header_ms_and_others_are_routed_meanwhile() {
    let (_plain, plain) = dummy("plain1");
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 16\n[timeouts]\nheader_ms = 500\n[health]\nenabled = false\n\
         [backends]\nplain1 = {plain}\n[pool.api]\napi1 = {plain}\n[route.api]\nsni = api.example.com\npool = api\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mark = p.mark();
    // The first bytes of a TLS handshake record, then nothing.
    let mut stalled = connect(addr);
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).expect("send");
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("X-Served-By: plain1"), "{out}");
    // The terminal says why the default pool, as it names a route that matched.
    // (Either may be logged first on a busy machine: each is looked for from the start.)
    p.wait_for_since(mark, ": not TLS (or a malformed ClientHello): default pool");
    let line = p.wait_for_since(mark, "no complete TLS ClientHello within header_ms");
    assert!(line.contains("closing"), "{line}");
    let mut rest = Vec::new();
    assert_eq!(stalled.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0), "closed without a byte");
    // A client that waits for the server to speak first (SMTP, MySQL) is not TLS: after
    // header_ms it goes to the default pool, as HAProxy after inspect-delay.
    let mut quiet = connect(addr);
    p.wait_for_since(mark, ": nothing sent within header_ms: default pool");
    assert_eq!(exchange(&mut quiet, "hello"), "plain1");
}

/// A request routed by the old table just before a reload removes (here: renames) its pool
/// still goes to that pool's backend, as nginx's old workers finish what they started; before,
/// the pool was emptied under it and it got 503 "no backend is up". Made certain by a queue: the
/// pool's one backend takes one request at a time, the second waits for it across the reload.
#[test]
fn a_request_routed_before_a_reload_removes_its_pool_is_served_not_refused() {
    let (_d, backend) = dummy("api1");
    let config = |pool: &str| {
        format!(
            "[proxy]\nmode = http\nworkers = 16\n[timeouts]\nqueue_ms = 15000\n[health]\nenabled = false\n\
             [admin]\nlisten = 127.0.0.1:0\n[backends]\nweb1 = {backend}\n\
             [pool.{pool}]\napi1 = {backend} max_conns=1\n[route.api]\npath = /api\npool = {pool}\n"
        )
    };
    let (p, addr) = proxy_with(&config("api"), &[]);
    let admin = admin_addr(&p);
    let slow = std::thread::spawn(move || request(addr, "t", "/api/slow?delay_ms=1500", "").status);
    wait_until("the slow request holds the slot", || {
        proxy_stats(admin)["backends"].as_array().is_some_and(|b| b.iter().any(|b| b["active"] == 1))
    });
    let queued = std::thread::spawn(move || {
        let r = request(addr, "t", "/api/queued", "");
        (r.status, served_by(&r).to_string(), r.text())
    });
    wait_until("the second request waits in the queue", || proxy_stats(admin)["queued"].as_u64() >= Some(1));
    std::fs::write(p.dir().join("config.ini"), config("api2")).expect("rewrite");
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "reload: pool api removed");
    assert_eq!(slow.join().expect("slow"), 200);
    let (status, by, text) = queued.join().expect("queued");
    assert_eq!((status, by.as_str()), (200, "api1"), "{text}");
    // New requests take the new table's pool.
    assert_eq!(request(addr, "t", "/api/new", "").status, 200);
}
