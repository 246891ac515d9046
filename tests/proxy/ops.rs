//! Fault tolerance and live operations: health checks, passive detection, slow start, reload,
//! limits and queueing, all-down behaviour, source-hash, DNS members, stats and metrics.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn health_config(mode: &str, algorithm: &str, health: &str, addrs: &[SocketAddr]) -> String {
    format!(
        "[proxy]\nmode = {mode}\nalgorithm = {algorithm}\nworkers = 64\n[health]\ninterval_ms = 100\n{health}\n\
         [admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(addrs)
    )
}

/// A simulate_client run; killed (by pid) if the test ends before it does.
struct Load(Option<std::process::Child>);

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client(addr: SocketAddr, args: &[&str]) -> Load {
    let child = Command::new(CLIENT)
        .args(["--target", &addr.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("simulate_client");
    Load(Some(child))
}

fn finish(mut load: Load) -> String {
    let child = load.0.take().expect("running");
    let out = child.wait_with_output().expect("client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "client failed:\n{text}");
    assert!(text.contains("failures                        0"), "{text}");
    text
}

/// A backend stopped the way operators stop one (SIGTERM: fail /health, then close), under load
/// of new TCP connections: no client request fails, and after `fall` checks nothing goes there.
#[test]
fn a_backend_stopped_under_load_costs_no_request_and_leaves_rotation() {
    let mut ds: Vec<_> = (1..=3).map(|i| draining_dummy(&format!("app{i}"), 1500)).collect();
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let health = "mode = http\nfall = 2\nrise = 2";
    let (p, addr) = proxy_with(&health_config("tcp", "round-robin", health, &addrs), &[]);
    let load = client(addr, &["--clients", "4", "--requests", "600", "--hold-ms", "3"]);
    p.wait_for("conn 60 ");
    let (mut victim, _) = ds.remove(1);
    victim.signal("TERM");
    let down = p.wait_for(" DOWN after ");
    assert!(down.contains("app2 ") && down.contains("after 2 failed checks: status 503"), "{down}");
    // Picks are made one at a time under the balancer's lock, and the flip is not under it: one
    // pick begun before the flip may still count on app2 after the line. Once another member's
    // total has moved on, that pick is over, and app2's total can no longer grow.
    let admin = admin_addr(&p);
    let total = |name: &str| backend_stats(admin, name)["total"].as_u64().expect("total");
    let (app1, app3) = (total("app1"), total("app3"));
    wait_until("a pick after the flip", || total("app1") > app1 || total("app3") > app3);
    let app2 = total("app2");
    let report = finish(load);
    assert_eq!(victim.wait_exit().code(), Some(0));
    assert!(total("app1") > app1, "load went on after the flip");
    assert_eq!(total("app2"), app2, "nothing routed to the down backend");
    assert!(report.contains("app1") && report.contains("app3"), "{report}");
}

#[test]
fn http_mode_survives_a_killed_backend_by_retrying_idempotent_requests() {
    let mut ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (p, addr) = proxy_with(&health_config("http", "least-connections", "fall = 2", &addrs), &[]);
    let load = client(addr, &["--mode", "http", "--clients", "4", "--requests", "1500"]);
    // Under way: a hundred requests answered before the kill.
    let admin = admin_addr(&p);
    wait_until("100 requests", || {
        let stats = proxy_stats(admin);
        stats["requests"].as_u64().unwrap_or(0) >= 100
    });
    let (mut victim, _) = ds.remove(0);
    let _ = victim.child.kill(); // SIGKILL: in-flight requests are reset.
    let _ = victim.child.wait();
    let down = p.wait_for(" DOWN after ");
    assert!(down.contains("app1 "), "{down}");
    finish(load);
}

#[test]
fn a_restarted_backend_returns_after_rise_checks_with_slow_start() {
    let mut ds = dummies(2);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let config = health_config("tcp", "round-robin", "fall = 1\nrise = 2\nslowstart_ms = 4000", &addrs);
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let (mut victim, victim_addr) = ds.remove(1);
    victim.signal("TERM");
    victim.wait_exit();
    let down = p.wait_for(" DOWN after ");
    assert!(down.contains("app2 "), "{down}");
    let stats = proxy_stats(admin);
    assert_eq!(stats["backends"][1]["state"], "down");
    let _restarted = dummy_on("app2", victim_addr.port());
    let up = p.wait_for("UP after 2 successful checks");
    assert!(up.contains("app2"), "{up}");
    let stats = proxy_stats(admin);
    let app2 = &stats["backends"][1];
    assert_eq!((app2["name"].as_str(), app2["state"].as_str()), (Some("app2"), Some("up")));
    let w = app2["effective_weight"].as_f64().expect("weight");
    assert!(w > 0.0 && w < 1.0, "slow start shows in /stats: {w}");
    // Back in rotation: within a bounded number of connections one reaches it.
    let deadline = Instant::now() + WAIT;
    loop {
        if exchange(&mut connect(addr), "who") == "app2" {
            break;
        }
        assert!(Instant::now() < deadline, "app2 never came back");
    }
}

#[test]
fn sighup_adds_and_removes_backends_under_load_and_drains_the_removed() {
    let ds = dummies(3);
    let config = |names: &[usize], drain: u64| {
        let mut s = format!(
            "[proxy]\nalgorithm = round-robin\nworkers = 64\ndrain_timeout_ms = {drain}\n\
             [admin]\nlisten = 127.0.0.1:0\n[backends]\n"
        );
        for &i in names {
            s.push_str(&format!("app{} = {}\n", i + 1, ds[i].1));
        }
        s
    };
    let (p, addr) = proxy_with(&config(&[0, 1], 1500), &[]);
    let path = p.dir().join("config.ini");
    // A connection held on app2, which the reload removes.
    let mut held = connect(addr);
    let mut name = exchange(&mut held, "first");
    if name != "app2" {
        held = connect(addr);
        name = exchange(&mut held, "second");
    }
    assert_eq!(name, "app2");
    let load = client(addr, &["--clients", "3", "--requests", "300", "--hold-ms", "2"]);
    p.wait_for("conn 30 ");
    std::fs::write(&path, config(&[0, 2], 1500)).expect("rewrite config");
    p.signal("HUP");
    let summary = p.wait_for("reload: added app3; removed app2 (draining ");
    assert!(summary.contains("1 unchanged"), "{summary}");
    assert!(summary.contains("connection(s); any still open in 1500 ms are closed)"), "{summary}");
    // A connection accepted after the summary was logged picks from the new table (a pick
    // made before the swap may still be logged after it: those are older connections).
    let admin = admin_addr(&p);
    let stats = proxy_stats(admin);
    let accepted = stats["connections_accepted"].as_u64().expect("connections_accepted");
    assert_eq!(exchange(&mut held, "still here"), "app2", "the held connection keeps working");
    finish(load);
    let newer = |l: &&String| {
        let id = l.strip_prefix("conn ").or_else(|| l.split("] conn ").nth(1));
        id.and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > accepted)
    };
    let routed = |name: &str| {
        let log = p.log_text();
        let lines: Vec<String> = log.lines().map(str::to_string).collect();
        lines
            .iter()
            .filter(newer)
            .filter(|l| l.contains(&format!(" -> {name} ")) && l.contains(" connected in "))
            .count()
    };
    wait_until("the new backend gets traffic", || routed("app3") > 0);
    // After drain_timeout_ms the held connection is closed; every earlier line is in by then.
    p.wait_for("connection(s) to removed backends");
    assert_eq!(routed("app2"), 0, "the removed one gets none");
    let mut rest = Vec::new();
    held.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = held.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn a_broken_config_on_sighup_is_rejected_and_the_old_one_serves() {
    let ds = dummies(1);
    let (p, addr) = proxy(&[ds[0].1], "round-robin");
    let path = p.dir().join("config.ini");
    std::fs::write(&path, "[proxy]\nworkers = many\n[backends]\napp1 = 127.0.0.1\n").expect("write");
    p.signal("HUP");
    let first = p.wait_for("reload: ");
    assert!(first.contains("[proxy] workers: expected a whole number"), "{first}");
    p.wait_for("reload: ");
    p.wait_for("reload rejected (2 error(s)); the running configuration stays");
    assert_eq!(exchange(&mut connect(addr), "after"), "app1");
}

#[test]
fn max_conns_queues_up_to_queue_ms_in_tcp_mode() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nworkers = 16\n[timeouts]\nqueue_ms = 3000\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n[backends]\napp1 = {} max_conns=1\n",
        ds[0].1
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let mut first = connect(addr);
    exchange(&mut first, "one");
    // The second waits for the first's slot (queued, /stats says)...
    let mut second = connect(addr);
    std::io::Write::write_all(&mut second, b"two\n").expect("send");
    wait_until("the second queued", || backend_stats(admin, "app1")["queued"].as_u64() == Some(1));
    drop(first);
    assert_eq!(read_line(&mut second), "[app1] two", "served once the slot freed");
    // ...and a third gives up after queue_ms when the slot stays taken.
    let config = config.replace("queue_ms = 3000", "queue_ms = 300");
    std::fs::write(p.dir().join("config.ini"), &config).expect("write");
    drop(p);
    let (p, addr) = proxy_with(&config, &[]);
    let mut holder = connect(addr);
    exchange(&mut holder, "hold");
    // Timed from before the connect: queue_ms runs from the accept.
    let started = Instant::now();
    let mut third = connect(addr);
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(got.is_empty(), "closed without a reply");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
    p.wait_for("every backend is at max_conns");
}

#[test]
fn max_conns_answers_503_after_queue_ms_in_http_mode() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = http\n[timeouts]\nqueue_ms = 300\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n[backends]\napp1 = {} max_conns=1\n",
        ds[0].1
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let slow = std::thread::spawn(move || http_get(addr, "/?delay_ms=2000").status);
    wait_until("the slow request holds the slot", || {
        backend_stats(admin, "app1")["active"].as_u64() == Some(1)
    });
    let started = Instant::now();
    let r = http_get(addr, "/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("max_conns"));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(slow.join().expect("slow"), 200, "the request holding the slot completes");
    assert_eq!(http_get(addr, "/").status, 200, "served again once the slot is free");
}

#[test]
fn when_every_backend_is_down_tcp_closes_at_once_and_http_answers_503() {
    let (_s1, dead1) = dead_addr();
    let (_s2, dead2) = dead_addr();
    for mode in ["tcp", "http"] {
        let config = health_config(mode, "least-connections", "fall = 1", &[dead1, dead2]);
        let (p, addr) = proxy_with(&config, &[]);
        // Both go down; checks run in parallel, so in either order.
        let downs = [p.wait_for(" DOWN after 1 failed checks"), p.wait_for(" DOWN after 1 failed checks")];
        assert!(
            downs.iter().any(|l| l.contains("app1 ")) && downs.iter().any(|l| l.contains("app2 ")),
            "{downs:?}"
        );
        let started = Instant::now();
        if mode == "tcp" {
            let mut s = connect(addr);
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(got.is_empty());
        } else {
            let r = http_get(addr, "/");
            assert_eq!(r.status, 503);
            assert_eq!(r.header("Retry-After"), Some("1"));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{mode}: answered at once");
        p.wait_for("no backend is up");
        // Rate-limited: a burst logs one line, not one per connection.
        let mark = p.mark();
        for _ in 0..20 {
            if mode == "tcp" {
                let _ = connect(addr).read_to_end(&mut Vec::new());
            } else {
                http_get(addr, "/");
            }
        }
        let said = p
            .lines_from(mark)
            .iter()
            .filter(|l| l.contains("[WARN]") && l.contains("no backend is up"))
            .count();
        assert!(said <= 2, "{mode}: {said} lines for 20 refusals");
    }
}

fn from(source: [u8; 4], addr: SocketAddr) -> String {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((source, 0)).into()).expect("bind source");
    s.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    exchange(&mut s, "hi")
}

#[test]
fn source_hash_keeps_each_client_on_one_backend() {
    let ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = proxy(&addrs, "source-hash");
    let mut owner: HashMap<u8, String> = HashMap::new();
    for round in 0..3 {
        for last in 1..=30u8 {
            let name = from([127, 0, 0, last], addr);
            match owner.get(&last) {
                Some(first) => assert_eq!(first, &name, "client 127.0.0.{last} moved in round {round}"),
                None => {
                    owner.insert(last, name);
                }
            }
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "30 clients spread over all backends: {owner:?}");
}

#[test]
fn stats_and_metrics_describe_the_backends() {
    let ds = dummies(2);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let config = health_config("http", "round-robin", "", &addrs);
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").status, 200);
    }
    assert_eq!(http_get(admin, "/health").text(), "ok\n");
    // A slot is given back just after its response is flushed: wait (bounded) until the last
    // request's has been.
    let deadline = Instant::now() + WAIT;
    let stats = loop {
        let stats = proxy_stats(admin);
        let settled = stats["backends"].as_array().is_some_and(|bs| bs.iter().all(|b| b["active"] == 0));
        if settled || Instant::now() >= deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(stats["algorithm"], "round-robin");
    let backends = stats["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for b in backends {
        assert_eq!(b["state"], "up");
        assert_eq!(b["total"], 5);
        assert_eq!(b["active"], 0);
        assert_eq!(b["queued"], 0);
        assert_eq!(b["effective_weight"], 1.0);
        assert!(
            b["latency_ms"]["p50"].as_f64().is_some() && b["latency_ms"]["p99"].as_f64().is_some(),
            "{b}"
        );
        assert!(b["last_check"]["result"].is_string(), "{b}");
    }
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["waiting_for_worker"], 0);

    let text = http_get(admin, "/metrics").text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, backend: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("backend") == Some(backend))
            .map(|s| s.value.clone())
    };
    for b in ["app1", "app2"] {
        assert!(matches!(value("lb_backend_up", b), Some(prometheus_parse::Value::Gauge(v)) if v == 1.0));
        assert!(
            matches!(value("lb_requests_total", b), Some(prometheus_parse::Value::Counter(v)) if v == 5.0)
        );
        assert!(
            matches!(value("lb_backend_active_connections", b), Some(prometheus_parse::Value::Gauge(v)) if v == 0.0)
        );
        match value("lb_request_duration_seconds", b) {
            Some(prometheus_parse::Value::Histogram(buckets)) => {
                let inf = buckets.iter().find(|c| c.less_than.is_infinite()).expect("+Inf bucket");
                assert_eq!(inf.count, 5.0);
            }
            other => panic!("histogram for {b}: {other:?}"),
        }
    }
}

#[test]
fn a_dns_backend_resolves_to_its_members() {
    let ds = dummies(1);
    let port = ds[0].1.port();
    let config = format!(
        "[proxy]\nworkers = 16\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n\
         [backends]\nresolve_ms = 200\nweb = localhost:{port}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    assert_eq!(exchange(&mut connect(addr), "via dns"), "app1");
    let line = p.wait_for(" -> web@");
    assert!(line.contains(&format!("web@127.0.0.1:{port}")) || line.contains("web@[::1]"), "{line}");
    let stats = proxy_stats(admin);
    let names: Vec<&str> =
        stats["backends"].as_array().expect("list").iter().filter_map(|b| b["name"].as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("web@")) && !names.is_empty(), "{names:?}");
}

/// A reload's summary counts the pools it left alone rather than naming each (500 of them made
/// a 12 KB line), and still names the one that changed and the one added.
#[test]
fn a_reload_counts_the_pools_it_left_alone() {
    let (_d, b) = dummy("one");
    let pools = |weight: u32| -> String {
        let pool = |i: u32| {
            format!(
                "[pool.p{i}]\nm{i} = {b} weight={}\n[route.r{i}]\npath = /p{i}\npool = p{i}\n",
                if i == 0 { weight } else { 1 }
            )
        };
        (0..weight + 2).map(pool).collect()
    };
    let config = |w| {
        format!(
            "[proxy]\nmode = http\nworkers = 8\n[health]\nenabled = false\n[backends]\nweb = {b}\n{}",
            pools(w)
        )
    };
    let (p, _addr) = proxy_with(&config(1), &[]);
    std::fs::write(p.dir().join("config.ini"), config(2)).expect("rewrite");
    p.signal("HUP");
    let line = p.wait_for("reload: 1 unchanged; pool p0: changed m0 weight 1->2");
    assert!(line.contains("; 2 other pools unchanged") && !line.contains("pool p1"), "{line}");
    assert!(line.contains("; pool p3 added"), "a new pool is named, not counted: {line}");
}
