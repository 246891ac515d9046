//! A new user's first hour (issue #20): the numbers /stats and the logs give must tell the
//! truth, and the set-up the README asks for must work as written.

use std::net::SocketAddr;

use lbproxy::h1::Wire;

use crate::util::*;

/// HTTP mode counts the bytes it sends a backend: every request's rewritten head, not only
/// bodies (GETs used to leave `bytes_up` and `lb_backend_sent_bytes_total` at 0), and the
/// access line's `B in` says the same. The summary at exit says `sent` and `received`.
#[test]
fn http_mode_counts_the_bytes_sent_to_a_backend_heads_included() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (mut p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let mut w = Wire::new(connect(addr));
    for _ in 0..20 {
        assert_eq!(get(&mut w, "/", "").status, 200);
    }
    let line = p.wait_for("\"GET /\"");
    let bytes_in = logged_bytes(&line, "B in");
    // The rewritten head: request line, Host and the forwarding headers at least.
    assert!(bytes_in >= 60, "{line}");
    let s = proxy_stats(admin);
    let sent = s["backends"][0]["bytes_up"].as_u64().expect("bytes_up");
    assert!(sent >= 20 * bytes_in, "20 requests of {bytes_in} bytes, {sent} counted: {s}");
    let metrics = http_get(admin, "/metrics").text();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("lb_backend_sent_bytes_total{backend=\"app1\",pool=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("lb_backend_sent_bytes_total");
    assert_eq!(counted, sent);
    drop(w);
    p.signal("TERM");
    assert!(p.wait_exit().success());
    let summary = p.wait_for("backend app1 ");
    assert!(summary.contains(&format!(" sent={sent}B received=")), "{summary}");
}

/// A reload names what changed and only that: the key that needs a restart (`[timeouts]
/// idle_ms 60000 -> 1000`, not `[timeouts] changed`), and of a backend line only the values that
/// differ (`weight 1->3`, no `max_conns 0->0`).
#[test]
fn a_reload_names_each_changed_key_and_only_what_changed_on_a_backend_line() {
    let (_d, backend) = dummy("app1");
    let config = |idle: u64, weight: u32| {
        format!(
            "[proxy]\nmode = http\n[timeouts]\nidle_ms = {idle}\n[health]\nenabled = false\n\
             [backends]\napp1 = {backend} weight={weight}\n"
        )
    };
    let (p, _addr) = proxy_with(&config(60000, 1), &[]);
    std::fs::write(p.dir().join("config.ini"), config(1000, 3)).expect("write");
    let mark = p.mark();
    p.signal("HUP");
    let restart = p.wait_for("takes effect after a restart");
    assert!(restart.contains("reload: [timeouts] idle_ms changed (60000 -> 1000)"), "{restart}");
    let changed = p.wait_for("weight 1->3");
    assert!(!changed.contains("max_conns"), "a max_conns that did not change: {changed}");
    let lines = p.lines_from(mark);
    let restarts = lines.iter().filter(|l| l.contains("takes effect after a restart")).count();
    assert_eq!(restarts, 1, "only idle_ms needs a restart: {lines:#?}");
}

/// dummy_server on Ctrl-C says what it waits for, and only when it waits: its own wake-up
/// connection is not a client ("waiting for 1 open connection(s)" then, in the same
/// millisecond, "exiting with 0" was the old story).
#[test]
fn dummy_server_on_ctrl_c_waits_only_for_real_connections_and_says_how_it_ended() {
    let (mut idle, _) = dummy("app1");
    idle.signal("INT");
    let line = idle.wait_for("stopped accepting");
    assert!(line.ends_with("no connection open, exiting"), "{line}");
    assert_eq!(idle.wait_exit().code(), Some(0));
    assert!(!idle.log_text().contains("waiting"), "{}", idle.log_text());

    let (mut busy, addr) = dummy("app2");
    let mut held = connect(addr);
    assert_eq!(exchange(&mut held, "hello"), "app2");
    busy.signal("INT");
    let line = busy.wait_for("stopped accepting");
    assert!(line.contains("for 1 open connection(s)"), "{line}");
    drop(held);
    busy.wait_for("every connection closed; exiting");
    assert_eq!(busy.wait_exit().code(), Some(0));
}

/// The README's HTTPS steps as a new user runs them, with no config.ini edit: make a local CA
/// and certificate with scripts/make_cert.sh, start with --tls-cert/--tls-key and --admin, and
/// ask with curl --cacert, as the script prints. A key file that is missing is reported on
/// the `key` line (it used to be blamed on `cert`'s).
#[test]
fn https_and_the_admin_listener_need_no_config_edit_and_a_missing_key_names_its_own_line() {
    use std::process::Command;
    let (_d, backend) = dummy("app1");
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path().join("certs");
    let made = Command::new("scripts/make_cert.sh").arg(&dir).output().expect("make_cert.sh");
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(made.status.success(), "{said}{}", String::from_utf8_lossy(&made.stderr));
    assert!(
        said.contains(&format!("curl --cacert {}/ca.pem https://localhost:8080/", dir.display())),
        "{said}"
    );
    let (cert, key) = (dir.join("proxy.pem"), dir.join("proxy.key"));
    let config = format!("[health]\nenabled = false\n{}", backends_section(&[backend]));
    let flags = ["--mode", "http", "--admin", "127.0.0.1:0", "--tls-cert"];
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([cert_s.as_str(), "--tls-key", key_s.as_str()]);
    let (p, addr) = proxy_with(&config, &args);
    let admin = admin_addr(&p);
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg(format!("https://localhost:{}/", addr.port()))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("app1"));
    assert_eq!(proxy_stats(admin)["tls_handshakes"], 1);
    // A [tls] key naming a missing file: the error is on the key's line.
    let file = certs.path().join("broken.ini");
    let text = format!(
        "[tls]\ncert = {cert_s}\nkey = {}/missing.key\n[backends]\napp1 = {backend}\n",
        dir.display()
    );
    std::fs::write(&file, text).expect("write");
    let check = Command::new(PROXY).arg("--config").arg(&file).arg("--check").output().expect("check");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:3: [tls] key: ", file.display())), "{err}");
}

/// A port someone else holds gets a hint, and so does a flag other tools use (`--port`).
#[test]
fn an_address_in_use_and_a_port_flag_get_a_hint() {
    use std::process::Command;
    let (_d, backend) = dummy("app1");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(PROXY)
        .args(["--config", "/dev/null", "--log-file", "", "--backend", &backend.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is another proxy_server (or dummy_server) running there?"), "{err}");
    // dummy_server's hint names its own way to pick a port (an argument, not --listen).
    let out = Command::new(DUMMY).arg(port.to_string()).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let hint = format!(
        "is another dummy_server (or proxy_server) running there? Pick another port: ./dummy_server {}",
        port + 1
    );
    assert!(err.contains(&hint) && !err.contains("--listen"), "{err}");
    let out = Command::new(PROXY).args(["--port", "8080"]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("hint: the address (or a bare port) is given with --listen"), "{err}");
}

/// simulate_client --tls loads the proxy's TLS listener in every mode (https, wss and TLS
/// lines), trusting scripts/make_cert.sh's CA with --cacert or nothing with --insecure, and a
/// certificate it cannot verify is a failure it names.
#[test]
fn simulate_client_tls_loads_https_wss_and_tls_lines_through_the_proxy() {
    use std::process::Command;
    let ds = dummies(2);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path().join("certs");
    let made = Command::new("scripts/make_cert.sh").arg(&dir).output().expect("make_cert.sh");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (cert, key, ca) = (dir.join("proxy.pem"), dir.join("proxy.key"), dir.join("ca.pem"));
    let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
    for (mode, client_mode) in [("http", "http"), ("http", "ws"), ("tcp", "tcp")] {
        let config =
            format!("[proxy]\nmode = {mode}\n[health]\nenabled = false\n{}", backends_section(&addrs));
        let (_p, addr) = proxy_with(&config, &["--tls-cert", &cert, "--tls-key", &key]);
        for trust in [vec!["--cacert", ca.as_str()], vec!["--insecure"]] {
            let args =
                [&["--mode", client_mode, "--tls"], &trust[..], &["--clients", "2", "--requests", "5"]];
            let (code, text, err) = simulate(addr, &args.concat());
            assert_eq!(code, Some(0), "{client_mode} {trust:?}: {text}{err}");
            assert!(text.contains("app1") && text.contains("app2"), "{client_mode}: {text}");
        }
        // Without the CA (Mozilla's roots only) the certificate is refused, and said so.
        let args = ["--mode", client_mode, "--tls", "--clients", "1", "--requests", "1"];
        let (code, text, err) = simulate(addr, &args);
        let all = format!("{text}{err}");
        assert_ne!(code, Some(0), "{all}");
        assert!(all.contains("TLS handshake") || all.contains("certificate"), "{all}");
    }
}

/// `--check` says what is valid but probably not meant, as `nginx -t` prints its `[warn]`
/// lines, and still exits 0.
#[test]
fn check_prints_warnings_and_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("warn.ini");
    std::fs::write(&file, "[proxy]\nworkers = 4\nactive_workers = 64\n[backends]\napp1 = 127.0.0.1:9\n")
        .expect("write");
    let check =
        std::process::Command::new(PROXY).arg("--config").arg(&file).arg("--check").output().expect("check");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{err}");
    let warning =
        format!("warning: {}:3: [proxy] active_workers: 64 is more than workers (4): 4 take", file.display());
    assert!(err.contains(&warning), "{err}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("is valid"));
}

/// `--check` opens the files the start opens, as `nginx -t` opens its logs: a log path that is
/// a directory and a missing error-page directory fail it, naming the key, where they passed
/// and then failed the start.
#[test]
fn check_fails_on_files_the_start_could_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("files.ini");
    let cases = [
        ("log_file", dir.path().display().to_string(), "is a directory"),
        ("access_log", dir.path().display().to_string(), "is a directory"),
        ("error_pages", dir.path().join("no-such-dir").display().to_string(), "No such file"),
    ];
    for (key, value, why) in cases {
        std::fs::write(
            &file,
            format!("[proxy]\nworkers = 4\n{key} = {value}\n[backends]\napp1 = 127.0.0.1:9\n"),
        )
        .expect("write");
        let check = std::process::Command::new(PROXY)
            .arg("--config")
            .arg(&file)
            .arg("--check")
            .current_dir(dir.path())
            .output()
            .expect("check");
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(&format!("[proxy] {key}: ")) && err.contains(why), "{key}: {err}");
    }
}

/// The per-backend byte counters count what moved, as HAProxy's do: a download the client
/// abandons and one the backend cuts short (before, both counted nothing), and the bytes of a
/// TCP relay while it is still open (before, only once it closed).
#[test]
fn byte_counters_count_cut_transfers_and_a_relay_while_it_lasts() {
    use std::io::{Read, Write};
    let (_d, backend) = dummy("app1");
    let config = |mode: &str| {
        format!(
            "[proxy]\nmode = {mode}\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
            backends_section(&[backend])
        )
    };
    let (p, addr) = proxy_with(&config("http"), &[]);
    let admin = admin_addr(&p);
    let down = || backend_stats(admin, "app1")["bytes_down"].as_u64().expect("bytes_down");
    // The client reads 1 MiB of 64 and leaves.
    let mut s = connect(addr);
    s.write_all(b"GET /?bytes=67108864 HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut got = 0;
    let mut buf = [0u8; 65536];
    while got < 1 << 20 {
        got += s.read(&mut buf).expect("read");
    }
    drop(s);
    wait_until("the abandoned download counted", || down() >= 1 << 20);
    // The backend sends half of 2 MB and resets: the 1 MB the client got counts.
    let before = down();
    let mut s = connect(addr);
    s.write_all(b"GET /?fault=reset-mid&bytes=2000000 HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut cut = Vec::new();
    let _ = s.read_to_end(&mut cut);
    assert!(cut.len() > 1_000_000 && cut.len() < 2_000_000, "a truncated body: {} bytes", cut.len());
    wait_until("the truncated download counted", || down() >= before + 1_000_000);

    // TCP: 4 MiB echoed, the connection still open.
    let (tp, taddr) = proxy_with(&config("tcp"), &[]);
    let tadmin = admin_addr(&tp);
    let mut s = connect(taddr);
    let line = [b'x'; 4095];
    let mut echoed = 0;
    for _ in 0..1024 {
        s.write_all(&line).and_then(|()| s.write_all(b"\n")).expect("send a line");
        let mut want = line.len() + 1 + "[app1] ".len();
        while want > 0 {
            let n = s.read(&mut buf[..want.min(65536)]).expect("echo");
            assert!(n > 0, "the relay closed");
            (want, echoed) = (want - n, echoed + n);
        }
    }
    let counted = || {
        let b = backend_stats(tadmin, "app1");
        (b["bytes_up"].as_u64().unwrap_or(0), b["bytes_down"].as_u64().unwrap_or(0))
    };
    wait_until("the open relay's bytes counted", || {
        let (up, down) = counted();
        up >= 4 << 20 && down as usize >= echoed
    });
    s.write_all(b"still here\n").expect("the relay is open");
    let mut tail = [0u8; 64];
    let n = s.read(&mut tail).expect("echo");
    assert!(tail[..n].ends_with(b"still here\n"), "{:?}", String::from_utf8_lossy(&tail[..n]));
}

#[test]
fn zero_simulated_clients_or_requests_is_an_error_and_a_dummy_takes_a_bare_ipv6_host() {
    // 0 printed an empty table and exited 0, as if something had been measured.
    for flag in ["--clients", "--requests"] {
        let out = std::process::Command::new(CLIENT).args([flag, "0"]).output().expect("simulate_client");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid value '0' for '{flag}")) && err.contains("not in 1..="),
            "{err}"
        );
    }
    // `--host ::1` as well as `--host '[::1]'` (it said "has no port").
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let (_d, addr) = dummy_with("six", 0, &["--host", "::1"]);
        assert!(addr.is_ipv6(), "{addr}");
        assert_eq!(exchange(&mut connect(addr), "hi"), "six");
    } else {
        // No IPv6 loopback here: the address is still understood, and cannot be bound.
        let out = std::process::Command::new(DUMMY)
            .args(["0", "--host", "::1", "--log-dir", ""])
            .output()
            .expect("dummy_server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("[::1]:0") && !err.contains("no port"), "{err}");
    }
}

#[test]
fn simulate_client_http_mode_reports_backends_and_statuses() {
    let ds = dummies(3);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let (code, text, _) = simulate(addr, &["--mode", "http", "--clients", "3", "--requests", "20"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["app1", "app2", "app3", "status 200", "p50", "p99"] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
}
