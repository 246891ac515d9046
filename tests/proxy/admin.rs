//! The admin listener under abuse: idle and byte-dripping (slowloris) connections must not
//! delay a liveness probe, heads have one whole-request deadline (408, as HAProxy's
//! `timeout http-request`), and the number of open admin connections is capped.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// lbproxy::admin::HEAD_TIMEOUT.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// lbproxy::admin::MAX_PENDING.
const MAX_PENDING: usize = 256;
/// How soon /health must answer whatever else is open (issue #8: a liveness probe's budget).
const PROBE_BUDGET: Duration = Duration::from_millis(200);

/// A proxy with the admin listener on; no backend is ever contacted.
fn admin_proxy() -> (Proc, SocketAddr) {
    let (_dead, backend) = dead_addr();
    let config = format!(
        "[proxy]\nworkers = 4\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (p, _) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (p, admin)
}

/// GET /health on a new connection; how long the whole exchange took.
fn probe_health(admin: SocketAddr) -> Duration {
    let started = Instant::now();
    let resp = http_get(admin, "/health");
    let took = started.elapsed();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
    took
}

/// What a trickling client saw, and when (since its connect).
struct Trickled {
    bytes_sent: usize,
    reply: Vec<u8>,
    ended_after: Duration,
}

/// Sends a head that never ends, one byte per 150 ms (at most 40 bytes, 6 s), until the
/// server answers or closes. The 150 ms read timeout paces the bytes, so nothing sleeps.
fn trickle(admin: SocketAddr, started: crossbeam_channel::Sender<()>) -> Trickled {
    let connected = Instant::now();
    let mut s = TcpStream::connect(admin).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(150))).expect("timeout");
    let mut reply = Vec::new();
    let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    for (i, byte) in head.iter().take(40).enumerate() {
        if s.write_all(&[*byte]).is_err() {
            return Trickled { bytes_sent: i, reply, ended_after: connected.elapsed() };
        }
        if i == 0 {
            let _ = started.send(());
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() },
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                let _ = s.read_to_end(&mut reply);
                return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Trickled { bytes_sent: i + 1, reply, ended_after: connected.elapsed() },
        }
    }
    panic!("the server still waited for a head after 40 bytes over 6 s");
}

#[test]
fn admin_health_answers_within_200ms_beside_100_idle_and_20_trickling_connections() {
    let (_p, admin) = admin_proxy();
    let idle: Vec<TcpStream> = (0..100).map(|_| connect(admin)).collect();
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let tricklers: Vec<_> = (0..20)
        .map(|_| {
            let started = started_tx.clone();
            thread::spawn(move || trickle(admin, started))
        })
        .collect();
    for _ in 0..20 {
        started_rx.recv_timeout(WAIT).expect("a trickler started sending");
    }

    // Several probes while all 120 are open (the tricklers for about 2 s more).
    for i in 0..5 {
        let took = probe_health(admin);
        assert!(took < PROBE_BUDGET, "probe {i}: /health took {took:?} beside 120 stalled connections");
    }
    let stats = http_get(admin, "/stats");
    assert_eq!(stats.status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats.text()).expect("/stats is JSON");
    assert!(stats["backends"].is_array(), "{stats}");

    // The whole-head deadline ends every trickler: 408 at about 2 s, not per byte and not never.
    for t in tricklers {
        let t = t.join().expect("trickler thread");
        let reply = String::from_utf8_lossy(&t.reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "trickler got {reply:?} after {} bytes", t.bytes_sent);
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply:?}");
        assert!(
            t.ended_after >= HEAD_TIMEOUT - Duration::from_millis(100),
            "ended after {:?}, before the 2 s head deadline",
            t.ended_after
        );
        assert!(
            t.ended_after < HEAD_TIMEOUT + Duration::from_secs(1),
            "ended after {:?}, long past the 2 s head deadline ({} bytes sent)",
            t.ended_after,
            t.bytes_sent
        );
    }
    // The idle ones got 408 too, and the server closed them.
    for (i, mut s) in idle.into_iter().enumerate() {
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap_or_else(|e| panic!("idle {i}: {e}"));
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "idle {i} got {reply:?}");
    }
    assert!(probe_health(admin) < PROBE_BUDGET);
}

#[test]
fn admin_closes_the_oldest_connection_beyond_256_open() {
    let (_p, admin) = admin_proxy();
    let opened = Instant::now();
    let mut conns: Vec<TcpStream> = (0..MAX_PENDING + 20).map(|_| connect(admin)).collect();
    // The 20 oldest are closed to make room, at once and without a response; far sooner than
    // the head deadline that would otherwise answer them with 408.
    for (i, s) in conns.iter_mut().take(20).enumerate() {
        s.set_read_timeout(Some(HEAD_TIMEOUT / 2)).expect("timeout");
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("oldest {i}: got {:?}, not a close", String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("oldest {i}: {e} after {:?}: not closed", opened.elapsed()),
        }
    }
    assert!(opened.elapsed() < HEAD_TIMEOUT, "closed only after {:?}", opened.elapsed());
    // The newest are still being served: a request on one is answered.
    let newest = conns.last_mut().expect("a connection");
    newest.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut wire = lbproxy::h1::Wire::new(newest.try_clone().expect("clone"));
    assert_eq!(read_response(&mut wire, "GET").text(), "ok\n");
    assert!(probe_health(admin) < PROBE_BUDGET);
}

#[test]
fn admin_answers_bad_heads_with_400_or_431_and_405_names_get() {
    let (_p, admin) = admin_proxy();
    let (resp, _) = send_raw(admin, b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", "GET");
    assert_eq!(resp.status, 400);
    let huge = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let (resp, _) = send_raw(admin, huge.as_bytes(), "GET");
    assert_eq!(resp.status, 431);
    let (resp, _) = send_raw(admin, b"POST /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "POST");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET"));
    // Every admin response is dated (RFC 9110 §6.6.1).
    let date = resp.header("date").expect("a Date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "Date {date:?}");
}
