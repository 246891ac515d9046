//! Active health checks against backends that misbehave: a check is bounded by `timeout_ms` in
//! all, as HAProxy's `timeout check`, so one backend's slowness is its own failure and never
//! delays the checks of the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A backend that answers every request one byte per 100 ms: a valid head, padded to 3 KiB.
fn dripping_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head);
                let answer =
                    format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(3000));
                // Bounded: 3 KiB at 10 bytes a second is five minutes, but the test is over
                // long before, and a write to a closed socket ends it.
                let deadline = Instant::now() + Duration::from_secs(60);
                for byte in answer.bytes() {
                    if Instant::now() > deadline || s.write_all(&[byte]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    addr
}

#[test]
fn an_answer_dripped_a_byte_at_a_time_fails_its_check_and_delays_no_other() {
    let drip = dripping_backend();
    let (good, good_addr) = dummy("good");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\ninterval_ms = 200\ntimeout_ms = 500\nfall = 2\n\
         max_fails = 0\n[backends]\ndrip = {drip}\ngood = {good_addr}\n"
    );
    let (p, _addr) = proxy_with(&config, &[]);
    let down = p.wait_for(&format!("drip {drip} DOWN"));
    assert!(down.contains("timed out"), "{down}");
    // The other member's checks go on: stopped, it goes down within a few rounds.
    good.signal("KILL");
    p.wait_for(&format!("good {good_addr} DOWN"));
}

/// A TCP relay to `to` that passes what the client sends at once, and what `to` answers one
/// byte per 50 ms: a TLS backend dripping its records (its handshake's too).
fn dripping_relay(to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(upstream) = std::net::TcpStream::connect(to) else { continue };
            let (mut up_in, mut up_out) =
                (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
            thread::spawn(move || {
                let _ = std::io::copy(&mut up_in, &mut up_out);
            });
            thread::spawn(move || {
                let (mut from, mut to) = (upstream, client);
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut byte = [0u8; 1];
                while Instant::now() < deadline && matches!(from.read(&mut byte), Ok(1)) {
                    if to.write_all(&byte).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    addr
}

#[test]
fn a_tls_backend_dripping_its_records_fails_its_check_within_timeout_ms() {
    // rustls reads on until a record is whole, so no timeout per read bounds this: the check's
    // deadline cuts it.
    let (_d, app) = dummy("app1");
    let ca = crate::tls::Ca::new("backend CA");
    let certs = tempfile::tempdir().expect("tempdir");
    ca.write(certs.path(), "backend", &["backend.test"]);
    let d = certs.path().display();
    let backend_config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\nenabled = false\n\
         [tls]\ncert = {d}/backend.pem\nkey = {d}/backend.key\n{}",
        backends_section(&[app])
    );
    let (_https, https_addr) = proxy_with(&backend_config, &[]);
    let drip = dripping_relay(https_addr);
    let (good, good_addr) = dummy("good");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\ninterval_ms = 200\ntimeout_ms = 500\nfall = 2\n\
         max_fails = 0\n[tls]\nbackend_ca = {d}/ca.pem\n\
         [backends]\ndrip = {drip} tls sni=backend.test\ngood = {good_addr}\n"
    );
    let (p, _addr) = proxy_with(&config, &[]);
    let down = p.wait_for(&format!("drip {drip} DOWN"));
    assert!(down.contains("timed out"), "{down}");
    good.signal("KILL");
    p.wait_for(&format!("good {good_addr} DOWN"));
}
