//! The classic terminal experience: proxy_server, two dummy_servers and simulate_client, each in
//! its own tmux window as a newcomer runs them, read back with `tmux capture-pane -p`. Also the
//! companions' terminal behaviour without tmux: health checks kept out of a dummy's terminal,
//! `simulate_client --interactive` in place of nc, and the client's hints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::*;

/// A private tmux server (its own socket, `tmux -L`), killed with the processes in its panes
/// when dropped.
struct Tmux {
    socket: String,
    /// The socket file, removed at the end (kill-server leaves it).
    path: String,
}

impl Tmux {
    /// Starts the server with one session whose first window runs `command`.
    fn start(window: &str, command: &str) -> Tmux {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mut tmux =
            Tmux { socket: format!("lbproxy-test-{}-{nanos}", std::process::id()), path: String::new() };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "classic",
            "-x",
            "250",
            "-y",
            "60",
            "-n",
            window,
            command,
        ]);
        // Keep a pane's text after its program exits (the client prints its table and ends).
        tmux.run(&["set-option", "-g", "remain-on-exit", "on"]);
        let path = tmux.run(&["display-message", "-p", "#{socket_path}"]);
        tmux.path = String::from_utf8_lossy(&path.stdout).trim().to_string();
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux (is it installed? .ci/run installs it)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Opens a window named `name` running `command`.
    fn window(&self, name: &str, command: &str) {
        self.run(&["new-window", "-d", "-t", "classic", "-n", name, command]);
    }

    /// The window's whole text, scrollback included, wrapped lines joined.
    fn capture(&self, name: &str) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", &format!("classic:{name}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the window until a line contains `needle` (bounded by `WAIT`); returns that line.
    fn wait_for(&self, name: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.capture(name);
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {needle:?} in window {name} within {WAIT:?}:\n{text}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` and Enter into the window.
    fn type_line(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", &format!("classic:{name}"), "-l", text]);
        self.run(&["send-keys", "-t", &format!("classic:{name}"), "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The panes' programs are ours: end them by pid (a hang-up would make the proxy reload,
        // not exit), then the server.
        if let Ok(out) = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(["list-panes", "-a", "-F", "#{pane_pid}"])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").status();
        if self.path.contains("lbproxy-test-") {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The address after `marker` in `line`.
fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = line.split(marker).nth(1).unwrap_or_else(|| panic!("{marker:?} in {line:?}"));
    rest.split_whitespace().next().expect("address").parse().expect("socket address")
}

/// Waits until the proxy's checker has checked each backend twice (/stats `last_check`), so
/// the first check's connection has long been handled by the dummy.
fn wait_for_two_checks(admin: SocketAddr, backends: usize) {
    let times = || -> Vec<Option<f64>> {
        let stats = proxy_stats(admin);
        let list = stats["backends"].as_array().cloned().unwrap_or_default();
        list.iter().map(|b| b["last_check"]["time"].as_f64()).collect()
    };
    let deadline = Instant::now() + WAIT;
    let mut first: Option<Vec<Option<f64>>> = None;
    loop {
        let now = times();
        if now.len() == backends && now.iter().all(Option::is_some) {
            match &first {
                None => first = Some(now.clone()),
                Some(f) if f.iter().zip(&now).all(|(a, b)| b > a) => return,
                Some(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "the backends were not checked twice within {WAIT:?}: {now:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_classic_flow_in_tmux_tells_the_story_at_a_glance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmux = Tmux::start("dummy-a", &format!("exec {DUMMY} 0 --log-dir ''"));
    tmux.window("dummy-b", &format!("exec {DUMMY} 0 --log-dir ''"));
    let ports: Vec<u16> = ["dummy-a", "dummy-b"]
        .iter()
        .map(|w| addr_after(&tmux.wait_for(w, " listening on "), " listening on ").port())
        .collect();
    // The shipped settings, checked often, with the backends given on the command line as a
    // newcomer would (`--backend`), and an admin listener to see the checks happen.
    std::fs::write(
        dir.path().join("config.ini"),
        "[proxy]\nworkers = 16\n[health]\ninterval_ms = 200\n[admin]\nlisten = 127.0.0.1:0\n",
    )
    .expect("write config");
    let backends: String = ports.iter().map(|p| format!(" --backend 127.0.0.1:{p}")).collect();
    tmux.window(
        "proxy",
        &format!("cd {} && exec {PROXY} --listen 127.0.0.1:0 --log-file ''{backends}", dir.path().display()),
    );
    let proxy = addr_after(&tmux.wait_for("proxy", "listening on "), "listening on ");
    let admin = addr_after(&tmux.wait_for("proxy", "admin listening on "), "admin listening on ");

    // Startup: `listening on` within the first 5 lines, then a line per backend.
    let startup = tmux.capture("proxy");
    let first: Vec<&str> = startup.lines().filter(|l| !l.trim().is_empty()).take(5).collect();
    assert!(
        first.iter().any(|l| l.contains("] listening on 127.0.0.1:")),
        "first lines:\n{}",
        first.join("\n")
    );
    assert!(!startup.contains("config: "), "the full config is for --check and debug:\n{startup}");

    wait_for_two_checks(admin, 2);
    tmux.window("client", &format!("exec {CLIENT} --target {proxy} --clients 2 --requests 3 --verbose"));
    tmux.wait_for("client", "latency ms:");
    tmux.window("nc", &format!("exec {CLIENT} --interactive --target {proxy}"));
    tmux.wait_for("nc", "connected to ");
    tmux.type_line("nc", "hi there");
    let typed = tmux.wait_for("nc", "] hi there");

    let client = tmux.capture("client");
    let proxy_pane = tmux.capture("proxy");
    assert!(client.contains("  mode tcp  "), "{client}");
    for (window, port) in ["dummy-a", "dummy-b"].iter().zip(&ports) {
        let name = format!("dummy-{port}");
        let pane = tmux.wait_for(window, "says: hello");
        let pane_text = tmux.capture(window);
        // One name everywhere: the dummy's terminal, its replies, the client's table and the
        // proxy's decisions.
        assert!(pane_text.contains(&format!("{name} listening on 127.0.0.1:{port}")), "{pane_text}");
        assert!(pane.contains("says: hello"), "{pane}");
        assert!(client.contains(&format!("[{name}] hello")), "replies named {name}:\n{client}");
        assert!(client.lines().any(|l| l.starts_with(&format!("{name} "))), "table row {name}:\n{client}");
        assert!(proxy_pane.contains(&format!("backend {name} 127.0.0.1:{port}")), "{proxy_pane}");
        assert!(
            proxy_pane.contains(&format!(" -> {name} 127.0.0.1:{port} connected in ")),
            "decision for {name}:\n{proxy_pane}"
        );
        // Health checks came (two rounds at least) but the terminal shows the traffic only.
        for noise in ["closed without data", "health check", "/health"] {
            assert!(!pane_text.contains(noise), "{noise:?} in {window}'s terminal:\n{pane_text}");
        }
    }
    assert!(
        ports.iter().any(|p| typed.contains(&format!("[dummy-{p}] hi there"))),
        "the interactive reply names a backend: {typed}"
    );
    // Every decision line carries its outcome, and the first pick was an exact tie.
    let decisions: Vec<&str> =
        proxy_pane.lines().filter(|l| l.contains(" -> dummy-") && !l.contains(" closed: ")).collect();
    assert!(decisions.len() >= 7, "6 client connections and the interactive one:\n{proxy_pane}");
    for line in &decisions {
        assert!(line.contains(" connected in ") && line.contains(" ms ("), "no outcome: {line}");
    }
    // The first pick (whichever connection it was: two clients race) found both idle.
    assert!(
        decisions.iter().any(|l| l.contains("(least-connections: tie at 0 → round-robin: dummy-")),
        "no exact tie said so:\n{}",
        decisions.join("\n")
    );

    // Ctrl-D ends the interactive client; Ctrl-C in the proxy's terminal drains what is left
    // and says what it served.
    tmux.run(&["send-keys", "-t", "classic:nc", "C-d"]);
    tmux.run(&["send-keys", "-t", "classic:proxy", "C-c"]);
    tmux.wait_for("proxy", "served 7 connection(s) (0 cut before they finished)");
}

#[test]
fn a_dummy_keeps_health_checks_out_of_its_terminal_unless_verbose() {
    for verbose in [false, true] {
        let extra: &[&str] = if verbose { &["--verbose"] } else { &[] };
        let (d, addr) = dummy_with("web", 0, extra);
        drop(TcpStream::connect(addr).expect("connect-and-close, a TCP check"));
        assert_eq!(http_get(addr, "/health").status, 200);
        assert_eq!(http_get(addr, "/page").status, 200);
        d.wait_for("GET /page");
        if verbose {
            // Each connection has its own thread, so the TCP check's line may come before or
            // after the others: looked for in the whole log.
            for needle in
                ["health check: connection from 127.0.0.1:", "health check: GET /health from 127.0.0.1:"]
            {
                d.wait_for_since(0, needle);
            }
        } else {
            let log = d.log_text();
            for noise in ["closed without data", "/health", "health check"] {
                assert!(!log.contains(noise), "{noise:?} at info level:\n{log}");
            }
        }
    }
}

#[test]
fn interactive_client_sends_typed_lines_through_the_proxy_like_nc() {
    let ds = dummies(1);
    let (_p, addr) = proxy(&[ds[0].1], "round-robin");
    let mut child = Command::new(CLIENT)
        .args(["--interactive", "--target", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hello\nsecond line\n").expect("type");
    drop(stdin);
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(out, "[app1] hello\n[app1] second line\n");
    let (_dead_socket, dead) = dead_addr();
    let out =
        Command::new(CLIENT).args(["--interactive", "--target", &dead.to_string()]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("is proxy_server running on {dead}?")), "{err}");
}

/// Issue #20: when the proxy closes the connection (here: idle_ms), the client exits at once,
/// as nc does, instead of waiting for a Ctrl-D that nothing asks for.
#[test]
fn interactive_client_exits_when_the_proxy_closes_the_connection() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\n[timeouts]\nidle_ms = 300\n[health]\nenabled = false\n{}",
        backends_section(&[ds[0].1])
    );
    let (_p, addr) = proxy_with(&config, &[]);
    let mut child = Command::new(CLIENT)
        .args(["--interactive", "--target", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Stdin stays open: only the proxy's close can end it.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hello\n").expect("type");
    let started = Instant::now();
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
    let status = child.wait().expect("wait");
    assert!(started.elapsed() < Duration::from_secs(10), "exited after {:?}", started.elapsed());
    assert_eq!(status.code(), Some(0));
    assert_eq!(out, "[app1] hello\n");
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    assert!(err.contains("connection closed by"), "{err}");
    drop(stdin);
}

#[test]
fn with_its_only_backend_down_the_client_is_pointed_to_the_proxy_log() {
    let (_dead_socket, dead) = dead_addr();
    let (p, addr) = proxy(&[dead], "round-robin");
    let out = Command::new(CLIENT)
        .args(["--target", &addr.to_string(), "--clients", "1", "--requests", "2"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hint: the proxy accepted and then closed the connection"), "{text}");
    assert!(text.contains("logs/proxy.log"), "{text}");
    let line = p.wait_for("connect to app1 ");
    assert!(line.contains(&format!("{dead} failed (connection refused); no other backend to try")), "{line}");
    assert!(!p.log_text().contains("; retrying "), "one backend: no next\n{}", p.log_text());
}

#[test]
fn http_mode_with_one_backend_does_not_promise_a_next_one() {
    let (d, backend) = dummy("app1");
    let (p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let r = http_get(addr, "/x?fault=reset-before");
    assert_eq!(r.status, 502, "{}", r.text());
    d.wait_for("fault reset-before on GET /x");
    let line = p.wait_for("; no other backend to try (1 attempt failed)");
    assert!(line.contains("req "), "{line}");
    assert!(!p.log_text().contains("; retrying "), "{}", p.log_text());
}
