//! The dashboard: `GET /events` (Server-Sent Events of picks, state changes and ticks), its
//! cost to the admin listener (50 viewers must not slow `/health`), and the page being one
//! self-contained file; [`browser`] shows the page itself in headless Chromium.

mod browser;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// An HTTP proxy over fresh dummies app1..appN with the admin listener on and no health checks.
fn watched_proxy(n: usize) -> (Vec<(Proc, SocketAddr)>, Proc, SocketAddr, SocketAddr) {
    let backends = dummies(n);
    let addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&addrs)
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (backends, p, addr, admin)
}

/// simulate_client in HTTP mode against `addr`, killed when dropped.
fn simulate(addr: SocketAddr, clients: usize, requests: usize) -> Proc {
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--target", &addr.to_string(), "--mode", "http"])
        .args(["--clients", &clients.to_string(), "--requests", &requests.to_string()])
        .stdout(Stdio::null());
    Proc::spawn(&mut cmd, None)
}

/// An open `/events` stream, its head read.
struct Viewer(BufReader<TcpStream>);

impl Viewer {
    fn open(admin: SocketAddr) -> Viewer {
        let mut s = connect(admin);
        s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        let mut r = BufReader::new(s);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            assert!(r.read_line(&mut head).expect("head") > 0, "closed in the head: {head:?}");
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        Viewer(r)
    }

    /// The next event: one `data:` line of JSON and a blank line.
    fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        assert!(self.0.read_line(&mut line).expect("event") > 0, "stream closed");
        let data = line.strip_prefix("data: ").unwrap_or_else(|| panic!("not an event line: {line:?}"));
        let event = serde_json::from_str(data.trim_end()).unwrap_or_else(|e| panic!("{e}: {data}"));
        let mut blank = String::new();
        self.0.read_line(&mut blank).expect("separator");
        assert_eq!(blank, "\n", "events end with a blank line");
        event
    }

    /// Reads (at most 5000 events) until `want` matches one; returns it.
    fn until(&mut self, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..5000 {
            let e = self.next();
            if want(&e) {
                return e;
            }
        }
        panic!("no such event among 5000");
    }
}

#[test]
fn events_stream_json_picks_in_the_log_lines_words_state_changes_and_ticks_with_sampling() {
    let (_b, p, addr, admin) = watched_proxy(2);
    let mut v = Viewer::open(admin);
    let history = v.next();
    assert_eq!(history["type"], "history", "{history}");
    let _load = simulate(addr, 2, 100_000);
    let pick = v.until(|e| e["type"] == "pick");
    for field in ["client", "backend", "algorithm", "reason", "label"] {
        assert!(pick[field].as_str().is_some_and(|s| !s.is_empty()), "{field} in {pick}");
    }
    assert_eq!(pick["algorithm"], "least-connections");
    assert!(pick["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{pick}");
    // The same words as the access log line: `req ID CLIENT "GET /" -> app1 (REASON) 200 ...`.
    let label = pick["label"].as_str().expect("label");
    let line = p.wait_for(&format!("{label} {} ", pick["client"].as_str().expect("client")));
    let (backend, reason) =
        (pick["backend"].as_str().expect("backend"), pick["reason"].as_str().expect("reason"));
    assert!(line.contains(&format!(" -> {backend} ({reason}) ")), "log {line:?} vs event {pick}");
    let tick = v.until(|e| e["type"] == "tick");
    assert_eq!(tick["backends"].as_array().map(Vec::len), Some(2), "{tick}");
    let s = &tick["sampling"];
    assert_eq!(s["limit_per_second"], 50);
    assert!(s["picks_sent"].as_u64().expect("sent") <= s["picks_seen"].as_u64().expect("seen"), "{s}");
    for field in ["rps", "total", "active", "queued", "failures", "weight", "effective_weight", "state"] {
        assert!(!tick["backends"][0][field].is_null(), "{field} in {tick}");
    }
    let drained = send_raw(
        admin,
        b"POST /backends/app2/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        "POST",
    );
    assert_eq!(drained.0.status, 200);
    let state = v.until(|e| e["type"] == "state");
    assert_eq!((state["backend"].as_str(), state["state"].as_str()), (Some("app2"), Some("draining")));
    assert!(state["reason"].as_str().is_some_and(|r| r.contains("app2 -> drain (was ready)")), "{state}");
    // Picks reach a viewer at no more than 50 a second (plus what the window's turn lets by).
    let started = Instant::now();
    let (mut picks, mut ticks) = (0, 0);
    while ticks < 3 {
        let e = v.next();
        picks += usize::from(e["type"] == "pick");
        ticks += usize::from(e["type"] == "tick");
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(picks as f64 <= 50.0 * (secs + 1.0) + 10.0, "{picks} picks in {secs:.1} s");
}

#[test]
fn fifty_open_event_viewers_leave_health_answering_within_200ms() {
    let (_b, _p, addr, admin) = watched_proxy(2);
    let _load = simulate(addr, 2, 100_000);
    let mut viewers: Vec<Viewer> = (0..50).map(|_| Viewer::open(admin)).collect();
    // Every viewer is being served events.
    for v in &mut viewers {
        v.until(|e| e["type"] == "tick" || e["type"] == "pick");
    }
    for i in 0..20 {
        let started = Instant::now();
        let resp = http_get(admin, "/health");
        let took = started.elapsed();
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
        assert!(took < Duration::from_millis(200), "probe {i} took {took:?} beside 50 viewers");
    }
}

#[test]
fn the_page_is_one_self_contained_file_with_no_external_script_font_or_style() {
    let (_b, _p, _addr, admin) = watched_proxy(1);
    let resp = http_get(admin, "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/html; charset=utf-8"));
    // Never framed: framed by another site, a click on its drain button is a same-origin POST.
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert_eq!(resp.header("content-security-policy"), Some("frame-ancestors 'none'"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let page = resp.text();
    assert!(page.contains("<script>") && page.contains("EventSource(") && page.contains("<svg"), "page");
    for external in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!page.contains(external), "the page refers elsewhere: {external}");
    }
}
