//! Waits off the workers (issue #18): a plain HTTP connection that has sent nothing yet, or only
//! part of a head, waits in the parker, not in a worker. A slowloris crowd then costs a
//! well-behaved client nothing, as HAProxy and nginx serve it beside the same crowd; and
//! `header_ms` still bounds a head from its start, however many times it parked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A trickled head that never ends: one more header byte at a time.
const ENDLESS: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";

fn accepted(admin: SocketAddr) -> u64 {
    let stats = proxy_stats(admin);
    stats["connections_accepted"].as_u64().expect("connections_accepted")
}

/// Holds `silent` connections that never send a byte and `trickling` ones that send one byte of
/// an endless head every `pace`, reconnecting any the proxy closes (the attacker renews them),
/// until dropped.
struct Crowd {
    stop: Arc<AtomicBool>,
    driver: Option<thread::JoinHandle<()>>,
}

impl Crowd {
    fn start(addr: SocketAddr, silent: usize, trickling: usize, pace: Duration) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let driver = thread::spawn(move || {
            let quiet: Vec<TcpStream> = (0..silent).map(|_| connect(addr)).collect();
            let mut slow: Vec<(TcpStream, usize)> = (0..trickling).map(|_| (connect(addr), 0)).collect();
            // Bounded: the test drops the crowd, and in any case it gives up after a minute.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (s, sent) in slow.iter_mut() {
                    let byte = if *sent < ENDLESS.len() { ENDLESS[*sent] } else { b'a' };
                    if s.write_all(&[byte]).is_err() {
                        *s = connect(addr);
                        *sent = 0;
                    } else {
                        *sent += 1;
                    }
                }
                thread::sleep(pace);
            }
            drop(quiet);
        });
        Crowd { stop, driver: Some(driver) }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}

/// One GET on a new connection: its status line and how long it took.
fn timed_get(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    (text.lines().next().unwrap_or("(nothing)").to_string(), started.elapsed())
}

#[test]
fn a_slowloris_crowd_costs_a_well_behaved_client_nothing_as_with_haproxy_and_nginx() {
    let (_d, backend) = dummy("app");
    // The setting: 64 workers and the default header_ms, 192 silent connections and 64
    // that trickle a head one byte every 0.5 s.
    let config = format!(
        "[proxy]\nmode = http\nworkers = 64\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let crowd = Crowd::start(addr, 192, 64, Duration::from_millis(500));
    let deadline = Instant::now() + WAIT;
    while accepted(admin) < 256 {
        assert!(Instant::now() < deadline, "the crowd never got in: {} accepted", accepted(admin));
        thread::sleep(Duration::from_millis(10));
    }
    let mut slowest = Duration::ZERO;
    for i in 0..80 {
        let (status, took) = timed_get(addr);
        assert!(status.starts_with("HTTP/1.1 200"), "request {i} beside the crowd: {status} after {took:?}");
        slowest = slowest.max(took);
    }
    assert!(slowest <= Duration::from_millis(250), "slowest request beside the crowd took {slowest:?}");
    drop(crowd);
}

#[test]
fn a_head_split_across_many_parks_is_served_and_header_ms_spans_them_all() {
    let (_d, backend) = dummy("app");
    // Two workers only, and two clients trickling endless heads: were a worker to wait for
    // their bytes, nobody else would be served.
    let config = format!(
        "[proxy]\nmode = http\nworkers = 2\n[timeouts]\nheader_ms = 1500\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let trickle = |addr: SocketAddr| {
        thread::spawn(move || {
            let mut s = connect(addr);
            s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            let started = Instant::now();
            let mut out = Vec::new();
            for byte in ENDLESS.iter().copied().chain(std::iter::repeat(b'a')) {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                let mut chunk = [0u8; 512];
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                    Err(_) if started.elapsed() < Duration::from_secs(10) => {}
                    Err(_) => break,
                }
            }
            (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
        })
    };
    let slow = [trickle(addr), trickle(addr)];
    // Meanwhile a head in ten pieces, 50 ms apart: it parks between them and is served whole.
    let mut s = connect(addr);
    let head = b"GET /split HTTP/1.1\r\nHost: x\r\nX-Part: 1234567890\r\nConnection: close\r\n\r\n";
    for piece in head.chunks(head.len().div_ceil(10)) {
        s.write_all(piece).expect("piece");
        thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // And whole requests beside the tricklers are served at once.
    for _ in 0..5 {
        let (status, took) = timed_get(addr);
        assert!(
            status.starts_with("HTTP/1.1 200") && took <= Duration::from_millis(250),
            "{status} after {took:?}"
        );
    }
    for t in slow {
        let (answer, took) = t.join().expect("trickler");
        // A byte every 100 ms, parked in between each time: the clock kept running.
        assert!(answer.starts_with("HTTP/1.1 408"), "after {took:?}: {answer:?}");
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(6), "408 after {took:?}");
    }
    p.wait_for("request head not complete within header_ms");
}

#[test]
fn a_tls_slowloris_crowd_of_silent_and_half_handshakes_costs_a_tls_client_nothing() {
    use crate::tls::{client_config, tls_connect, tls_proxy, Ca};
    let (_d, backend) = dummy("app");
    let ca = Ca::new("crowd CA");
    // 16 workers; 64 connections that never send a ClientHello and 64 that send half of one.
    let (p, addr, _certs) = tls_proxy(&ca, "http", &[backend], "", "");
    let admin = admin_addr(&p);
    let silent: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
    let half: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect(addr);
            // A handshake record announcing 512 bytes, of which 6 come.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("half a hello");
            s
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while accepted(admin) < 128 {
        assert!(Instant::now() < deadline, "the crowd never got in: {} accepted", accepted(admin));
        thread::sleep(Duration::from_millis(10));
    }
    let config = client_config(&ca, None);
    let mut slowest = Duration::ZERO;
    for i in 0..80 {
        let started = Instant::now();
        let mut tls = tls_connect(addr, config.clone(), "localhost").expect("handshake beside the crowd");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "request {i} after {took:?}: {text}");
        slowest = slowest.max(took);
    }
    assert!(slowest <= Duration::from_millis(250), "slowest TLS request beside the crowd took {slowest:?}");
    drop((silent, half));
}

#[test]
fn idle_and_trickling_tls_clients_park_and_come_back_with_their_session() {
    use crate::tls::{client_config, tls_connect, Ca};
    let (_d, backend) = dummy("app");
    let ca = Ca::new("park CA");
    let (_certs, tls_lines) = ca.proxy_tls();
    // One worker: a TLS client that held it while idle, or while trickling its head, would
    // keep every other client out.
    let config = format!(
        "[proxy]\nmode = http\nworkers = 1\n[health]\nenabled = false\n\
         {tls_lines}{}",
        backends_section(&[backend])
    );
    let (_p, addr) = proxy_with(&config, &[]);
    let tls_config = client_config(&ca, None);
    let get = |tls: &mut crate::tls::Tls, close: bool| -> String {
        let connection = if close { "Connection: close\r\n" } else { "" };
        write!(tls, "GET / HTTP/1.1\r\nHost: localhost\r\n{connection}\r\n").expect("send");
        // One response, read exactly (the connection stays usable after it).
        let mut wire = lbproxy::h1::Wire::new(&mut *tls);
        let head =
            wire.read_head(1 << 16, |buf| lbproxy::h1::head::parse_response(buf, "GET")).expect("head");
        let mut body = Vec::new();
        wire.copy_body(head.body, &mut body).expect("body");
        assert!(wire.buffered().is_empty(), "bytes past the response");
        format!("{} {}", head.status, String::from_utf8_lossy(&body))
    };
    // Two keep-alive clients served once, then idle.
    let mut idle: Vec<_> =
        (0..2).map(|_| tls_connect(addr, tls_config.clone(), "localhost").expect("handshake")).collect();
    for tls in &mut idle {
        assert!(get(tls, false).starts_with("200"));
    }
    // A third trickles its head over TLS, a few bytes at a time.
    let mut slow = tls_connect(addr, tls_config.clone(), "localhost").expect("handshake");
    let head = b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Part: 123456789\r\n";
    for piece in head.chunks(8) {
        slow.write_all(piece).expect("piece");
        slow.flush().expect("flush");
        thread::sleep(Duration::from_millis(30));
    }
    // Meanwhile others are served by the one worker, at once.
    for _ in 0..3 {
        let started = Instant::now();
        let mut tls = tls_connect(addr, tls_config.clone(), "localhost").expect("handshake");
        assert!(get(&mut tls, true).starts_with("200"));
        assert!(started.elapsed() <= Duration::from_millis(250), "took {:?}", started.elapsed());
    }
    // The trickled head finishes and is served; the idle ones come back over their sessions.
    slow.write_all(b"Connection: close\r\n\r\n").expect("end of head");
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    for tls in &mut idle {
        assert!(get(tls, false).starts_with("200"));
    }
}

/// Issue #18: descriptor exhaustion. Silent connections take every descriptor the proxy may
/// open (its accepts then fail with EMFILE and back off), yet keep-alive clients it served
/// before are answered at once: the silent ones wait in the parker, not in workers, and the
/// requests reuse pooled backend connections. No backend is marked down: a health check the
/// proxy cannot even open says nothing about the backend, as a proxied connect failing so
/// never counts against it.
#[test]
fn served_keep_alive_clients_are_answered_while_silent_connections_hold_every_descriptor() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\ninterval_ms = 100\nfall = 1\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_under("ulimit -n 64", &config);
    let mut served: Vec<_> = (0..4).map(|_| lbproxy::h1::Wire::new(connect(addr))).collect();
    for w in &mut served {
        assert_eq!(get(w, "/", "").status, 200);
    }
    // Far more silent connections than 64 descriptors allow.
    let mark = p.mark();
    let silent: Vec<TcpStream> = (0..120).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    p.wait_for("Too many open files");
    for round in 0..3 {
        for (i, w) in served.iter_mut().enumerate() {
            let started = Instant::now();
            assert_eq!(get(w, "/", "").status, 200, "round {round}, client {i}");
            assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
        }
        // Checks run (100 ms apart) while the descriptors are gone: each is skipped.
        p.wait_for("health check of app1 skipped");
    }
    let log = p.lines_from(mark).join("\n");
    assert!(!log.contains(" DOWN "), "a backend was marked down for the proxy's own shortage:\n{log}");
    drop(silent);
}

/// Issue #18's new user: with the default settings, 1,100 silent connections on the TLS port
/// (more than the default workers) used to delay the next `curl https://` by 9.6 s. Handshakes
/// that have not begun wait in the parker, so curl is answered at once, every time.
#[test]
fn eleven_hundred_silent_tls_connections_with_the_default_workers_cost_curl_nothing() {
    use crate::tls::Ca;
    use std::process::Command;
    raise_fd_limit();
    let (_d, backend) = dummy("app");
    let ca = Ca::new("crowd CA");
    let (certs, tls_lines) = ca.proxy_tls();
    let config = format!(
        "[proxy]\nmode = http\n[admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n\
         {tls_lines}{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let silent: Vec<TcpStream> = (0..1100).map(|_| connect(addr)).collect();
    let deadline = Instant::now() + WAIT;
    while accepted(admin) < 1100 {
        assert!(Instant::now() < deadline, "the crowd never got in: {} accepted", accepted(admin));
        thread::sleep(Duration::from_millis(10));
    }
    let port = addr.port();
    for i in 0..5 {
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(certs.path().join("ca.pem"))
            .args([
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                &format!("https://localhost:{port}/"),
            ])
            .output()
            .expect("curl");
        let took = started.elapsed();
        assert!(out.status.success(), "curl {i}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("app"), "curl {i}");
        // curl's own start-up is part of it; the crowd used to add seconds.
        assert!(took <= Duration::from_millis(500), "curl {i} beside the crowd took {took:?}");
    }
    drop(silent);
}

#[test]
fn waiting_for_a_free_worker_is_logged_not_silent() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 1\n[health]\nenabled = false\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_with(&config, &[]);
    // The only worker is busy with a slow response (1.5 s: the backend's slow-head fault)...
    let first = std::thread::spawn(move || http_get(addr, "/?fault=slow-head&delay_ms=1500").status);
    ds[0].0.wait_for("fault slow-head on GET");
    // ...so a second client waits in the queue until it is done.
    assert_eq!(http_get(addr, "/").status, 200);
    assert_eq!(first.join().expect("first"), 200);
    let line = p.wait_for("for a free worker");
    assert!(
        line.contains("every one taking connections was busy, of 1; see [proxy] workers and active_workers"),
        "{line}"
    );
}

/// An idle keep-alive client does not hold a worker (Apache's event MPM, nginx and HAProxy
/// alike): with one worker, a second client is served while the first idles, and the first is
/// served again afterwards on the same connection.
#[test]
fn an_idle_keep_alive_client_parks_and_lets_its_worker_serve_others() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 1\n[health]\nenabled = false\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut first = lbproxy::h1::Wire::new(connect(addr));
    assert_eq!(get(&mut first, "/", "").status, 200);
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(http_get(addr, "/").status, 200);
        // The first client's worker is free once it idled `PARK_AFTER` (100 ms).
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "waited {:?} for the one worker",
            started.elapsed()
        );
        let again = get(&mut first, "/", "");
        assert_eq!(again.status, 200, "the parked client is served again on its connection");
    }
    assert!(!p.log_text().contains("for a free worker"), "{}", p.log_text());
}

/// More busy keep-alive clients than workers: between requests each goes back on the workers'
/// queue (requeued, not watched: its next request is usually there by its turn), or parks if
/// it went quiet. Every request is answered on its own connection with its own response, and a
/// client that idles among them is served again afterwards.
#[test]
fn keep_alive_clients_beyond_the_workers_take_turns_and_each_gets_its_own_answers() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 2\n[health]\nenabled = false\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut idler = lbproxy::h1::Wire::new(connect(addr));
    assert_eq!(get(&mut idler, "/echo?idler=0", "").status, 200);
    let clients: Vec<_> = (0..16)
        .map(|c| {
            thread::spawn(move || {
                let mut wire = lbproxy::h1::Wire::new(connect(addr));
                for i in 0..25 {
                    let path = format!("/echo?c={c}&i={i}");
                    let r = get(&mut wire, &path, "");
                    assert_eq!(r.status, 200, "client {c} request {i}");
                    assert!(
                        r.text().contains(&format!("GET {path} HTTP/1.1")),
                        "client {c} got another's answer"
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    // The idle client parked while the crowd took turns; its connection still serves it.
    let r = get(&mut idler, "/echo?idler=1", "");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("GET /echo?idler=1 HTTP/1.1"));
    assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
}
