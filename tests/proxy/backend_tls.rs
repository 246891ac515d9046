//! Backends reached over TLS (`tls` on a member's line): verified against `backend_ca` with
//! SNI, health-checked over TLS, in `[backends]` and in a `[pool.NAME]` alike, and added by a
//! reload under load as at start.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::Ca;
use crate::util::*;

/// An HTTPS backend for backend.test: another proxy, terminating TLS in front of `dummy_addr`,
/// with the directory holding its CA (`ca.pem`).
pub fn https_backend(dummy_addr: SocketAddr) -> (Proc, SocketAddr, tempfile::TempDir) {
    let ca = Ca::new("backend CA");
    let certs = tempfile::tempdir().expect("tempdir");
    ca.write(certs.path(), "backend", &["backend.test"]);
    let d = certs.path().display();
    let backend_config = format!(
        "[proxy]\nmode = http\nworkers = 16\n[admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n\
         [tls]\ncert = {d}/backend.pem\nkey = {d}/backend.key\n{}",
        backends_section(&[dummy_addr])
    );
    let (p, addr) = proxy_with(&backend_config, &[]);
    (p, addr, certs)
}

/// A `tls` member of a `[pool.NAME]` is reached over TLS as one of `[backends]` is: it was
/// connected in plain text, its requests (credentials too) readable on the wire.
#[test]
fn a_tls_member_of_a_pool_is_reached_over_tls_never_in_plain_text() {
    let (_d, dummy_addr) = dummy("app1");
    let (https_backend, https_addr, certs) = https_backend(dummy_addr);
    let d = certs.path().display();
    let config = format!(
        "[proxy]\nmode = http\nworkers = 16\n[health]\nenabled = false\n[tls]\nbackend_ca = {d}/ca.pem\n\
         [pool.secure]\nsecure1 = {https_addr} tls sni=backend.test\n[route.all]\npool = secure\n"
    );
    let (_p, addr) = proxy_with(&config, &[]);
    let resp = http_get(addr, "/");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.text().contains("Hello from app1"), "{}", resp.text());
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(admin_addr(&https_backend), "/stats").text()).expect("json");
    assert_eq!(stats["tls_handshakes"], 1, "{stats}");
    // `--check` shows it as a TLS member.
    let file = certs.path().join("front.ini");
    std::fs::write(&file, &config).expect("write");
    let check = Command::new(PROXY).arg("--config").arg(&file).arg("--check").output().expect("check");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(shown.contains(&format!("secure1 = {https_addr} weight=1 tls sni=backend.test")), "{shown}");
}

#[test]
fn a_tls_backend_is_reached_verified_against_backend_ca_with_sni_and_health_checked_over_tls() {
    let (_d, dummy_addr) = dummy("app1");
    let (https_backend, https_addr, certs) = https_backend(dummy_addr);
    let d = certs.path().display();
    let front = |sni: &str, ca_file: &str| {
        proxy_with(
            &format!(
                "[proxy]\nmode = http\nworkers = 16\n[admin]\nlisten = 127.0.0.1:0\n\
                 [health]\nenabled = true\ninterval_ms = 100\n[tls]\nbackend_ca = {ca_file}\n\
                 [backends]\napp1 = {https_addr} tls sni={sni}\n"
            ),
            &[],
        )
    };
    let ca_file = format!("{d}/ca.pem");
    let (p, addr) = front("backend.test", &ca_file);
    let resp = http_get(addr, "/");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.text().contains("Hello from app1"), "{}", resp.text());
    // Health checks speak TLS too: the backend counts handshakes from them beyond the request's.
    let (backend_admin, front_admin) = (admin_addr(&https_backend), admin_addr(&p));
    let json = |a| serde_json::from_str::<serde_json::Value>(&http_get(a, "/stats").text()).expect("json");
    let deadline = Instant::now() + WAIT;
    loop {
        let s = json(backend_admin);
        let a = json(front_admin);
        if s["tls_handshakes"].as_u64().unwrap_or(0) >= 3 && a["backends"][0]["last_check"]["result"] == "ok"
        {
            assert_eq!(s["tls_handshake_failures"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no TLS health checks: {s} {a}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A name the certificate does not carry, or another CA, fails verification: 502/503, never
    // a plaintext fallback.
    let other = Ca::new("other CA");
    let other_dir = tempfile::tempdir().expect("tempdir");
    other.write(other_dir.path(), "x", &["x"]);
    for (sni, ca_file) in
        [("wrong.test", ca_file.clone()), ("backend.test", format!("{}/ca.pem", other_dir.path().display()))]
    {
        let (_p, addr) = front(sni, &ca_file);
        let resp = http_get(addr, "/");
        assert!(resp.status == 502 || resp.status == 503, "{sni}: {} {}", resp.status, resp.text());
    }
}

/// A reload that adds a `tls` member to a pool, under load: the new member is reached over TLS
/// (its backend counts the handshakes), and no request fails across the swap. Start and reload
/// build the pools' TLS settings in the same place, and this shows it.
#[test]
fn a_reload_adding_a_tls_member_to_a_pool_under_load_reaches_it_over_tls_and_fails_no_request() {
    let (_d1, plain) = dummy("app1");
    let (_d2, behind) = dummy("app2");
    let (https_backend, https_addr, certs) = https_backend(behind);
    let d = certs.path().display();
    let config = |members: &str| {
        format!(
            "[proxy]\nmode = http\nworkers = 16\nalgorithm = round-robin\n[health]\nenabled = false\n\
             [tls]\nbackend_ca = {d}/ca.pem\n[pool.secure]\nplain1 = {plain}\n{members}[route.all]\npool = secure\n"
        )
    };
    let (p, addr) = proxy_with(&config(""), &[]);
    let reached_app2 = Arc::new(AtomicBool::new(false));
    let load = Load::start(4, |_| {
        let mut w = lbproxy::h1::Wire::new(connect(addr));
        let reached = reached_app2.clone();
        move || {
            let r = get(&mut w, "/", "");
            if r.header("X-Served-By") == Some("app2") {
                reached.store(true, Ordering::SeqCst);
            }
            match r.status {
                200 => Ok(()),
                s => Err(format!("{s}: {}", r.text())),
            }
        }
    });
    load.wait_ok(200);
    std::fs::write(
        p.dir().join("config.ini"),
        config(&format!("secure2 = {https_addr} tls sni=backend.test\n")),
    )
    .expect("rewrite config");
    p.signal("HUP");
    p.wait_for("reload: ");
    wait_until("a request served by the new TLS member", || reached_app2.load(Ordering::SeqCst));
    load.wait_ok(200);
    assert!(load.finish_without_failures() > 400);
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(admin_addr(&https_backend), "/stats").text()).expect("json");
    assert!(stats["tls_handshakes"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["tls_handshake_failures"], 0, "{stats}");
}
