//! The admin listener under abuse: idle and byte-dripping (slowloris) connections must not
//! delay a liveness probe, heads have one whole-request deadline (408, as HAProxy's
//! `timeout http-request`), and the number of open admin connections is capped.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// lbproxy::admin::HEAD_TIMEOUT.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// lbproxy::admin::MAX_PENDING.
const MAX_PENDING: usize = 256;
/// How soon /health must answer whatever else is open (issue #8: a liveness probe's budget).
const PROBE_BUDGET: Duration = Duration::from_millis(200);

/// A proxy with the admin listener on; no backend is ever contacted.
fn admin_proxy() -> (Proc, SocketAddr) {
    let (_dead, backend) = dead_addr();
    let config = format!(
        "[proxy]\nworkers = 4\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (p, _) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (p, admin)
}

/// GET /health on a new connection; how long the whole exchange took.
fn probe_health(admin: SocketAddr) -> Duration {
    let started = Instant::now();
    let resp = http_get(admin, "/health");
    let took = started.elapsed();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
    took
}

/// What a trickling client saw, and when (since its connect).
struct Trickled {
    bytes_sent: usize,
    reply: Vec<u8>,
    ended_after: Duration,
}

/// Sends a head that never ends, one byte per 150 ms (at most 40 bytes, 6 s), until the
/// server answers or closes. The 150 ms read timeout paces the bytes, so nothing sleeps.
fn trickle(admin: SocketAddr, started: crossbeam_channel::Sender<()>) -> Trickled {
    let connected = Instant::now();
    let mut s = TcpStream::connect(admin).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(150))).expect("timeout");
    let mut reply = Vec::new();
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    for (i, byte) in head.iter().take(40).enumerate() {
        if s.write_all(&[*byte]).is_err() {
            return Trickled { bytes_sent: i, reply, ended_after: connected.elapsed() };
        }
        if i == 0 {
            let _ = started.send(());
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() },
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                let _ = s.read_to_end(&mut reply);
                return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() },
        }
    }
    panic!("the server still waited for a head after 40 bytes over 6 s");
}

#[test]
fn admin_health_answers_within_200ms_beside_100_idle_and_20_trickling_connections() {
    let (_p, admin) = admin_proxy();
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(admin)).collect();
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let tricklers: Vec<_> = (0..20)
        .map(|_| {
            let started = started_tx.clone();
            thread::spawn(move || trickle(admin, started))
        })
        .collect();
    for _ in 0..20 {
        started_rx.recv_timeout(WAIT).expect("a trickler started sending");
    }

    // Several probes while all 120 are open (the tricklers for about 2 s more).
    for i in 0..5 {
        let took = probe_health(admin);
        assert!(took < PROBE_BUDGET, "probe {i}: /health took {took:?} beside 120 stalled connections");
    }
    let stats = http_get(admin, "/stats");
    assert_eq!(stats.status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats.text()).expect("/stats is JSON");
    assert!(stats["backends"].is_array(), "{stats}");

    // The whole-head deadline ends every trickler: 408 at about 2 s, not per byte and not never.
    for t in tricklers {
        let t = t.join().expect("trickler thread");
        let reply = String::from_utf8_lossy(&t.reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "trickler got {reply:?} after {} bytes", t.bytes_sent);
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply:?}");
        assert!(
            t.ended_after >= HEAD_TIMEOUT - Duration::from_millis(100),
            "ended after {:?}, before the 2 s head deadline",
            t.ended_after
        );
        assert!(
            t.ended_after < HEAD_TIMEOUT + Duration::from_secs(1),
            "ended after {:?}, long past the 2 s head deadline ({} bytes sent)",
            t.ended_after,
            t.bytes_sent
        );
    }
    // The idle ones got 408 too, and the server closed them.
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap_or_else(|e| panic!("idle {i}: {e}"));
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "idle {i} got {reply:?}");
    }
    assert!(probe_health(admin) < PROBE_BUDGET);
}

#[test]
fn admin_closes_the_oldest_connection_beyond_256_open() {
    let (_p, admin) = admin_proxy();
    let opened = Instant::now();
    let mut conns: Vec<TcpStream> = (0..MAX_PENDING + 20).map(|_| connect(admin)).collect();
    // The 20 oldest are closed to make room, at once and without a response; far sooner than
    // the head deadline that would otherwise answer them with 408.
    for (i, s) in conns.iter_mut().take(20).enumerate() {
        s.set_read_timeout(Some(HEAD_TIMEOUT / 2)).expect("timeout");
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("oldest {i}: got {:?}, not a close", String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("oldest {i}: {e} after {:?}: not closed", opened.elapsed()),
        }
    }
    assert!(opened.elapsed() < HEAD_TIMEOUT, "closed only after {:?}", opened.elapsed());
    // The newest are still being served: a request on one is answered.
    let newest = conns.last_mut().expect("a connection");
    newest.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut wire = lbproxy::h1::Wire::new(newest.try_clone().expect("clone"));
    assert_eq!(read_response(&mut wire, "GET").text(), "ok\n");
    assert!(probe_health(admin) < PROBE_BUDGET);
}

#[test]
fn admin_answers_bad_heads_with_400_or_431_and_405_names_get() {
    let (_p, admin) = admin_proxy();
    let (resp, _) = send_raw(admin, b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", "GET");
    assert_eq!(resp.status, 400);
    let huge = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let (resp, _) = send_raw(admin, huge.as_bytes(), "GET");
    assert_eq!(resp.status, 431);
    let (resp, _) = send_raw(admin, b"POST /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "POST");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    // Every admin response is dated (RFC 9110 §6.6.1).
    let date = resp.header("date").expect("a Date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "Date {date:?}");
    // HEAD is GET without the body, as every general-purpose server answers it (RFC 9110 9.3.2).
    let get = http_get(admin, "/stats");
    let (head, _) = send_raw(admin, b"HEAD /stats HTTP/1.1\r\nHost: t\r\n\r\n", "HEAD");
    assert_eq!((head.status, head.header("content-type")), (200, Some("application/json")));
    let length: usize = head.header("content-length").and_then(|n| n.parse().ok()).expect("Content-Length");
    assert!(head.text().is_empty() && length > 100 && get.status == 200, "{length}");
}

// The runtime API: POST /backends/NAME/drain|maint|ready|weight?value=N (HAProxy's
// `set server state drain|maint|ready` and `set server weight`, over HTTP).

/// POST `path` to the admin listener, with `Authorization: Bearer token` when given.
fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    send_raw(admin, raw.as_bytes(), "POST").0
}

fn json(resp: &Resp) -> serde_json::Value {
    serde_json::from_str(&resp.text()).unwrap_or_else(|e| panic!("{e}: {:?}", resp.text()))
}

/// The /stats entry of backend `name`.
fn stats_of(admin: SocketAddr, name: &str) -> serde_json::Value {
    let stats = json(&http_get(admin, "/stats"));
    let found = stats["backends"].as_array().expect("backends").iter().find(|b| b["name"] == name).cloned();
    found.unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// An HTTP proxy over `addrs` (app1..) with the admin listener on and `admin_extra` lines in
/// `[admin]`; health checks as `health`.
fn api_proxy(addrs: &[SocketAddr], admin_extra: &str, health: &str) -> (Proc, SocketAddr, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n[health]\n{health}\n[admin]\nlisten = 127.0.0.1:0\n{admin_extra}\n{}",
        backends_section(addrs)
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (p, addr, admin)
}

#[test]
fn api_drain_maint_ready_and_weight_answer_json_log_at_warn_and_refuse_unknown_names_and_bad_values() {
    let (_d, a) = dummy("app1");
    let (p, _addr, admin) = api_proxy(&[a], "", "enabled = false\nslowstart_ms = 60000");
    let resp = post(admin, "/backends/app1/drain", None);
    assert_eq!((resp.status, resp.header("content-type")), (200, Some("application/json")));
    let b = json(&resp);
    assert_eq!(
        (b["name"].as_str(), b["state"].as_str(), b["admin"].as_str()),
        (Some("app1"), Some("draining"), Some("drain"))
    );
    let line = p.wait_for("app1 -> drain (was ready)");
    assert!(line.contains("[WARN]") && line.contains("admin 127.0.0.1:"), "{line}");
    let b = json(&post(admin, "/backends/app1/maint", None));
    assert_eq!(b["state"], "maintenance");
    let stats = stats_of(admin, "app1");
    assert_eq!(stats["state"], "maintenance", "/stats agrees");
    // The answer is the backend as /stats shows it, field for field (pool and tunnels too).
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&b), keys(&stats));
    assert_eq!((&b["pool"], &b["tunnels"]), (&"default".into(), &0.into()), "{b}");
    // Back in rotation through slow start (HAProxy's `slowstart` applies to `ready` too).
    let b = json(&post(admin, "/backends/app1/ready", None));
    assert_eq!((b["state"].as_str(), b["slow_start"].as_bool()), (Some("up"), Some(true)), "{b}");
    assert!(b["effective_weight"].as_f64().is_some_and(|w| w < 1.0), "{b}");
    let b = json(&post(admin, "/backends/app1/weight?value=7", None));
    assert_eq!((b["weight"].as_u64(), b["state"].as_str()), (Some(7), Some("up")));
    p.wait_for("app1 weight 1 -> 7");
    assert_eq!(json(&post(admin, "/backends/app1/weight?value=0", None))["weight"], 0);
    // Up to the file's largest weight, so any weight the file gave can be set back.
    assert_eq!(json(&post(admin, "/backends/app1/weight?value=1000", None))["weight"], 1000);
    for bad in ["value=1001", "value=-1", "value=x", "", "value="] {
        let resp = post(admin, &format!("/backends/app1/weight?{bad}"), None);
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
        assert!(json(&resp)["error"].as_str().is_some_and(|e| e.contains("0..=1000")), "{}", resp.text());
    }
    assert_eq!(stats_of(admin, "app1")["weight"], 1000, "a refused value changes nothing");
    let resp = post(admin, "/backends/nope/drain", None);
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("no backend named 'nope'"), "{}", resp.text());
    assert_eq!(post(admin, "/backends/app1/explode", None).status, 404);
    let (resp, _) = send_raw(admin, b"GET /backends/app1/drain HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!((resp.status, resp.header("allow")), (405, Some("POST")));
    assert_eq!(stats_of(admin, "app1")["state"], "up", "a GET changes nothing");
}

/// A page of another origin, open in the operator's browser, cannot drive the API (a form or a
/// fetch: cross-site request forgery), even with no token set, nor one whose name DNS rebinds
/// to the listener; the dashboard's own page and clients that are not browsers (curl sends
/// neither header) can.
#[test]
fn api_posts_from_a_page_of_another_origin_get_403_and_change_nothing() {
    let (_d, a) = dummy("app1");
    let (p, _addr, admin) = api_proxy(&[a], "", "enabled = false");
    let own = format!("Host: {admin}\r\n");
    let refused = [
        format!("{own}Origin: http://evil.example\r\n"),
        format!("{own}Origin: null\r\n"),
        format!("{own}Origin: http://{admin}\r\nSec-Fetch-Site: cross-site\r\n"),
        format!("{own}Sec-Fetch-Site: same-site\r\n"),
        // DNS rebinding: a hostile page's own name, resolved to the listener, is same-origin.
        format!("Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n", port = admin.port()),
    ];
    for fields in &refused {
        let raw = format!("POST /backends/app1/drain HTTP/1.1\r\n{fields}Content-Length: 0\r\n\r\n");
        let resp = send_raw(admin, raw.as_bytes(), "POST").0;
        assert_eq!(resp.status, 403, "{fields}: {}", resp.text());
    }
    p.wait_for("POST /backends/app1/drain refused: sent by a page of another origin");
    assert_eq!(stats_of(admin, "app1")["state"], "up", "a refused POST changes nothing");
    for (fields, state) in [
        (format!("{own}Origin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\n"), "draining"),
        (format!("{own}Origin: http://{admin}\r\n"), "maintenance"),
    ] {
        let action = if state == "draining" { "drain" } else { "maint" };
        let raw = format!("POST /backends/app1/{action} HTTP/1.1\r\n{fields}Content-Length: 0\r\n\r\n");
        let resp = send_raw(admin, raw.as_bytes(), "POST").0;
        assert_eq!((resp.status, json(&resp)["state"].as_str()), (200, Some(state)), "{fields}");
    }
}

#[test]
fn api_token_is_required_on_every_post_and_gets_401_when_missing_or_wrong() {
    let (_d, a) = dummy("app1");
    let (p, _addr, admin) = api_proxy(&[a], "token = s3cret-token", "enabled = false");
    for token in [None, Some("wrong-token"), Some("s3cret-tokenX"), Some("s3cret-toke")] {
        let resp = post(admin, "/backends/app1/drain", token);
        assert_eq!(resp.status, 401, "{token:?}");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    p.wait_for("POST /backends/app1/drain refused: no valid bearer token");
    assert_eq!(stats_of(admin, "app1")["state"], "up", "a refused POST changes nothing");
    // Reading needs no token; the listener's default address stays loopback.
    assert_eq!(http_get(admin, "/stats").status, 200);
    assert!(admin.ip().is_loopback());
    let resp = post(admin, "/backends/app1/drain", Some("s3cret-token"));
    assert_eq!((resp.status, json(&resp)["state"].as_str()), (200, Some("draining")));
    // With a token, the listener may be named by a domain (no DNS-rebinding guard is needed).
    let raw = "POST /backends/app1/maint HTTP/1.1\r\nHost: lb-admin.example\r\n\
               Authorization: Bearer s3cret-token\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(send_raw(admin, raw.as_bytes(), "POST").0.status, 200);
}

#[test]
fn api_drain_and_ready_under_load_lose_no_request_and_a_drained_backend_gets_none() {
    let backends = dummies(2);
    let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    // A short slow start, so `ready` visibly ramps and the backend is back within seconds.
    let (_p, addr, admin) = api_proxy(&addrs, "", "enabled = false\nslowstart_ms = 2000");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four keep-alive clients, each request checked; bounded by count as well as by `stop`.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut wire = lbproxy::h1::Wire::new(connect(addr));
                for _ in 0..200_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let resp = get(&mut wire, "/", "");
                    if resp.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(resp.status);
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let total = |name: &str| stats_of(admin, name)["total"].as_u64().expect("total");
    let wait_for_traffic = |name: &str, from: u64| {
        let deadline = Instant::now() + WAIT;
        while total(name) < from + 50 {
            assert!(Instant::now() < deadline, "{name} got no traffic");
        }
    };
    wait_for_traffic("app1", 0);
    assert_eq!(json(&post(admin, "/backends/app1/drain", None))["state"], "draining");
    // A request picked just before the drain may still finish there; after that, none. Picks
    // are made one at a time under the balancer's lock, the drain is not: once app2's total
    // has moved on, a pick begun before the drain has taken its slot.
    let app2_at = total("app2");
    wait_until("a pick after the drain", || total("app2") > app2_at);
    let deadline = Instant::now() + WAIT;
    while stats_of(admin, "app1")["active"] != 0 {
        assert!(Instant::now() < deadline, "app1's requests never finished");
    }
    let drained_at = total("app1");
    wait_for_traffic("app2", total("app2") + 500);
    assert_eq!(total("app1"), drained_at, "a drained backend gets no new request");
    // Back in rotation through slow start (HAProxy's `slowstart` applies to `ready` too).
    let b = json(&post(admin, "/backends/app1/ready", None));
    assert_eq!((b["state"].as_str(), b["slow_start"].as_bool()), (Some("up"), Some(true)), "{b}");
    assert!(b["effective_weight"].as_f64().is_some_and(|w| w < 1.0), "{b}");
    wait_for_traffic("app1", drained_at);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for t in load {
        let (ok, failed) = t.join().expect("load thread");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        served += ok;
    }
    // 50 before the drain, 500 during it and 50 after: every one of them answered 200.
    assert!(served >= 600, "{served} requests");
}

#[test]
fn api_change_survives_a_reload_that_keeps_its_line_and_ends_with_one_that_changes_it() {
    let backends = dummies(2);
    let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    let (p, _addr, admin) = api_proxy(&addrs, "", "enabled = false");
    post(admin, "/backends/app1/drain", None);
    post(admin, "/backends/app2/weight?value=9", None);
    p.signal("HUP");
    p.wait_for("reload: 2 unchanged");
    assert_eq!(stats_of(admin, "app1")["state"], "draining", "an unchanged line keeps the runtime state");
    assert_eq!(stats_of(admin, "app2")["weight"], 9, "and the runtime weight");
    let config = std::fs::read_to_string(p.dir().join("config.ini")).expect("config");
    let changed = config.replace(&format!("app1 = {}", addrs[0]), &format!("app1 = {} weight=3", addrs[0]));
    assert_ne!(changed, config);
    std::fs::write(p.dir().join("config.ini"), changed).expect("rewrite");
    p.signal("HUP");
    p.wait_for("reload: changed app1 weight 1->3");
    let app1 = stats_of(admin, "app1");
    assert_eq!(
        (app1["state"].as_str(), app1["weight"].as_u64()),
        (Some("up"), Some(3)),
        "a changed line resets it"
    );
    assert_eq!(stats_of(admin, "app2")["weight"], 9, "the other line was unchanged");
}

#[test]
fn api_maint_pauses_health_checks_and_drain_does_not() {
    let backends = dummies(2);
    let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    let (_p, _addr, admin) = api_proxy(&addrs, "", "interval_ms = 100\ntimeout_ms = 500");
    let checked = |name: &str| stats_of(admin, name)["last_check"]["time"].as_f64();
    let deadline = Instant::now() + WAIT;
    while checked("app1").is_none() || checked("app2").is_none() {
        assert!(Instant::now() < deadline, "no health check ran");
    }
    post(admin, "/backends/app1/maint", None);
    post(admin, "/backends/app2/drain", None);
    // A check already under way may still land: take app1's time after the next round.
    let wait_rounds = |n: usize| {
        for _ in 0..n {
            let before = checked("app2");
            let deadline = Instant::now() + WAIT;
            while checked("app2") == before {
                assert!(Instant::now() < deadline, "a drained backend is still checked");
            }
        }
    };
    // Two rounds: the checks of one round run at once, so app1's check in a round begun
    // before the POST may land after that round's app2 check.
    wait_rounds(2);
    let paused_at = checked("app1");
    wait_rounds(3);
    assert_eq!(checked("app1"), paused_at, "no check of a backend in maintenance");
    post(admin, "/backends/app1/ready", None);
    let deadline = Instant::now() + WAIT;
    while checked("app1") == paused_at {
        assert!(Instant::now() < deadline, "checks resume after ready");
    }
}
