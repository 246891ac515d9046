//! Outlier ejection and retry on status (issue #24, part 3), against members of the dummy's
//! fault lab that answer 503 every Nth request (`--fail-every N`): ejected after failures in a
//! row, back by themselves, out longer the second time, never more than `eject_max_percent` of
//! a pool; `retry_on` hides a 503 from GET clients (HAProxy's `retry-on`) and never replays a
//! POST.

use std::net::SocketAddr;

use crate::util::*;

fn outlier_proxy(backends: &[SocketAddr], proxy: &str, health: &str, http: &str) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n{proxy}\n[admin]\nlisten = 127.0.0.1:0\n\
         [http]\n{http}\n[health]\nenabled = false\nmax_fails = 0\n{health}\n{}",
        backends_section(backends)
    );
    proxy_with(&config, &[])
}

#[test]
fn a_member_failing_every_fifth_request_is_ejected_comes_back_and_is_ejected_longer_the_second_time() {
    let (_a, a) = dummy("steady");
    // Named app1 and app2 by backends_section.
    let (_f, f) = dummy_with("flaky", 0, &["--fail-every", "5"]);
    // One failure ejects (Envoy's consecutive_5xx = 1), for 1 s times the ejection count.
    let health = "eject_consecutive_5xx = 1\neject_base_ms = 1000\neject_max_ms = 10000";
    let (p, addr) = outlier_proxy(&[a, f], "", health, "");
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    let seen = |w: &mut lbproxy::h1::Wire<std::net::TcpStream>, needle: &str| -> (usize, usize) {
        // Requests until the line shows, bounded in count and time: (requests sent, 503s).
        let (mark, started) = (p.mark(), std::time::Instant::now());
        let (mut sent, mut failed) = (0, 0);
        while !p.lines_from(mark).iter().any(|l| l.contains(needle)) {
            assert!(
                sent < 1_000_000 && started.elapsed() < WAIT,
                "no {needle:?} after {sent} requests; log:\n{}",
                p.log_text()
            );
            failed += usize::from(get(w, "/", "").status == 503);
            sent += 1;
        }
        (sent, failed)
    };
    let (_, failed) = seen(&mut w, "EJECTED");
    assert_eq!(failed, 1, "its fifth request failed, and ejected it");
    let first = p.wait_for("EJECTED");
    assert!(
        first.contains("app2 ") && first.contains("out for 1000 ms") && !first.contains("ejection 2"),
        "{first}"
    );
    // Without active checks, nothing but time ends it.
    assert!(!first.contains("health check"), "{first}");
    // While it is out, the steady member takes everything; then the flaky one is back by itself,
    // and its first answer (its sixth request) is a good one.
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < WAIT, "the ejected member never came back; log:\n{}", p.log_text());
        let r = get(&mut w, "/", "");
        if r.header("X-Served-By") == Some("flaky") {
            assert_eq!(r.status, 200, "back, its sixth request is a good one");
            break;
        }
        assert_eq!(r.status, 200, "the steady member answers while the other is out");
    }
    let back = p.wait_for("BACK");
    assert!(back.contains("app2 ") && back.contains("BACK after its ejection ran out"), "{back}");
    // Its next fifth request fails within the second after it came back: out twice as long.
    seen(&mut w, "ejection 2");
    let second = p.wait_for("EJECTED");
    assert!(second.contains("app2 ") && second.contains("out for 2000 ms, ejection 2"), "{second}");
}

#[test]
fn three_of_four_members_failing_at_most_two_are_ejected_and_the_state_shows_it() {
    let (_g, good) = dummy("good");
    let failing: Vec<_> =
        (1..=3).map(|i| dummy_with(&format!("bad{i}"), 0, &["--fail-every", "1"])).collect();
    let mut backends = vec![good];
    backends.extend(failing.iter().map(|(_, addr)| *addr));
    let (p, addr) = outlier_proxy(&backends, "", "eject_base_ms = 60000", "");
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for _ in 0..200 {
        get(&mut w, "/", "");
    }
    p.wait_for("already ejected (eject_max_percent 50)");
    let ejected = p.log_text().lines().filter(|l| l.contains(" EJECTED after 5 failures in a row")).count();
    assert_eq!(ejected, 2, "half of four at most; log:\n{}", p.log_text());
    let stats = proxy_stats(admin_addr(&p));
    let states: Vec<&str> =
        stats["backends"].as_array().expect("backends").iter().filter_map(|b| b["state"].as_str()).collect();
    assert_eq!(states.iter().filter(|s| **s == "ejected").count(), 2, "{states:?}");
    assert_eq!(states.iter().filter(|s| **s == "up").count(), 2, "{states:?}");
    // The pool still answers: the good member and the one failing member left in rotation.
    let ok = (0..20).filter(|_| get(&mut w, "/", "").status == 200).count();
    assert!((8..=12).contains(&ok), "round-robin over the two left: {ok} of 20 good");
    // The summary at exit says so too.
    let mut p = p;
    p.signal("TERM");
    assert!(p.wait_exit().success());
    let summary = p.log_text();
    let ejected =
        summary.lines().filter(|l| l.contains("[INFO] backend app") && l.contains(" EJECTED total=")).count();
    assert_eq!(ejected, 2, "{summary}");
}

#[test]
fn retry_on_hides_a_members_503_from_get_clients_and_never_replays_a_post() {
    let (_g, good) = dummy("good");
    let (_b, bad) = dummy_with("bad", 0, &["--fail-every", "1"]);
    // Ejection off, so the failing member stays in rotation and every other request meets it.
    let proxy = "access_log = access.log\naccess_format = json";
    let (p, addr) =
        outlier_proxy(&[good, bad], proxy, "eject_consecutive_5xx = 0", "retry_on = 502, 503, 504");
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for i in 0..20 {
        let r = get(&mut w, &format!("/get/{i}"), "");
        assert_eq!((r.status, r.header("X-Served-By")), (200, Some("good")), "GET {i}");
    }
    let mut posts = Vec::new();
    for i in 0..10 {
        let body = format!("order {i}");
        let req = format!(
            "POST /post/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        posts.push(send_raw(addr, req.as_bytes(), "POST").0.status);
    }
    assert_eq!(posts.iter().filter(|s| **s == 503).count(), 5, "half met the failing member: {posts:?}");
    let admin = admin_addr(&p);
    wait_until("30 access lines", || proxy_stats(admin)["access_log"]["written"].as_u64() >= Some(30));
    let lines = std::fs::read_to_string(p.dir().join("access.log")).expect("access log");
    let mut retried = 0;
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let attempts = v["attempts"].as_u64().expect("attempts");
        match v["method"].as_str() {
            Some("GET") => {
                assert_eq!(v["status"], 200, "{line}");
                retried += usize::from(attempts == 2);
            }
            _ => assert_eq!(attempts, 1, "a POST is never replayed: {line}"),
        }
    }
    // Round-robin turns to the failing member at least every other time.
    assert!(retried >= 10, "{retried} GETs met the failing member first and were tried again");
    // backends_section names them app1 (good) and app2 (bad).
    let retry_line = p.wait_for("answered 503 (retry_on); retrying app1");
    assert!(retry_line.contains("app2: response head"), "{retry_line}");
}

/// A sticky cookie names a member that gets ejected: its clients go to another member (with
/// that member's cookie) for as long as the ejection lasts.
#[test]
fn a_sticky_cookie_does_not_hold_clients_on_an_ejected_member() {
    let (_g, good) = dummy("good");
    let (_b, bad) = dummy_with("bad", 0, &["--fail-every", "1"]);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n[health]\nenabled = false\n\
         max_fails = 0\neject_base_ms = 60000\n{}sticky = cookie\n",
        backends_section(&[good, bad])
    );
    let (p, addr) = proxy_with(&config, &[]);
    // The failing member's cookie, from one of its answers.
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    let cookie = loop {
        let r = get(&mut w, "/", "");
        assert_ne!(r.header("X-Served-By"), None, "a dummy answered");
        if r.header("X-Served-By") == Some("bad") {
            let set = r.header("Set-Cookie").expect("the member's cookie").to_string();
            break set.split(';').next().expect("pair").to_string();
        }
    };
    let with = format!("Cookie: {cookie}\r\n");
    let answers: Vec<_> = (0..10).map(|_| get(&mut w, "/", &with)).collect();
    let first_good = answers.iter().position(|r| r.status == 200).expect("a good answer once ejected");
    assert!(first_good <= 5, "ejected after 5 failures in a row; {first_good} failed first");
    assert!(answers[first_good..].iter().all(|r| r.header("X-Served-By") == Some("good")), "none back to it");
    assert!(answers[first_good].header("Set-Cookie").is_some(), "told its new member");
    assert!(p.wait_for("EJECTED").contains("app2 "));
}

/// Envoy's rule: a passing active check ends an ejection early. The member fails every request
/// but answers its health checks (`--fail-every` spares `/health`).
#[test]
fn a_passing_active_check_ends_an_ejection_early() {
    let (_g, good) = dummy("good");
    let (_b, bad) = dummy_with("bad", 0, &["--fail-every", "1"]);
    let health = "eject_base_ms = 200000\nmax_fails = 0";
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n[health]\nenabled = true\n\
         mode = http\ninterval_ms = 200\n{health}\n{}",
        backends_section(&[good, bad])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for _ in 0..10 {
        get(&mut w, "/", "");
    }
    let ejected = p.wait_for("EJECTED");
    assert!(
        ejected.contains("app2 ") && ejected.contains("out for 200000 ms or until a health check passes"),
        "{ejected}"
    );
    // Over three minutes out, yet the next passing check brings it back.
    let back = p.wait_for("BACK");
    assert!(back.contains("app2 ") && back.contains("after a passing check ended its ejection"), "{back}");
}

/// A member's pooled connection goes stale (it closes on the next request without answering),
/// the proxy reconnects to it, and the fresh connection answers 503: `retry_on` still sends
/// the GET on to the other member. The client never sees the 503.
#[test]
fn retry_on_still_applies_after_a_stale_pooled_connection_was_replaced() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_g, good) = dummy("good");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let flaky = listener.local_addr().expect("addr");
    let heads = std::sync::Arc::new(AtomicUsize::new(0));
    let (fresh_503s, seen) = (std::sync::Arc::new(AtomicUsize::new(0)), heads.clone());
    let answered = fresh_503s.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { return };
            let (seen, answered) = (seen.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.fetch_add(1, Ordering::SeqCst);
                        // The first connection answers once, then goes stale: its next request
                        // is read and the connection closed without an answer.
                        let reply: &[u8] = match (n, served) {
                            (0, 0) => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Served-By: flaky\r\n\r\nfirst"
                            }
                            (0, _) => return,
                            _ => {
                                answered.fetch_add(1, Ordering::SeqCst);
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
                            }
                        };
                        if s.write_all(reply).is_err() {
                            return;
                        }
                        served += 1;
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    // source-hash, so the reconnect after the stale connection picks the flaky member again.
    // backends_section names them app1 (flaky) and app2 (good).
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = source-hash\n[health]\nenabled = false\n\
         max_fails = 0\neject_consecutive_5xx = 0\n[http]\nretry_on = 503\n{}",
        backends_section(&[flaky, good])
    );
    let (p, addr) = proxy_with(&config, &[]);
    // A client address that hashes to the flaky member: its first answer says so.
    let mut w = (1..=32)
        .find_map(|k| {
            let mut w = lbproxy::h1::Wire::new(connect_from([127, 0, 0, k], addr));
            let r = get(&mut w, "/first", "");
            assert_eq!(r.status, 200, "from 127.0.0.{k}");
            (r.header("X-Served-By") == Some("flaky")).then_some(w)
        })
        .expect("some client address hashes to the flaky member");
    // Its pooled connection is stale now; the fresh one answers 503; the good member answers.
    let r = get(&mut w, "/again", "");
    assert_eq!(
        (r.status, r.header("X-Served-By")),
        (200, Some("good")),
        "the client never sees the 503; log:\n{}",
        p.log_text()
    );
    assert_eq!(heads.load(Ordering::SeqCst), 3, "the flaky member saw its first, stale and fresh requests");
    assert_eq!(fresh_503s.load(Ordering::SeqCst), 1, "the fresh connection answered 503");
    let retry_line = p.wait_for("answered 503 (retry_on); retrying app2");
    assert!(retry_line.contains("app1: response head"), "{retry_line}");
}
