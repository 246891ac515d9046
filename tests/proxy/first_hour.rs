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
