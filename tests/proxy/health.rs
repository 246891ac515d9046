//! Active health checks against backends that misbehave: a check is bounded by `timeout_ms` in
//! all, as HAProxy's `timeout check`, so one backend's slowness is its own failure and never
//! delays the checks of the others. And passive health never takes a pool's last member out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// Writes `bytes` to `to` one per `pace`, until they end, a write fails, or a minute is up
/// (bounded: the test is over long before).
fn drip(to: &mut TcpStream, bytes: impl IntoIterator<Item = u8>, pace: Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for byte in bytes {
        if Instant::now() > deadline || to.write_all(&[byte]).is_err() {
            return;
        }
        thread::sleep(pace);
    }
}

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
                drip(&mut s, answer.into_bytes(), Duration::from_millis(100));
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
            let Ok(upstream) = TcpStream::connect(to) else { continue };
            let (mut up_in, mut up_out) =
                (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
            thread::spawn(move || {
                let _ = std::io::copy(&mut up_in, &mut up_out);
            });
            thread::spawn(move || {
                let mut to = client;
                let bytes = std::io::BufReader::new(upstream).bytes().map_while(Result::ok);
                drip(&mut to, bytes, Duration::from_millis(50));
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

/// Live traffic never marks a pool's last member down, as nginx never marks its last server
/// down: a client asking twice for an answer the backend garbles made a one-member pool answer
/// 503 to everyone for `fail_window_ms`.
#[test]
fn live_traffic_never_marks_the_last_member_of_a_pool_down_as_nginx() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\nenabled = false\nmax_fails = 2\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    for _ in 0..3 {
        assert_eq!(http_get(addr, "/x?fault=garbage").status, 502);
    }
    let spared = p.wait_for(" STAYS ");
    assert!(spared.contains(" STAYS in rotation after 2 failures in live traffic"), "{spared}");
    assert!(spared.contains("no other member of its pool could serve"), "{spared}");
    assert_eq!(http_get(addr, "/").status, 200);
    assert!(!p.log_text().contains(" DOWN "), "{}", p.log_text());
}

/// A backend that, like gunicorn's sync worker, answers a check, shuts its side, and waits for
/// the checker's FIN before it takes the next connection. The checker closes each check's
/// socket as soon as the check is over, as HAProxy does, in both check modes: with a 60 s
/// interval, a socket kept until the next round would hold the backend for a minute.
#[test]
fn a_check_closes_its_connection_when_it_is_over_not_at_the_next_round() {
    for mode in ["http", "tcp"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, closed) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            // Serves one connection at a time, as a sync worker: bounded by the test's end.
            for mut s in listener.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut buf = [0u8; 1024];
                if mode == "http" {
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                // The checker's FIN (EOF) or its reset: either way it let go.
                let let_go = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) => {
                            break e.kind() != std::io::ErrorKind::WouldBlock
                                && e.kind() != std::io::ErrorKind::TimedOut
                        }
                    }
                };
                if tx.send(let_go).is_err() {
                    return;
                }
            }
        });
        let config = format!(
            "[proxy]\nmode = http\nworkers = 8\n[health]\nmode = {mode}\ninterval_ms = 60000\n\
             [backends]\napp = {addr}\n"
        );
        let (_p, _addr) = proxy_with(&config, &[]);
        // The first round's check (at start), let go within the wait, long before the next round.
        let let_go = closed.recv_timeout(WAIT);
        assert_eq!(let_go, Ok(true), "{mode} check: its connection was kept open");
    }
}

/// An http check names its member as the member's line does: a DNS name with its port (a
/// virtual host answers only its own name, and nginx sends `proxy_pass`'s host likewise), an
/// address as the address.
#[test]
fn an_http_check_sends_the_members_name_as_host_and_an_address_for_an_address() {
    let ok = |_: &str| b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
    let (named, literal) = (raw_backend(ok, 1), raw_backend(ok, 1));
    let port = named.addr.port();
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\ninterval_ms = 60000\n\
         [backends]\nnamed = localhost:{port}\nliteral = {}\n",
        literal.addr
    );
    let (_p, _addr) = proxy_with(&config, &[]);
    let first_head = |b: &RawBackend| {
        wait_until("a health check", || !b.seen.lock().expect("seen").is_empty());
        b.seen.lock().expect("seen")[0].clone()
    };
    let head = first_head(&named);
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: localhost:{port}\r\n")), "{head}");
    let head = first_head(&literal);
    assert!(head.contains(&format!("\r\nHost: {}\r\n", literal.addr)), "{head}");
}
