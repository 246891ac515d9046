//! A new user's first hour (issue #20): the numbers /stats and the logs give must tell the
//! truth, and the set-up the README asks for must work as written.

use std::net::SocketAddr;

use lbproxy::h1::Wire;

use crate::util::*;

fn stats(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(admin, "/stats").text()).expect("/stats is JSON")
}

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
    let bytes_in: u64 = line
        .split("B in")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `B in` in {line:?}"));
    // The rewritten head: request line, Host and the forwarding headers at least.
    assert!(bytes_in >= 60, "{line}");
    let s = stats(admin);
    let sent = s["backends"][0]["bytes_up"].as_u64().expect("bytes_up");
    assert!(sent >= 20 * bytes_in, "20 requests of {bytes_in} bytes, {sent} counted: {s}");
    let metrics = http_get(admin, "/metrics").text();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("lb_backend_sent_bytes_total{backend=\"app1\"}"))
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
