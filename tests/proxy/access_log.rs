//! Access logs (issue #24, part 1): `combined` read by GoAccess and `json` by jq, unchanged;
//! SIGUSR1 reopens every log file after a rename (logrotate), losing and repeating no line under
//! load; a disk that stops taking lines costs dropped lines, counted, never a stalled request.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use crate::fidelity::round_trip;
use crate::tls::{client_config, tls_connect, Ca};
use crate::util::*;

/// An http proxy writing its access log to `access.log` in its directory, as `format`.
fn logging_proxy(format: &str, backends: &[SocketAddr], extra: &str) -> (Proc, SocketAddr, PathBuf) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\nlog_file = proxy.log\n\
         access_log = access.log\naccess_format = {format}\n{extra}\n[admin]\nlisten = 127.0.0.1:0\n\
         [health]\nenabled = false\n{}",
        backends_section(backends)
    );
    let (p, addr) = proxy_with(&config, &[]);
    let path = p.dir().join("access.log");
    (p, addr, path)
}

/// Waits until the logger thread has written `n` lines (it writes behind the requests).
fn wait_written(p: &Proc, n: u64) {
    let admin = admin_addr(p);
    wait_until(&format!("{n} access lines written"), || {
        proxy_stats(admin)["access_log"]["written"].as_u64() >= Some(n)
    });
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Sends `n` keep-alive requests on one connection, pipelined `batch` at a time; each carries
/// `X-Request-ID: <prefix>-<i>`. Returns how many were answered 200.
fn pipelined(addr: SocketAddr, prefix: &str, n: usize, batch: usize, extra: &str) -> usize {
    let sock = connect(addr);
    let mut out = sock.try_clone().expect("clone");
    let mut w = lbproxy::h1::Wire::new(sock);
    let mut ok = 0;
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let mut burst = String::new();
        for i in start..end {
            burst.push_str(&format!(
                "GET /r/{i} HTTP/1.1\r\nHost: t\r\nX-Request-ID: {prefix}-{i}\r\n{extra}\r\n"
            ));
        }
        out.write_all(burst.as_bytes()).expect("send burst");
        for _ in start..end {
            ok += usize::from(read_response(&mut w, "GET").status == 200);
        }
    }
    ok
}

#[test]
fn goaccess_parses_the_combined_log_and_counts_every_request() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("combined", &[backend], "");
    // Agents and referers with quotes, backslashes and non-ASCII, as browsers and bots send.
    let agents = ["Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0", "bot \"quoted\" \\ slash", "curl/8.5.0"];
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for i in 0..300 {
        let agent = agents[i % agents.len()];
        let extra = format!("User-Agent: {agent}\r\nReferer: http://example.com/p?x=\"{i}\"\r\n");
        assert_eq!(get(&mut w, &format!("/page/{i}?q=a%20b"), &extra).status, 200);
    }
    wait_written(&p, 300);
    let all = lines(&path);
    assert_eq!(all.len(), 300, "one line per request");
    // Workers write in batches: lines are found by content, not by position.
    let first = all.iter().find(|l| l.contains(" \"GET /page/0?q=a%20b HTTP/1.1\" ")).expect("page 0");
    assert!(first.starts_with("127.0.0.1 - - [") && first.contains("HTTP/1.1\" 200 "), "{first}");
    let second = all.iter().find(|l| l.contains(" \"GET /page/1?q=a%20b HTTP/1.1\" ")).expect("page 1");
    assert!(second.ends_with("\"bot \\x22quoted\\x22 \\x5C slash\""), "nginx escaping: {second}");
    // GoAccess, as Debian ships it, with its stock COMBINED format.
    let out = Command::new("goaccess")
        .arg(&path)
        .args(["--log-format=COMBINED", "--no-global-config", "-o"])
        .arg(p.dir().join("report.json"))
        .output()
        .expect("goaccess runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "goaccess: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir().join("report.json")).expect("report")).expect("json");
    let general = &report["general"];
    assert_eq!(general["total_requests"], 300, "{general}");
    assert_eq!(general["valid_requests"], 300, "{general}");
    assert_eq!(general["failed_requests"], 0, "{general}");
}

/// An agent that is not UTF-8 reaches the combined line byte for byte, escaped as nginx
/// writes it (`\xFF\xFE`), where it used to become U+FFFD (`\xEF\xBF\xBD`) twice over.
#[test]
fn an_agent_that_is_not_utf8_is_logged_byte_for_byte_as_nginx() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("combined", &[backend], "");
    let raw = b"GET /odd HTTP/1.1\r\nHost: t\r\nUser-Agent: x\xff\xfe\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(addr, raw, "GET").0.status, 200);
    wait_written(&p, 1);
    let line = lines(&path).pop().expect("a line");
    assert!(line.ends_with(" \"-\" \"x\\xFF\\xFE\""), "{line}");
}

#[test]
fn jq_reads_every_json_line_with_timings_pool_backend_and_why() {
    let (_a, a) = dummy("a");
    let (_b, b) = dummy("b");
    let (p, addr, path) = logging_proxy("json", &[a, b], "");
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for i in 0..20 {
        let extra = format!("User-Agent: ua \"{i}\"\r\nX-Request-ID: plain-{i}\r\n");
        assert_eq!(get(&mut w, "/x", &extra).status, 200);
    }
    // A head refused before it parsed gets its line too (nginx logs its 400s).
    let (r, _) = send_raw(addr, b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!(r.status, 400);
    wait_written(&p, 21);
    // jq parses every line (it fails on the first that is not JSON).
    let out = Command::new("jq")
        .args(["-c", "[.request_id, .status, .pool, .backend, .attempts]"])
        .arg(&path)
        .output()
        .expect("jq runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "jq: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 21, "one object per request");
    let mut backends = HashSet::new();
    let mut ids = HashSet::new();
    for line in lines(&path) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        if v["status"] == 400 {
            assert!(v.get("method").is_none() && v["note"].as_str().is_some(), "{line}");
            continue;
        }
        // Workers write in batches: lines are matched by request id, not by position.
        let id = v["request_id"].as_str().expect("request id");
        let i: usize = id.strip_prefix("plain-").and_then(|n| n.parse().ok()).expect("plain-N");
        assert!(ids.insert(i), "{id} twice");
        assert_eq!((v["method"].as_str(), v["target"].as_str()), (Some("GET"), Some("/x")), "{line}");
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["pool"], "default", "{line}");
        assert_eq!(v["attempts"], 1, "{line}");
        assert_eq!(v["user_agent"], format!("ua \"{i}\""), "{line}");
        assert!(v["reason"].as_str().is_some_and(|r| r.starts_with("round-robin")), "{line}");
        for k in ["duration_ms", "connect_ms", "response_head_ms"] {
            assert!(v[k].as_f64().is_some_and(|ms| ms >= 0.0), "{k}: {line}");
        }
        assert!(v["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{line}");
        assert!(v.get("tls").is_none(), "{line}");
        backends.insert(v["backend"].as_str().expect("backend").to_string());
    }
    assert_eq!(backends.len(), 2, "round-robin over both: {backends:?}");
    assert_eq!(ids.len(), 20, "every request once");
}

#[test]
fn a_json_line_names_the_clients_tls_version() {
    let (_a, a) = dummy("a");
    let ca = Ca::new("access-ca");
    let (_certs, tls) = ca.proxy_tls();
    let (p, addr, path) = logging_proxy("json", &[a], &tls);
    let mut t = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    write!(t, "GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut reply = Vec::new();
    let _ = t.read_to_end(&mut reply);
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
    wait_written(&p, 1);
    let line = &lines(&path)[0];
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(v["tls"], "TLSv1.3", "{line}");
    assert_eq!(v["target"], "/tls", "{line}");
}

#[test]
fn tcp_mode_writes_one_json_line_per_connection() {
    let (_b, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 8\naccess_log = access.log\naccess_format = json\n\
         [admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    for i in 0..3 {
        let mut s = connect(addr);
        assert!(exchange(&mut s, &format!("hello {i}")).contains("app1"), "the dummy names itself");
    }
    wait_written(&p, 3);
    let all = lines(&p.dir().join("access.log"));
    assert_eq!(all.len(), 3, "{all:?}");
    for line in &all {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert_eq!(v["protocol"], "TCP", "{line}");
        assert_eq!(v["backend"], "app1", "{line}");
        assert!(v["bytes_in"].as_u64() >= Some(7) && v["bytes_out"].as_u64() >= Some(7), "{line}");
        assert!(v.get("method").is_none(), "{line}");
    }
    // The main log no longer carries them.
    assert!(!p.log_text().contains(" closed: "), "{}", p.log_text());
}

/// A head still unfinished at `header_ms` waits in the parker, which answers 408: that answer
/// gets its access line too, as nginx logs its 408s (before, only the worker's refusals did).
/// So does a head whose client closed before its end: a 400 with nothing sent, as nginx.
#[test]
fn a_408_from_the_parker_and_a_head_its_client_abandoned_have_their_access_lines() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("json", &[backend], "[timeouts]\nheader_ms = 1000");
    let answer = round_trip(addr, b"GET / HTTP/1.1\r\nHost:");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    wait_written(&p, 1);
    let logged = lines(&path);
    let v: serde_json::Value = serde_json::from_str(&logged[0]).expect("json line");
    assert_eq!(v["status"], 408, "{logged:?}");
    assert_eq!(v["bytes_out"].as_u64(), Some(answer.len() as u64), "{logged:?}");
    assert!(v.get("method").is_none() && v["note"].as_str().is_some(), "{logged:?}");
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost:").expect("half a head");
    s.shutdown(std::net::Shutdown::Write).expect("close");
    wait_written(&p, 2);
    let v: serde_json::Value = serde_json::from_str(&lines(&path)[1]).expect("json line");
    assert_eq!((&v["status"], &v["bytes_out"]), (&400.into(), &0.into()), "{v}");
    let note = v["note"].as_str().unwrap_or_default();
    assert!(note.contains("client connection closed with its request head unfinished (21 bytes)"), "{v}");
}

/// As nginx: logrotate renames the files and sends USR1; each file continues at its path. Under
/// load from four clients, the old and new access logs together hold every request exactly once.
#[test]
fn sigusr1_after_a_rename_moves_every_log_to_a_new_file_losing_and_repeating_no_line() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("json", &[backend], "");
    const CLIENTS: usize = 4;
    const EACH: usize = 5000;
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| thread::spawn(move || pipelined(addr, &format!("c{c}"), EACH, 50, "")))
        .collect();
    // Rotate while the load runs: once some lines are in.
    wait_written(&p, 2000);
    std::fs::rename(&path, p.dir().join("access.log.1")).expect("rename access.log");
    std::fs::rename(p.dir().join("proxy.log"), p.dir().join("proxy.log.1")).expect("rename proxy.log");
    p.signal("USR1");
    p.wait_for("SIGUSR1: reopening the log files");
    for t in load {
        assert_eq!(t.join().expect("client"), EACH, "every request answered");
    }
    // A burst after the signal was handled, whatever the load's pace: the new file has lines.
    assert_eq!(pipelined(addr, "after", 100, 50, ""), 100);
    let total = (CLIENTS * EACH + 100) as u64;
    wait_written(&p, total);
    let (old, new) = (lines(&p.dir().join("access.log.1")), lines(&path));
    assert!(!old.is_empty() && !new.is_empty(), "both files hold lines: {} and {}", old.len(), new.len());
    let mut seen = HashSet::new();
    for line in old.iter().chain(&new) {
        let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
        let id = v["request_id"].as_str().expect("request id").to_string();
        assert!(seen.insert(id.clone()), "{id} logged twice");
    }
    assert_eq!(seen.len() as u64, total, "every request logged once");
    // The main log moved too: the signal's own line is the first in the new file.
    let main = std::fs::read_to_string(p.dir().join("proxy.log")).expect("new proxy.log");
    assert!(main.lines().next().is_some_and(|l| l.contains("SIGUSR1: reopening the log files")), "{main}");
    let rotated = std::fs::read_to_string(p.dir().join("proxy.log.1")).expect("old proxy.log");
    assert!(rotated.contains("listening on") && !rotated.contains("SIGUSR1"), "{rotated}");
}

/// As nginx, whose USR1 leaves a log it cannot reopen where it was: when the path is taken
/// (here by a directory), both logs say so, keep every line in the old file, and requests go on;
/// the next signal, once the path is free, moves them.
#[test]
fn sigusr1_that_cannot_reopen_says_so_keeps_writing_the_old_files_and_the_next_signal_tries_again() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("json", &[backend], "");
    assert_eq!(pipelined(addr, "before", 10, 10, ""), 10);
    wait_written(&p, 10);
    let main_path = p.dir().join("proxy.log");
    std::fs::rename(&path, p.dir().join("access.log.1")).expect("rename access.log");
    std::fs::rename(&main_path, p.dir().join("proxy.log.1")).expect("rename proxy.log");
    std::fs::create_dir(&path).expect("a directory where access.log was");
    std::fs::create_dir(&main_path).expect("a directory where proxy.log was");
    let mark = p.mark();
    p.signal("USR1");
    p.wait_for_since(mark, "SIGUSR1: reopening the log files");
    p.wait_for_since(mark, "cannot reopen proxy.log: ");
    assert_eq!(pipelined(addr, "stuck", 10, 10, ""), 10, "requests go on");
    wait_written(&p, 20);
    p.wait_for_since(mark, "cannot reopen access.log: ");
    let old = lines(&p.dir().join("access.log.1"));
    assert_eq!(old.len(), 20, "every line in the old access log: {old:?}");
    let rotated = std::fs::read_to_string(p.dir().join("proxy.log.1")).expect("old proxy.log");
    assert!(rotated.contains("SIGUSR1: reopening the log files"), "{rotated}");

    std::fs::remove_dir(&path).expect("free access.log");
    std::fs::remove_dir(&main_path).expect("free proxy.log");
    let mark = p.mark();
    p.signal("USR1");
    p.wait_for_since(mark, "SIGUSR1: reopening the log files");
    assert_eq!(pipelined(addr, "after", 10, 10, ""), 10);
    wait_written(&p, 30);
    assert_eq!(lines(&path).len(), 10, "the new access log has the lines after the second signal");
    assert_eq!(lines(&p.dir().join("access.log.1")).len(), 20, "the old one kept its own");
    let main = std::fs::read_to_string(&main_path).expect("new proxy.log");
    assert!(main.lines().next().is_some_and(|l| l.contains("SIGUSR1: reopening the log files")), "{main}");
}

/// A disk that stops taking lines (a FIFO nobody reads): requests go on at full speed, the
/// lines that cannot wait are dropped and counted in /stats and /metrics, and the main log says
/// how many once the writer moves again.
#[test]
fn a_stalled_access_log_drops_and_counts_lines_and_never_stalls_requests() {
    let (_b, backend) = dummy("app");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // The reader end exists (so the proxy's open returns) but reads nothing until the end.
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("fifo")
    };
    let extra = format!("access_log = {}", fifo.display());
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n{extra}\naccess_format = combined\n[admin]\nlisten = 127.0.0.1:0\n\
         [health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    // Long user agents (1 KiB) make each line big: the 4 MiB the proxy holds back fill fast.
    let agent = format!("User-Agent: {}\r\n", "a".repeat(1024));
    let answered: usize = (0..3)
        .map(|c| {
            let agent = agent.clone();
            thread::spawn(move || pipelined(addr, &format!("s{c}"), 10_000, 100, &agent))
        })
        .map(|t| t.join().expect("client"))
        .sum();
    assert_eq!(answered, 30_000, "every request answered while the log is stuck");
    let admin = admin_addr(&p);
    let dropped = proxy_stats(admin)["access_log"]["dropped"].as_u64().expect("dropped");
    assert!(dropped > 1000, "lines dropped and counted: {dropped}");
    let metrics = http_get(admin, "/metrics").text();
    let counted = metrics.lines().find_map(|l| l.strip_prefix("lb_access_log_dropped_total "));
    assert!(counted.and_then(|n| n.parse::<u64>().ok()) >= Some(dropped), "{metrics}");
    // Let the writer move again: it reports the drops in the main log.
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    let line = p.wait_for("line(s) dropped");
    assert!(line.contains("access log: ") && line.contains("access.fifo"), "{line}");
    drop(p);
    let _ = drain.join();
}

#[test]
fn a_tcp_connection_no_backend_took_gets_its_line_as_nginx_stream_logs_it() {
    let ((_d1, dead1), (_d2, dead2)) = (dead_addr(), dead_addr());
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 8\naccess_log = access.log\naccess_format = json\n\
         [admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n{}",
        backends_section(&[dead1, dead2])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut s = connect(addr);
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed: no backend");
    wait_written(&p, 1);
    let line = &lines(&p.dir().join("access.log"))[0];
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(v["protocol"], "TCP", "{line}");
    // Every connect failed: none could be had (503, as HAProxy answers), after two attempts.
    assert_eq!((&v["status"], &v["attempts"]), (&503.into(), &2.into()), "{line}");
    assert_eq!(v["note"], "no backend available (2 tried)", "{line}");
}

#[test]
fn main_wording_in_a_file_carries_a_time_stamp_and_off_writes_no_line_anywhere() {
    let (_b, backend) = dummy("app");
    let (p, addr, path) = logging_proxy("main", &[backend], "");
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    assert_eq!(get(&mut w, "/main", "X-Request-ID: in-a-file\r\n").status, 200);
    wait_written(&p, 1);
    let line = &lines(&path)[0];
    // `2026-12-05 23:03:48.123 req in-a-file 127.0.0.1:… "GET /main" -> app1 (…) 200 …`
    assert!(line.len() > 24 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b' ', "{line}");
    assert!(
        line[24..].starts_with("req in-a-file 127.0.0.1:") && line.contains("\"GET /main\" -> app1 "),
        "{line}"
    );
    // A target's `"` and `\` are escaped as nginx escapes them: it cannot fake the fields after it.
    assert_eq!(get(&mut w, "/x\"->fake\\", "X-Request-ID: quoted\r\n").status, 200);
    wait_written(&p, 2);
    let quoted = lines(&path).into_iter().find(|l| l.contains("req quoted ")).expect("the quoted line");
    assert!(quoted.contains(" \"GET /x\\x22->fake\\x5C\" -> app1 "), "{quoted}");

    let config = format!(
        "[proxy]\nmode = http\nworkers = 4\naccess_log = off\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (off, addr) = proxy_with(&config, &[]);
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    assert_eq!(get(&mut w, "/off", "X-Request-ID: nowhere\r\n").status, 200);
    // A line after the request's, to know the log has caught up: the reload's.
    off.signal("HUP");
    off.wait_for("reload");
    assert!(!off.log_text().contains("req nowhere"), "{}", off.log_text());
    assert!(!off.dir().join("access.log").exists());
}

/// A file that refuses every write (`/dev/full`: a full disk) has its lines counted as dropped,
/// not written, from the first one, and the main log says why. Before, the first 64 KiB of
/// lines were counted as written while a buffer held them, and then lost.
#[test]
fn lines_a_full_disk_refuses_are_counted_dropped_from_the_first() {
    let (_b, backend) = dummy("app");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\naccess_log = /dev/full\naccess_format = combined\n\
         [admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    for i in 0..5 {
        assert_eq!(get(&mut w, &format!("/full/{i}"), "").status, 200);
    }
    wait_until("5 lines dropped", || proxy_stats(admin)["access_log"]["dropped"].as_u64() >= Some(5));
    assert_eq!(proxy_stats(admin)["access_log"]["written"].as_u64(), Some(0));
    let line = p.wait_for("access log: writing /dev/full");
    assert!(line.contains("lines dropped"), "{line}");
}
