//! Per-client policy (issue #23, `[limits]`): rate and connection limits per client address,
//! allow and deny, and `X-Forwarded-For` believed only from trusted proxies. Distinct clients
//! are distinct loopback source addresses (127.0.0.2, 127.0.0.3), bound before connecting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::util::*;

fn limited_proxy(mode: &str, limits: &str, backend: SocketAddr) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = {mode}\nworkers = 16\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n\
         [limits]\n{limits}\n[backends]\napp1 = {backend}\n"
    );
    proxy_with(&config, &[])
}

fn wire_from(from: [u8; 4], addr: SocketAddr) -> lbproxy::h1::Wire<TcpStream> {
    lbproxy::h1::Wire::new(connect_from(from, addr))
}

#[test]
fn a_burst_over_the_rate_gets_429_with_retry_after_and_other_clients_are_unaffected() {
    let (_d, backend) = dummy("app1");
    let (p, addr) = limited_proxy("http", "rate = 10/s\nburst = 5", backend);
    let mut w = wire_from([127, 0, 0, 2], addr);
    // Pipelined in one write, so the 30 arrive within a few ms whatever the machine's load (the
    // bucket refills one per 100 ms).
    let burst = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(30) + "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n";
    w.stream.write_all(burst.as_bytes()).expect("send");
    let answers: Vec<_> = (0..30).map(|_| read_response(&mut w, "GET")).collect();
    // A HEAD refused gets the 429 without a body, so the connection's next response is whole.
    let head = read_response(&mut w, "HEAD");
    assert_eq!((head.status, head.body.len()), (429, 0));
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 24, "{statuses:?}");
    for refused in answers.iter().filter(|r| r.status == 429) {
        assert_eq!(refused.header("Retry-After"), Some("1"), "whole seconds, rounded up");
    }
    // Another address has its own bucket.
    let mut other = wire_from([127, 0, 0, 3], addr);
    assert_eq!(get(&mut other, "/", "").status, 200);
    // The first client is served again once its bucket refills (1 per 100 ms), on the same
    // connection, which the 429s kept open.
    let started = Instant::now();
    while get(&mut w, "/", "").status != 200 {
        assert!(started.elapsed() < WAIT, "never served again");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Logged once per address per 10 s, not once per refusal.
    p.wait_for("client 127.0.0.2 refused: over [limits] rate");
    let log = p.log_text();
    assert_eq!(log.matches("client 127.0.0.2 refused: over [limits] rate").count(), 1, "{log}");
    let stats = proxy_stats(admin_addr(&p));
    assert!(stats["refused"]["rate"].as_u64().expect("rate") >= 25, "{stats}");
    let metrics = http_get(admin_addr(&p), "/metrics").text();
    assert!(metrics.contains("lb_clients_refused_total{why=\"rate\"}"), "{metrics}");
}

#[test]
fn the_connection_over_the_per_client_limit_is_refused_in_both_modes_while_others_are_served() {
    let (_d, backend) = dummy("app1");
    let (_p, addr) = limited_proxy("http", "max_conns_per_client = 2", backend);
    let mut held: Vec<_> = (0..2).map(|_| wire_from([127, 0, 0, 2], addr)).collect();
    for w in &mut held {
        assert_eq!(get(w, "/", "").status, 200);
    }
    let mut third = wire_from([127, 0, 0, 2], addr);
    let r = get(&mut third, "/", "");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(closed(&mut third), "closed after the 429");
    assert_eq!(get(&mut wire_from([127, 0, 0, 3], addr), "/", "").status, 200);
    // One of the two closes: its slot is given back.
    drop(held.pop());
    wait_until("a slot given back", || get(&mut wire_from([127, 0, 0, 2], addr), "/", "").status == 200);

    let (_p, addr) = limited_proxy("tcp", "max_conns_per_client = 1", backend);
    let mut first = connect_from([127, 0, 0, 2], addr);
    assert_eq!(exchange(&mut first, "hello"), "app1");
    let mut second = connect_from([127, 0, 0, 2], addr);
    let _ = second.write_all(b"hello\n");
    let mut buf = [0u8; 64];
    assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)), "closed at accept");
    let mut other = connect_from([127, 0, 0, 3], addr);
    assert_eq!(exchange(&mut other, "hello"), "app1");
}

#[test]
fn deny_and_allow_refuse_by_address_in_both_modes() {
    let (_d, backend) = dummy("app1");
    let limits = "allow = 127.0.0.0/8\ndeny = 127.0.0.2";
    let (p, addr) = limited_proxy("http", limits, backend);
    let r = get(&mut wire_from([127, 0, 0, 2], addr), "/", "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(get(&mut wire_from([127, 0, 0, 3], addr), "/", "").status, 200);
    p.wait_for("client 127.0.0.2 refused: not allowed");
    let (_p, addr) = limited_proxy("tcp", "allow = 127.0.0.3", backend);
    let mut denied = connect_from([127, 0, 0, 2], addr);
    let _ = denied.write_all(b"hello\n");
    let mut buf = [0u8; 64];
    assert!(matches!(denied.read(&mut buf), Ok(0) | Err(_)), "closed at accept");
    let mut allowed = connect_from([127, 0, 0, 3], addr);
    assert_eq!(exchange(&mut allowed, "hello"), "app1");
}

/// A connection refused at accept (`deny`, `max_conns_per_client`) gets its access line, as
/// nginx logs its `deny` 403s and `limit_conn` refusals (before, only /stats counted them).
#[test]
fn a_connection_refused_by_limits_has_its_access_line() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\naccess_log = access.log\naccess_format = combined\n\
         [health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n\
         [limits]\ndeny = 127.0.0.2\nmax_conns_per_client = 1\n[backends]\napp1 = {backend}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    assert_eq!(get(&mut wire_from([127, 0, 0, 2], addr), "/", "").status, 403);
    let mut first = wire_from([127, 0, 0, 3], addr);
    assert_eq!(get(&mut first, "/", "").status, 200);
    assert_eq!(get(&mut wire_from([127, 0, 0, 3], addr), "/", "").status, 429);
    wait_until("3 access lines", || proxy_stats(admin)["access_log"]["written"].as_u64() >= Some(3));
    let log = std::fs::read_to_string(p.dir().join("access.log")).expect("access.log");
    let line = |status: &str, from: &str| log.lines().any(|l| l.starts_with(from) && l.contains(status));
    assert!(line("\" 403 ", "127.0.0.2 "), "{log}");
    assert!(line("\" 200 ", "127.0.0.3 ") && line("\" 429 ", "127.0.0.3 "), "{log}");

    // In tcp mode too, as nginx's stream module logs its `deny`.
    let tcp = config.replace("mode = http", "mode = tcp").replace("combined", "json");
    let (p, addr) = proxy_with(&tcp, &[]);
    let admin = admin_addr(&p);
    let mut denied = connect_from([127, 0, 0, 2], addr);
    assert!(matches!(denied.read(&mut [0u8; 16]), Ok(0) | Err(_)), "closed at accept");
    let mut first = connect_from([127, 0, 0, 3], addr);
    assert_eq!(exchange(&mut first, "hello"), "app1");
    let mut second = connect_from([127, 0, 0, 3], addr);
    assert!(matches!(second.read(&mut [0u8; 16]), Ok(0) | Err(_)), "closed: one at a time");
    wait_until("2 access lines", || proxy_stats(admin)["access_log"]["written"].as_u64() >= Some(2));
    let log = std::fs::read_to_string(p.dir().join("access.log")).expect("access.log");
    let json: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let refused = |status: u64, from: &str| {
        json.iter().any(|v| v["status"] == status && v["client"] == from && v["protocol"] == "TCP")
    };
    assert!(refused(403, "127.0.0.2") && refused(429, "127.0.0.3"), "{log}");
    drop(first);
}

/// `deny` judges every request, as nginx's does: a reload that denies a client reaches its
/// keep-alive connection already open, which got 200 on every request before.
#[test]
fn a_reload_that_denies_a_client_reaches_its_open_keep_alive_connection() {
    let (_d, backend) = dummy("app1");
    let (p, addr) = limited_proxy("http", "deny = 192.0.2.1", backend);
    let mut kept = wire_from([127, 0, 0, 2], addr);
    assert_eq!(get(&mut kept, "/", "").status, 200);
    let path = p.dir().join("config.ini");
    let config = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, config.replace("deny = 192.0.2.1", "deny = 127.0.0.2")).expect("rewrite");
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "[limits] updated");
    let r = get(&mut kept, "/", "");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(get(&mut wire_from([127, 0, 0, 3], addr), "/", "").status, 200, "others still served");
}

#[test]
fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let (_d, backend) = dummy("app1");
    let limits = "trusted_proxies = 127.0.0.2\ndeny = 198.51.100.7";
    let (p, addr) = limited_proxy("http", limits, backend);
    let spoof = "X-Forwarded-For: 198.51.100.7\r\n";
    // From the trusted proxy: the forwarded client is the one judged, and denied.
    let r = get(&mut wire_from([127, 0, 0, 2], addr), "/", spoof);
    assert_eq!(r.status, 403, "{}", r.text());
    // An allowed one is logged as the client, via the proxy; the scheme it used (the trusted
    // proxy terminated its TLS) reaches the backend, as Traefik keeps it from `trustedIPs`.
    let tls_in_front = "X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\n";
    let r = get(&mut wire_from([127, 0, 0, 2], addr), "/echo", tls_in_front);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("X-Forwarded-Proto: https\r\n"), "{}", r.text());
    p.wait_for("203.0.113.5 via 127.0.0.2:");
    // From anyone else the header is appended to, never believed, and the scheme is the proxy's.
    let r =
        get(&mut wire_from([127, 0, 0, 3], addr), "/echo", &format!("{spoof}X-Forwarded-Proto: https\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("X-Forwarded-For: 198.51.100.7, 127.0.0.3\r\n"), "{}", r.text());
    assert!(r.text().contains("X-Forwarded-Proto: http\r\n"), "{}", r.text());
}

fn sticky_config(addrs: &[SocketAddr]) -> String {
    format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n{}sticky = cookie\n",
        backends_section(addrs)
    )
}

/// `lb=<id>` from a response's `Set-Cookie`.
fn cookie_of(r: &crate::util::Resp) -> String {
    let set = r.header("Set-Cookie").unwrap_or_else(|| panic!("no Set-Cookie: {:?}", r.headers));
    assert!(set.ends_with("; Path=/; HttpOnly"), "{set}");
    set.split(';').next().expect("pair").to_string()
}

#[test]
fn a_sticky_cookie_keeps_a_client_on_its_member_through_drain_and_across_instances() {
    let mut ds = dummies(3);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let (p, addr) = proxy_with(&sticky_config(&addrs), &[]);
    // New clients spread by the algorithm, each told its member.
    let first: Vec<_> = (0..3).map(|_| get(&mut wire_from([127, 0, 0, 2], addr), "/", "")).collect();
    let names: std::collections::BTreeSet<&str> =
        first.iter().filter_map(|r| r.header("X-Served-By")).collect();
    assert_eq!(names.len(), 3, "round-robin spreads new clients");
    let cookie = cookie_of(&first[0]);
    let member = first[0].header("X-Served-By").expect("served by").to_string();
    assert!(cookie.starts_with("lb=") && cookie.len() == 19, "{cookie}");
    let with = format!("Cookie: a=1; {cookie}; b=2\r\n");
    let mut w = wire_from([127, 0, 0, 3], addr);
    for _ in 0..50 {
        let r = get(&mut w, "/", &with);
        assert_eq!(r.header("X-Served-By"), Some(member.as_str()));
        assert_eq!(r.header("Set-Cookie"), None, "the cookie it sent is still right");
    }
    // The backend never sees the cookie; the client's others pass untouched.
    let echo = get(&mut w, "/echo", &with).text();
    assert!(echo.contains("Cookie: a=1; b=2\r\n") && !echo.contains("lb="), "{echo}");
    p.wait_for(&format!("(sticky cookie: {member})"));
    // Draining keeps its sticky clients (what drain is for), and takes no new ones.
    let admin = admin_addr(&p);
    let drain =
        format!("POST /backends/{member}/drain HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(crate::util::send_raw(admin, drain.as_bytes(), "POST").0.status, 200);
    assert_eq!(get(&mut w, "/", &with).header("X-Served-By"), Some(member.as_str()));
    for _ in 0..4 {
        assert_ne!(
            get(&mut wire_from([127, 0, 0, 4], addr), "/", "").header("X-Served-By"),
            Some(member.as_str())
        );
    }
    // A second instance with the same configuration honours the first one's cookie.
    let (_p2, addr2) = proxy_with(&sticky_config(&addrs), &[]);
    assert_eq!(
        get(&mut wire_from([127, 0, 0, 3], addr2), "/", &with).header("X-Served-By"),
        Some(member.as_str())
    );
    // Its member stopped: the next request goes elsewhere, with a new cookie, and no error.
    let i = ds.iter().position(|(d, _)| d.log_text().contains(&member)).expect("the member's dummy");
    let (mut gone, _) = ds.remove(i);
    gone.signal("KILL");
    let _ = gone.wait_exit();
    let r = get(&mut wire_from([127, 0, 0, 3], addr), "/", &with);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("X-Served-By"), Some(member.as_str()));
    assert_ne!(cookie_of(&r), cookie);
    // A malformed cookie counts as none.
    let r = get(&mut wire_from([127, 0, 0, 3], addr), "/", "Cookie: lb=zz\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("Set-Cookie").is_some());
}

#[test]
fn sticky_is_a_config_error_in_tcp_mode() {
    let p = proxy_check("[proxy]\nmode = tcp\n[backends]\na = 127.0.0.1:1\nsticky = cookie\n");
    assert!(p.contains("sticky cookies need mode = http"), "{p}");
}

/// `proxy_server --check` on `config`: its output (stdout and stderr).
fn proxy_check(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.ini");
    std::fs::write(&path, config).expect("write");
    let out =
        std::process::Command::new(PROXY).arg("--config").arg(&path).arg("--check").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// A flood from 100,000 distinct addresses (127.1.0.0 up), one request each, beside a client
/// that keeps asking: the rate table holds at most `max_clients` addresses, the proxy's RSS stays
/// within 64 MiB, and the steady client gets every answer.
#[test]
fn a_flood_from_100000_addresses_keeps_the_table_and_memory_bounded_and_others_served() {
    let (_d, backend) = dummy("app1");
    let limits = "rate = 100/s\nburst = 10\nmax_clients = 5000";
    let (mut p, addr) = limited_proxy("http", limits, backend);
    let pid = p.child.id();
    // Well-behaved: 50 requests a second, half its rate.
    let steady = Load::start(1, move |_| {
        let mut w = wire_from([127, 0, 0, 9], addr);
        move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            match get(&mut w, "/", "").status {
                200 => Ok(()),
                s => Err(format!("steady client got {s}")),
            }
        }
    });
    let flood: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut answered = 0;
                for i in (t * 25_000)..((t + 1) * 25_000) {
                    let ip = (0x7f01_0000u32 + i).to_be_bytes();
                    let mut w = wire_from(ip, addr);
                    if get(&mut w, "/", "Connection: close\r\n").status == 200 {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let answered: u32 = flood.into_iter().map(|t| t.join().expect("flood thread")).sum();
    assert_eq!(answered, 100_000, "one request each, well under the rate: all answered");
    let served = steady.finish_without_failures();
    assert!(served > 0);
    let stats = proxy_stats(admin_addr(&p));
    let tracked = stats["clients_tracked"].as_u64().expect("clients_tracked");
    assert!(tracked <= 5000, "{tracked} addresses tracked");
    let rss_mib = proc_status(pid, "VmRSS:") / 1024;
    assert!(rss_mib <= 64, "RSS {rss_mib} MiB");
    p.signal("TERM");
    let _ = p.wait_exit();
}

#[test]
fn in_tcp_mode_the_rate_counts_new_connections_and_closes_the_excess_at_accept() {
    let (_d, backend) = dummy("app1");
    let (p, addr) = limited_proxy("tcp", "rate = 1/m\nburst = 1", backend);
    for _ in 0..2 {
        assert_eq!(exchange(&mut connect_from([127, 0, 0, 2], addr), "hello"), "app1");
    }
    let mut third = connect_from([127, 0, 0, 2], addr);
    let _ = third.write_all(b"hello\n");
    let mut buf = [0u8; 64];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)), "closed at accept");
    assert_eq!(exchange(&mut connect_from([127, 0, 0, 3], addr), "hello"), "app1");
    p.wait_for("client 127.0.0.2 refused: over [limits] rate");
}

#[test]
fn refused_clients_that_keep_sending_linger_in_the_parker_and_hold_no_worker() {
    // A client still sending after its 403 (or its 400) is drained for up to a second before
    // the close, as nginx's lingering_close, so that a reset cannot destroy the answer. That
    // wait is event-driven in nginx; here it is the parker's. In the workers, this crowd held
    // both of them for seconds and the client beside it waited.
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 2\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n\
         [limits]\ndeny = 127.9.0.0/16\n[backends]\napp1 = {backend}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let crowd = std::thread::spawn(move || {
        // 12 denied clients, and 12 whose head has two Hosts (400); each then sends a byte every
        // 50 ms, until told or for at most a minute.
        let mut all: Vec<TcpStream> = (1..=12).map(|i| connect_from([127, 9, 1, i], addr)).collect();
        all.extend((0..12).map(|_| connect(addr)));
        for (i, s) in all.iter_mut().enumerate() {
            let first: &[u8] = if i < 12 { b"G" } else { b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" };
            s.write_all(first).expect("send");
        }
        let deadline = Instant::now() + WAIT;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            for s in &mut all {
                let _ = s.write_all(b"x");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    wait_until("the 12 denied clients refused", || {
        proxy_stats(admin)["refused"]["denied"].as_u64() == Some(12)
    });
    for _ in 0..10 {
        let started = Instant::now();
        let mut w = lbproxy::h1::Wire::new(connect(addr));
        assert_eq!(get(&mut w, "/", "").status, 200);
        let took = started.elapsed();
        // Lingering in the workers, it took seconds (7 s); a bound well above a busy machine's
        // scheduling delays.
        assert!(took < std::time::Duration::from_secs(2), "a request beside the crowd took {took:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    crowd.join().expect("crowd");
}
