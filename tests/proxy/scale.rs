//! Beyond one process: two instances sharing a port (`reuse_port`), a zero-downtime binary
//! upgrade (`--takeover`), both under continuous load with zero failed requests.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use lbproxy::h1::Wire;

use crate::util::*;

/// Continuous HTTP load: `fresh` threads each opening a new connection per request, and
/// `kept` threads on keep-alive connections (opening a new one only when the proxy answered
/// with `Connection: close`). Every failure is recorded: refused, reset, bad status.
/// `fresh` clients opening a connection per request and `kept` on keep-alive connections.
fn fresh_and_kept(addr: SocketAddr, fresh: usize, kept: usize) -> Load {
    Load::start(fresh + kept, |i| {
        let keep_alive = i >= fresh;
        let mut wire = None;
        move || {
            one_request(addr, keep_alive, &mut wire).map_err(|e| {
                wire = None;
                format!("{}: {e}", if keep_alive { "keep-alive" } else { "new connection" })
            })
        }
    })
}

fn one_request(
    addr: SocketAddr,
    keep_alive: bool,
    wire: &mut Option<Wire<std::net::TcpStream>>,
) -> Result<(), String> {
    if wire.is_none() {
        let s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        *wire = Some(Wire::new(s));
    }
    let w = wire.as_mut().ok_or("no connection")?;
    let close = if keep_alive { "" } else { "Connection: close\r\n" };
    let req = format!("GET / HTTP/1.1\r\nHost: t\r\n{close}\r\n");
    w.stream.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let head = w.read_head(1 << 16, |buf| {
        Ok(lbproxy::h1::head::parse_response(buf, "GET")?.map(|(len, r)| {
            let close = r
                .fields
                .0
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case(b"close"));
            (len, (r.status, r.body, close))
        }))
    });
    let (status, kind, server_closes) = head.map_err(|e| format!("response head: {e}"))?;
    let mut body = Vec::new();
    w.copy_body(kind, &mut body).map_err(|e| format!("response body: {e}"))?;
    if status != 200 {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    if !keep_alive || server_closes {
        *wire = None;
    }
    Ok(())
}

fn served(p: &Proc) -> usize {
    p.log_text().lines().filter(|l| l.contains("req ") && l.contains("\"GET /\"")).count()
}

/// With `reuse_port`, a stopped instance's listening socket leaves the port's group, and Linux
/// moves the connections still waiting in its queue to a sibling only with
/// `net.ipv4.tcp_migrate_req = 1` (5.14+); otherwise they are reset. The test sets it, as an
/// operator running several instances would (README "Running several instances").
fn enable_request_migration() {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    let now = std::fs::read_to_string(path).expect("this kernel has net.ipv4.tcp_migrate_req (Linux 5.14+)");
    if now.trim() != "1" {
        std::fs::write(path, "1").expect("set net.ipv4.tcp_migrate_req = 1 (needs root)");
    }
}

#[test]
fn two_instances_share_a_port_with_reuse_port_and_one_stops_under_load_without_a_failed_request() {
    enable_request_migration();
    let ds = dummies(2);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let config = format!(
        "[proxy]\nmode = http\nreuse_port = on\nworkers = 32\n[health]\nenabled = false\n{}",
        backends_section(&addrs)
    );
    let (mut first, addr) = proxy_with(&config, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.ini"), &config).expect("write");
    let mut cmd = Command::new(PROXY);
    cmd.current_dir(dir.path()).args(["--config", "config.ini", "--listen", &addr.to_string()]);
    let second = Proc::spawn(&mut cmd, Some(dir));
    assert_eq!(second.listening_addr(), addr, "both instances listen on one address");
    // Without reuse_port the same bind fails.
    let plain = config.replace("reuse_port = on", "reuse_port = off");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.ini"), &plain).expect("write");
    let refused = Command::new(PROXY)
        .arg("--config")
        .arg(dir.path().join("c.ini"))
        .args(["--listen", &addr.to_string()])
        .output()
        .expect("run");
    assert!(!refused.status.success(), "a second bind without reuse_port succeeded");

    let load = fresh_and_kept(addr, 6, 4);
    load.wait_ok(400);
    assert!(served(&first) > 0 && served(&second) > 0, "the kernel spreads clients over both");
    first.signal("TERM");
    assert!(first.wait_exit().success(), "{}", first.log_text());
    let after = served(&second);
    load.wait_ok(400);
    load.finish_without_failures();
    assert!(served(&second) > after, "the remaining instance serves everything");
}

#[test]
fn takeover_under_load_refuses_resets_and_fails_nothing_and_the_old_process_exits_0() {
    let ds = dummies(2);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 32\ndrain_timeout_ms = 5000\ncontrol_socket = {}\n\
         [admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n{}",
        socket.display(),
        backends_section(&addrs)
    );
    let (mut old, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&old);
    old.wait_for("control socket");
    let load = fresh_and_kept(addr, 6, 4);
    load.wait_ok(300);

    let mut cmd = Command::new(PROXY);
    cmd.current_dir(old.dir())
        .arg("--config")
        .arg(old.dir().join("config.ini"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--takeover")
        .arg(&socket);
    let new = Proc::spawn(&mut cmd, None);
    assert_eq!(new.listening_addr(), addr, "the new process serves the same socket");
    new.wait_for("takeover: accepting");
    old.wait_for("takeover: the new process accepts");
    let status = old.wait_exit();
    assert!(status.success(), "old process: {status}; log:\n{}", old.log_text());
    assert!(old.log_text().contains("served "), "the old process printed its summary");
    let before = served(&new);
    load.wait_ok(300);
    load.finish_without_failures();
    assert!(served(&new) > before, "the new process serves the load");
    // The admin listener came along too.
    assert_eq!(http_get(admin, "/health").status, 200);
    // And the new process offers the next upgrade on the same path.
    new.wait_for("control socket");
    assert!(socket.exists());
}

#[test]
fn a_live_control_socket_is_left_to_its_proxy_and_each_removes_only_its_own_at_exit() {
    let ds = dummies(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\ncontrol_socket = {}\n[health]\nenabled = false\n{}",
        socket.display(),
        backends_section(&[ds[0].1])
    );
    let (mut first, _) = proxy_with(&config, &[]);
    first.wait_for("control socket");
    // A second instance given the same path (another port) leaves the first one's socket be:
    // replacing it would leave the first with no way to be upgraded.
    let (mut second, _) = proxy_with(&config, &[]);
    let refused = second.wait_for("another proxy_server serves it");
    assert!(refused.contains("upgrades in place (--takeover) are off"), "{refused}");
    second.signal("TERM");
    assert!(second.wait_exit().success());
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the first proxy's control socket is still live"
    );
    // At exit a proxy removes its own socket file.
    first.signal("TERM");
    assert!(first.wait_exit().success());
    assert!(!socket.exists(), "the control socket's file was left behind");
}

/// `control_socket` naming a file that is not a socket (a typo for the config, say) is
/// refused by `--check` and at start, and the file is left whole: binding used to delete it.
/// So are a directory, a missing directory and a path too long for a unix socket, which failed
/// only at start, turning upgrades in place off (`nginx -t` checks its paths too).
#[test]
fn a_control_socket_path_that_cannot_be_a_socket_is_refused_and_what_is_there_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let precious = dir.path().join("precious.ini");
    std::fs::write(&precious, "keep me\n").expect("write");
    let long = format!("/tmp/{}", "s".repeat(120));
    let missing = dir.path().join("no/such/dir/control.sock");
    let cases = [
        (precious.display().to_string(), "a file that is not a socket"),
        (dir.path().display().to_string(), "a directory"),
        (missing.display().to_string(), "does not exist"),
        (long, "a unix socket's path has at most 107"),
    ];
    for (path, why) in cases {
        let config = dir.path().join("proxy.ini");
        let text =
            format!("[proxy]\nlisten = 127.0.0.1:0\ncontrol_socket = {path}\n[backends]\na = 127.0.0.1:1\n");
        std::fs::write(&config, text).expect("config");
        for check in [true, false] {
            let mut cmd = Command::new(PROXY);
            cmd.arg("--config").arg(&config).current_dir(dir.path());
            if check {
                cmd.arg("--check");
            }
            let out = cmd.output().expect("proxy_server");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{path} (check: {check}): {err}");
            assert!(err.contains("control_socket") && err.contains(why), "{path}: {err}");
        }
    }
    assert_eq!(std::fs::read_to_string(&precious).expect("still there"), "keep me\n");
}
