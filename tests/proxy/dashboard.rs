//! The dashboard: `GET /events` (Server-Sent Events of picks, state changes and ticks), its
//! cost to the admin listener (50 viewers must not slow `/health`), the page being one
//! self-contained file, and the page itself in headless Chromium while simulate_client runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
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
        b"POST /backends/app2/drain HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
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
    let page = resp.text();
    assert!(page.contains("<script>") && page.contains("EventSource(") && page.contains("<svg"), "page");
    for external in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!page.contains(external), "the page refers elsewhere: {external}");
    }
}

// The page in a real browser.

/// Debian's chromium, installed when missing and possible (CI installs it in .ci/run).
fn chromium() -> Option<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
        })
    };
    if let Some(found) = find() {
        return Some(found);
    }
    eprintln!("chromium missing: trying `apt-get install -y chromium`");
    let _ = Command::new("sh")
        .args(["-c", "(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1"])
        .status();
    find()
}

/// Runs headless chromium on `url` with `args`; its stdout. `?for=2` makes the page watch
/// `/events` for 2 s and then stop, so the virtual-time budget can run out and the DOM is
/// dumped after the scripts have rendered what they received.
fn headless(chromium: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=5000")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100)); // polling a child's exit, not a sync
    }
    let out = child.wait_with_output().expect("chromium output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each backend row the page rendered: (name, state, total requests).
fn rows(dom: &str) -> Vec<(String, String, u64)> {
    dom.split("<tr data-backend=\"")
        .skip(1)
        .filter(|r| !r.starts_with("${"))
        .map(|r| {
            let attr = |name: &str| {
                let from = r.find(&format!("{name}=\"")).map(|i| i + name.len() + 2).unwrap_or(0);
                r[from..].split('"').next().unwrap_or("").to_string()
            };
            let name = r.split('"').next().unwrap_or("").to_string();
            (name, attr("data-state"), attr("data-total").parse().unwrap_or(0))
        })
        .collect()
}

fn load_rows(chromium: &Path, admin: SocketAddr) -> Vec<(String, String, u64)> {
    let dom = headless(chromium, &format!("http://{admin}/?for=2"), &["--dump-dom"]);
    let rows = rows(&dom);
    assert!(!rows.is_empty(), "the page rendered no backend row:\n{dom}");
    rows
}

fn row<'a>(rows: &'a [(String, String, u64)], name: &str) -> &'a (String, String, u64) {
    rows.iter().find(|r| r.0 == name).unwrap_or_else(|| panic!("no {name} row in {rows:?}"))
}

#[test]
fn dashboard_in_headless_chromium_shows_every_backend_rising_counts_and_a_drained_backend_idle() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed and could not be (apt-get install -y chromium)");
        return;
    };
    let (_b, _p, addr, admin) = watched_proxy(3);
    let _load = simulate(addr, 3, 1_000_000);
    let first = load_rows(&chromium, admin);
    for name in ["app1", "app2", "app3"] {
        assert_eq!(row(&first, name).1, "up", "{first:?}");
    }
    let second = load_rows(&chromium, admin);
    let sum = |rows: &[(String, String, u64)]| rows.iter().map(|r| r.2).sum::<u64>();
    assert!(sum(&second) > sum(&first), "request counts rise between loads: {first:?} then {second:?}");
    let resp = send_raw(
        admin,
        b"POST /backends/app1/drain HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        "POST",
    );
    assert_eq!(resp.0.status, 200);
    let third = load_rows(&chromium, admin);
    assert_eq!(row(&third, "app1").1, "draining", "{third:?}");
    let fourth = load_rows(&chromium, admin);
    assert_eq!(row(&fourth, "app1").2, row(&third, "app1").2, "a drained backend gets no new requests");
    assert!(
        row(&fourth, "app2").2 > row(&third, "app2").2,
        "while simulate_client runs: {third:?} {fourth:?}"
    );
    // The screenshot the README shows (LBPROXY_SCREENSHOT=docs/dashboard.png to refresh it).
    let shot = std::env::var("LBPROXY_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|_| {
        std::env::temp_dir().join(format!("lbproxy-dashboard-{}.png", std::process::id()))
    });
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{admin}/?for=3");
    headless(&chromium, &url, &["--window-size=1280,800", &format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() < 300 * 1024, "{} bytes", png.len());
}
