//! The dashboard page in headless Chromium while simulate_client runs: every backend shown,
//! counts rising between loads, a drained backend idle, and the README's screenshot command,
//! which must end on the plain page however long its live stream stays open.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{simulate, watched_proxy};
use crate::util::*;

/// Debian's chromium, installed when missing and possible (CI installs it in .ci/run). Still
/// missing, a browser test says SKIPPED and passes (`None`), except under CI (`CI` set and not
/// `false` or `0`): there it fails, so CI cannot go green without having run it.
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
    let found = find();
    let ci = std::env::var("CI").is_ok_and(|v| !["", "0", "false"].contains(&v.as_str()));
    match found {
        None if ci => panic!("CI is set and chromium is missing (apt-get install -y chromium failed): CI must run the browser tests, not skip them"),
        None => eprintln!("SKIPPED: chromium is not installed and could not be (apt-get install -y chromium)"),
        Some(_) => {}
    }
    found
}

/// Runs `chromium` in `dir` with `args` and the flags that keep a test hermetic (no sandbox,
/// which root needs; a fresh profile; no background traffic); its stdout. A run that has not
/// ended within 90 s is killed (by pid) and fails the test.
fn run_chromium(chromium: &Path, dir: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    // A file, not a pipe: a DOM dump larger than the pipe would block chromium until killed.
    let mut stdout = tempfile::tempfile().expect("stdout file");
    let mut child = Command::new(chromium)
        .current_dir(dir)
        .args(["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(stdout.try_clone().expect("stdout file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100)); // polling a child's exit, not a sync
    }
    let mut out = String::new();
    stdout.seek(SeekFrom::Start(0)).and_then(|_| stdout.read_to_string(&mut out)).expect("chromium's stdout");
    out
}

/// Runs headless chromium on `url` with `args`; its stdout. `?for=2` makes the page watch
/// `/events` for 2 s and then stop, so the virtual-time budget can run out and the DOM is
/// dumped after the scripts have rendered what they received.
fn headless(chromium: &Path, url: &str, args: &[&str]) -> String {
    let mut all: Vec<String> = vec!["--headless".into(), "--virtual-time-budget=5000".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push(url.to_string());
    run_chromium(chromium, &std::env::temp_dir(), &all)
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
    let Some(chromium) = chromium() else { return };
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
        b"POST /backends/app1/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
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

/// The README's screenshot command, word for word but for the admin address.
fn readme_screenshot_command(admin: SocketAddr) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let line = readme
        .lines()
        .find(|l| l.starts_with("chromium --headless") && l.contains("--screenshot="))
        .expect("the README shows a `chromium --headless --screenshot=...` command");
    line.split_whitespace().skip(1).map(|a| a.replace("127.0.0.1:8081", &admin.to_string())).collect()
}

#[test]
fn the_readmes_screenshot_command_ends_on_the_plain_page_while_it_streams_and_writes_the_png() {
    let Some(chromium) = chromium() else { return };
    let (_b, _p, addr, admin) = watched_proxy(3);
    let _load = simulate(addr, 2, 20_000);
    let args = readme_screenshot_command(admin);
    assert!(args.contains(&format!("http://{admin}/")), "the page itself, no ?for=N: {args:?}");
    let file = args.iter().find_map(|a| a.strip_prefix("--screenshot=")).expect("--screenshot=FILE");
    let dir = tempfile::tempdir().expect("a directory to run in");
    // Before the page read /events with fetch(), its EventSource kept the virtual-time budget
    // from running out, and this run was killed after 90 s.
    run_chromium(&chromium, dir.path(), &args);
    let png = std::fs::read(dir.path().join(file)).expect("the screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let size = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    assert_eq!((size(16), size(20)), (1280, 900), "the PNG's width and height (IHDR)");
    assert!(png.len() > 10 * 1024, "{} bytes: an empty page?", png.len());
    // What such a screenshot shows: the first events (a tick among them) come with the
    // stream's head, so the first picture already has every backend.
    let dom = headless(&chromium, &format!("http://{admin}/"), &["--dump-dom"]);
    let names: Vec<String> = rows(&dom).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["app1", "app2", "app3"], "the plain page's backends");
}

/// Ten backends as busy and as varied as the table gets: health checks on, app10 at a dead
/// address (down, with the longest check result), app2 draining and app3 in maintenance, while
/// simulate_client runs (4 clients, at most 50,000 requests each). The dead socket, dummies and
/// load live as long as the returned values.
fn ten_busy_backends() -> (Vec<(Proc, SocketAddr)>, socket2::Socket, Proc, Proc, SocketAddr) {
    let backends = dummies(9);
    let (dead, dead_at) = dead_addr();
    let mut addrs: Vec<SocketAddr> = backends.iter().map(|(_, a)| *a).collect();
    addrs.push(dead_at);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n[health]\nenabled = true\ninterval_ms = 100\n\
         [admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&addrs)
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let load = simulate(addr, 4, 50_000);
    p.wait_for(" DOWN ");
    for (name, act) in [("app2", "drain"), ("app3", "maint")] {
        let req =
            format!("POST /backends/{name}/{act} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(send_raw(admin, req.as_bytes(), "POST").0.status, 200, "{act} {name}");
    }
    p.wait_for(") 200 ");
    (backends, dead, p, load, admin)
}

/// How the page laid itself out in a `width` x 900 window, after watching for 3 s: what
/// `/?measure=1` writes into its hidden #layout.
fn layout(chromium: &Path, admin: SocketAddr, width: u32) -> serde_json::Value {
    let window = format!("--window-size={width},900");
    let dom = headless(chromium, &format!("http://{admin}/?for=3&measure=1"), &["--dump-dom", &window]);
    let json = dom
        .split_once("<pre id=\"layout\" hidden=\"\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(json, _)| json.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
        .unwrap_or_else(|| panic!("nothing measured at {width} px:\n{}", &dom[..dom.len().min(2000)]));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn with_ten_busy_backends_the_page_fits_1280_px_with_every_action_and_stays_usable_at_800() {
    let Some(chromium) = chromium() else { return };
    let (_backends, _dead, _p, _load, admin) = ten_busy_backends();
    let mut wrong = Vec::new();
    for width in [1280, 800] {
        let at = layout(&chromium, admin, width);
        let n = |key: &str| at[key].as_f64().unwrap_or_else(|| panic!("{key} in {at}"));
        let mut check = |ok: bool, what: &str| {
            if !ok {
                wrong.push(format!("at {width} px {what}"));
            }
        };
        check(n("inner_width") == f64::from(width), "the window is not that wide");
        check(n("backends") == 10.0, "not every backend shows");
        check(n("scroll_width") <= n("client_width"), "the page scrolls sideways");
        check(n("buttons") == 30.0 && n("buttons_reachable") == 30.0, "an action button is out of reach");
        check(n("feed_words") > 100.0, "the feed has too few words to judge");
        check(at["feed_words_broken"].as_array().is_some_and(Vec::is_empty), "the feed breaks words");
        if width == 1280 {
            check(n("header_rows") == 1.0, "the header wraps");
            check(n("table_hidden_px") == 0.0, "part of the backends table is hidden");
        }
        if wrong.iter().any(|w| w.starts_with(&format!("at {width} "))) {
            wrong.push(format!("at {width} px the page measured {at}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn without_chromium_a_browser_test_says_skipped_but_under_ci_it_fails() {
    // The browser test again, in a child run of this test binary, with a PATH where neither
    // chromium nor apt-get (to install it) can be found.
    let name = "dashboard::browser::dashboard_in_headless_chromium_shows_every_backend_rising_counts_and_a_drained_backend_idle";
    let nothing = tempfile::tempdir().expect("an empty PATH");
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
        cmd.args(["--exact", name, "--nocapture"]).env("PATH", nothing.path()).env_remove("CI");
        if let Some(value) = ci {
            cmd.env("CI", value);
        }
        let out = cmd.stdin(Stdio::null()).output().expect("run the test binary");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (passed, text) = run(None);
    assert!(passed && text.contains("SKIPPED: chromium") && text.contains("1 passed"), "outside CI:\n{text}");
    let (passed, text) = run(Some("true"));
    assert!(
        !passed && text.contains("CI is set and chromium is missing") && text.contains("1 failed"),
        "CI=true:\n{text}"
    );
}
