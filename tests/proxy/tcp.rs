//! TCP mode, end to end.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn every_reply_names_its_backend_and_echoes_the_line() {
    let ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = proxy(&addrs, "round-robin");
    let mut seen = HashSet::new();
    for i in 0..9 {
        let mut s = connect(addr);
        seen.insert(exchange(&mut s, &format!("hello {i}")));
        // Several lines on one connection stay with one backend.
        let first = exchange(&mut s, "again");
        assert_eq!(first, exchange(&mut s, "and again"));
    }
    let expected: HashSet<String> = ["app1", "app2", "app3"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, expected);
}

#[test]
fn least_connections_spreads_held_connections_and_refills_the_freed_backend() {
    let ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (p, addr) = proxy(&addrs, "least-connections");
    let mut held: Vec<(String, TcpStream)> = (0..3)
        .map(|i| {
            let mut s = connect(addr);
            (exchange(&mut s, &format!("hold {i}")), s)
        })
        .collect();
    let names: HashSet<_> = held.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 3, "3 held connections on 3 backends, got {names:?}");

    // Close the one on the second backend, wait until the proxy has counted it closed.
    let idx = held.iter().position(|(n, _)| n == "app2").expect("one on app2");
    let (freed, s) = held.remove(idx);
    drop(s);
    p.wait_for("closed: ");
    let mut s = connect(addr);
    assert_eq!(exchange(&mut s, "next"), freed);
    let line = p.wait_for(&format!("-> {freed} "));
    assert!(line.contains("least-connections: app2=0"), "reason shows the counts compared: {line}");
}

#[test]
fn round_robin_cycles_in_order() {
    let ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = proxy(&addrs, "round-robin");
    let order: Vec<String> = (0..7).map(|i| exchange(&mut connect(addr), &format!("n{i}"))).collect();
    assert_eq!(order, ["app1", "app2", "app3", "app1", "app2", "app3", "app1"]);
}

#[test]
fn a_dead_backend_is_skipped_without_client_errors() {
    let ds = dummies(2);
    let (_dead_socket, dead) = dead_addr();
    let addrs = [ds[0].1, dead, ds[1].1];
    let (p, addr) = proxy(&addrs, "round-robin");
    for i in 0..12 {
        let name = exchange(&mut connect(addr), &format!("try {i}"));
        assert!(name == "app1" || name == "app2", "served by {name}");
    }
    // The failed connect is logged with what came next, and the retry's decision line after
    // its own connect, with the outcome.
    let line = p.wait_for("connect to app2");
    assert!(
        line.contains("failed (connection refused); retrying app1 ")
            || line.contains("failed (connection refused); retrying app3 "),
        "{line}"
    );
    let at = line.find("conn ").expect("conn N");
    let conn = &line[at..at + line[at..].find(" from ").expect("from")];
    let retried = p.wait_for("attempt 2 after 1 failed");
    assert!(retried.contains(&format!("{conn} from ")), "{retried}");
    assert!(retried.contains(" connected in ") && retried.contains(" ms ("), "{retried}");
}

/// A backend that speaks first, then counts what it receives until EOF and reports the count.
fn banner_backend() -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"220 banner ready\r\n").expect("banner");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        // The client half-closed; this direction still works.
        s.write_all(format!("got {} bytes\n", got.len()).as_bytes()).expect("reply after EOF");
    });
    (addr, h)
}

#[test]
fn server_speaks_first_and_client_half_close_passes_through() {
    let (backend, handle) = banner_backend();
    let (_p, addr) = proxy(&[backend], "round-robin");
    let mut s = connect(addr);
    assert_eq!(read_line(&mut s), "220 banner ready", "backend spoke first");
    s.write_all(b"one\ntwo\nthree\n").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = String::new();
    s.read_to_string(&mut rest).expect("read to EOF");
    assert_eq!(rest, "got 14 bytes\n");
    handle.join().expect("backend");
}

#[test]
fn backend_half_close_passes_through() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    let (tx, rx) = crossbeam_channel::bounded(1);
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"early\n").expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        tx.send(got).expect("report");
    });
    let (_p, addr) = proxy(&[backend], "round-robin");
    let mut s = connect(addr);
    let mut got = String::new();
    s.read_to_string(&mut got).expect("EOF from the backend's half-close");
    assert_eq!(got, "early\n");
    s.write_all(b"still flowing upstream").expect("send after EOF");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(rx.recv_timeout(WAIT).expect("backend report"), b"still flowing upstream");
    h.join().expect("backend");
}

/// A client that resets while its upload waits on a backend that stopped reading frees its
/// worker at once: the relay, waiting only to write to the backend, did not watch the client
/// and held on until `idle_ms` (then blamed the backend).
#[test]
fn a_client_reset_is_seen_while_its_upload_waits_on_a_backend_that_stopped_reading() {
    let (backend, done, h) = deaf_backend();
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 8\n[admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let s = connect(addr);
    send_until_full(&s);
    wait_until("the relay holds the connection", || backend_stats(admin, "app1")["active"] == 1);
    reset_is_seen(&p, admin, s, (done, h));
}

#[test]
fn eight_mib_echoed_intact_while_flowing_both_ways() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = l.local_addr().expect("addr");
    let h = thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        let mut r = s.try_clone().expect("clone");
        let mut w = s;
        std::io::copy(&mut r, &mut w).expect("echo");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let (p, addr) = proxy(&[backend], "round-robin");
    let s = connect(addr);
    const LEN: usize = 8 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect();
    let mut w = s.try_clone().expect("clone");
    let sent = data.clone();
    // Writing and reading at once: with a half-duplex relay this would deadlock.
    let writer = thread::spawn(move || {
        for chunk in sent.chunks(100_000) {
            w.write_all(chunk).expect("write");
        }
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::with_capacity(LEN);
    (&s).read_to_end(&mut got).expect("read echo");
    writer.join().expect("writer");
    assert_eq!(got.len(), LEN);
    assert!(got == data, "echo differs from what was sent");
    let line = p.wait_for("closed: ");
    assert!(line.contains(&format!("{LEN} bytes up, {LEN} bytes down")), "{line}");
    h.join().expect("backend");
}

/// More held connections than the shipped workers: quiet relays park (issue #18), so each is
/// answered while all the earlier ones stay open, and least-connections still counts them.
#[test]
fn a_thousand_concurrent_held_connections_are_all_served_with_the_shipped_workers() {
    let shipped =
        lbproxy::config::RawConfig::load(&shipped_config()).expect("read").validate().expect("valid");
    assert!(shipped.workers < 1000, "shipped config.ini has workers = {}", shipped.workers);
    let ds = dummies(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(PROXY);
    cmd.current_dir(dir.path()).arg("--config").arg(shipped_config()).args([
        "--listen",
        "127.0.0.1:0",
        "--log-file",
        "",
    ]);
    for d in &ds {
        cmd.arg("--backend").arg(d.1.to_string());
    }
    let p = Proc::spawn(&mut cmd, Some(dir));
    let addr = p.listening_addr();
    // Each connection is answered while all the earlier ones are still held open.
    let mut held = Vec::with_capacity(1000);
    let mut per_backend = std::collections::HashMap::<String, usize>::new();
    for i in 0..1000 {
        let mut s = connect(addr);
        *per_backend.entry(exchange(&mut s, &format!("held {i}"))).or_default() += 1;
        held.push(s);
    }
    // And every one of them still works with all 1000 open.
    for (i, s) in held.iter_mut().enumerate() {
        exchange(s, &format!("still {i}"));
    }
    assert_eq!(per_backend.values().sum::<usize>(), 1000);
    for d in ["app1", "app2", "app3"] {
        let n = per_backend.get(d).copied().unwrap_or(0);
        assert!((330..=337).contains(&n), "least-connections spreads evenly: {per_backend:?}");
    }
}

#[test]
fn ctrl_c_drains_open_connections_refuses_new_ones_and_exits_zero() {
    let ds = dummies(1);
    let (mut p, addr) = proxy(&[ds[0].1], "round-robin");
    let mut open = connect(addr);
    assert_eq!(exchange(&mut open, "before"), "app1");
    p.signal("INT");
    p.wait_for("stopped accepting");
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "new connections are refused while draining");
    assert_eq!(exchange(&mut open, "during drain"), "app1", "the open connection keeps working");
    drop(open);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", p.log_text());
    let log = p.log_text();
    assert!(log.contains("served 1 connection(s)"), "summary printed:\n{log}");
    assert!(log.contains("backend app1 ") && log.contains("total=1 failures=0"), "{log}");
}

#[test]
fn drain_timeout_closes_what_remains() {
    let ds = dummies(1);
    let config = format!("[proxy]\ndrain_timeout_ms = 300\n{}", backends_section(&[ds[0].1]));
    let (mut p, addr) = proxy_with(&config, &[]);
    let mut open = connect(addr);
    exchange(&mut open, "hi");
    let started = Instant::now();
    p.signal("TERM");
    p.wait_for("drain timeout: closed 1");
    assert_eq!(p.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the held connection was closed");
}

#[test]
fn a_second_ctrl_c_during_the_drain_cuts_the_connections_at_once() {
    let ds = dummies(1);
    let config = format!("[proxy]\ndrain_timeout_ms = 60000\n{}", backends_section(&[ds[0].1]));
    let (mut p, addr) = proxy_with(&config, &[]);
    let mut open: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for (i, s) in open.iter_mut().enumerate() {
        exchange(s, &format!("held {i}"));
    }
    p.signal("INT");
    let line = p.wait_for("draining 2 connection(s) for up to 60000 ms");
    assert!(line.ends_with("(Ctrl-C again to cut it short)"), "the way out is named: {line}");
    let started = Instant::now();
    p.signal("INT");
    p.wait_for("SIGINT again: stopping now; cut 2 connection(s)");
    assert_eq!(p.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10), "not the 60 s drain: {:?}", started.elapsed());
    assert!(p.log_text().contains("(2 cut before they finished)"), "{}", p.log_text());
    for mut s in open {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the held connection was closed");
    }
}

#[test]
fn invalid_configs_exit_2_naming_each_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.ini");
    std::fs::write(
        &path,
        "[proxy]\nlisten = 127.0.0.1:70000\nalgorithm = fastest-first\ncolour = blue\n\
         [backends]\napp1 = 127.0.0.1\n",
    )
    .expect("write");
    for check in [false, true] {
        let mut cmd = Command::new(PROXY);
        cmd.arg("--config").arg(&path);
        if check {
            cmd.arg("--check");
        }
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let file = path.display().to_string();
        for needle in [
            format!("{file}:2: [proxy] listen: invalid port '70000'"),
            format!("{file}:3: [proxy] algorithm: unknown algorithm 'fastest-first'"),
            format!("{file}:4: [proxy] colour: unknown key 'colour'"),
            format!("{file}:6: [backends] app1: '127.0.0.1' has no port"),
        ] {
            assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
        }
    }
    let missing = Command::new(PROXY).args(["--config", "/nonexistent/lb.ini"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/lb.ini: cannot read"));
    let bad_flag = Command::new(PROXY)
        .arg("--config")
        .arg(shipped_config())
        .args(["--check", "--workers", "0"])
        .output()
        .expect("run");
    assert_eq!(bad_flag.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad_flag.stderr).contains("--workers: [proxy] workers: 0 is out of range")
    );
}

#[test]
fn check_passes_on_the_shipped_config() {
    let out = Command::new(PROXY).arg("--config").arg(shipped_config()).arg("--check").output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = 0.0.0.0:8080"), "{text}");
    assert!(text.contains("dummy-9099 = 127.0.0.1:9099"), "{text}");
    // Every key is shown, with where its value came from (the shipped file sets them all).
    let file = std::fs::read_to_string(shipped_config()).expect("config.ini");
    let line = file.lines().position(|l| l == "stats_interval_ms = 0").expect("the line") + 1;
    let shipped = shipped_config().display().to_string();
    assert!(text.contains(&format!("\nstats_interval_ms = 0  # {shipped}:{line}\n")), "{text}");
    assert!(!text.contains("# default"), "config.ini sets every key: {text}");
    assert!(text.contains("is valid"), "{text}");
}

#[test]
fn simulate_client_reports_the_distribution_and_exit_status() {
    let ds = dummies(3);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = proxy(&addrs, "round-robin");
    let (code, text, _) = simulate(addr, &["--clients", "3", "--requests", "10"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("  mode tcp  "), "the mode as written on the command line: {text}");
    for needle in ["app1", "app2", "app3", "p50", "p99", "failures"] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    for line in text.lines().filter(|l| l.starts_with("app")) {
        assert!(line.split_whitespace().nth(1) == Some("10"), "round-robin gives 10 each: {line}");
    }
    let (_dead_socket, dead) = dead_addr();
    let (code, text, err) = simulate(dead, &["--clients", "2", "--requests", "2"]);
    assert_eq!(code, Some(2));
    assert!(text.is_empty(), "no empty table when nothing listens: {text}");
    assert!(err.contains(&format!("connection refused; is proxy_server running on {dead}?")), "{err}");
}

#[test]
fn a_quiet_connection_is_closed_after_idle_ms_and_a_busy_one_is_not() {
    let ds = dummies(1);
    let config =
        format!("[timeouts]\nidle_ms = 400\n[health]\nenabled = false\n{}", backends_section(&[ds[0].1]));
    let (p, addr) = proxy_with(&config, &[]);
    // Busy: a line every 150 ms for over twice idle_ms keeps it open.
    let mut busy = connect(addr);
    let mut last = Instant::now();
    for i in 0..7 {
        if i > 0 {
            thread::sleep(Duration::from_millis(150));
        }
        // The proxy's idle clock starts at the last byte it relays, after this.
        last = Instant::now();
        exchange(&mut busy, &format!("tick {i}"));
    }
    // Quiet: closed by the proxy after idle_ms.
    let mut rest = Vec::new();
    let _ = busy.read_to_end(&mut rest);
    let waited = last.elapsed();
    assert!(rest.is_empty());
    assert!(waited >= Duration::from_millis(380) && waited < Duration::from_secs(5), "{waited:?}");
    let line = p.wait_for("ended by");
    assert!(line.contains("idle timeout"), "{line}");
}
