//! Robustness against hostile backends, reload storms and local shortages: no client ever gets
//! another client's bytes, a reload loses no request, and our own shortages are not blamed on
//! backends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lbproxy::h1::Wire;

use crate::util::*;

/// A backend that breaks HTTP framing on purpose:
/// - `HEAD /a`: a head, then 50 ms later a whole second response nobody asked for;
/// - `GET /overlong`: a body longer than its Content-Length, in the same write;
/// - anything else: `200 genuine`.
///
/// Every stray response it writes is announced on the returned channel once written.
fn stray_backend() -> (SocketAddr, Receiver<()>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = crossbeam_channel::unbounded();
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            thread::spawn(move || serve_stray(s, &tx));
        }
    });
    (addr, rx, connections)
}

const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY";

fn serve_stray(mut s: TcpStream, announce: &Sender<()>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            let written = if head.starts_with("HEAD /a ") {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n")
                    .and_then(|()| {
                        // The misbehaviour itself: a late "body" on HEAD.
                        thread::sleep(Duration::from_millis(50));
                        s.write_all(STRAY)
                    })
                    .map(|()| announce.send(()).is_ok())
            } else if head.starts_with("GET /overlong ") {
                let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nokok".to_vec();
                reply.extend_from_slice(STRAY);
                s.write_all(&reply).map(|()| announce.send(()).is_ok())
            } else {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngenuine").map(|()| true)
            };
            if written.is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn wire(addr: SocketAddr) -> Wire<TcpStream> {
    Wire::new(connect(addr))
}

#[test]
fn a_late_body_on_head_never_reaches_another_client() {
    // nginx and HAProxy drop a pooled connection on which bytes arrive while it is idle.
    let (backend, strays, _) = stray_backend();
    let (p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let mut first = wire(addr);
    let r = {
        let s = &mut first.stream;
        s.write_all(b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        read_response(&mut first, "HEAD")
    };
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD has no body whatever its headers say");
    strays.recv_timeout(WAIT).expect("the backend wrote its stray response");
    // Another client, on another connection, within the second that followed.
    let mut other = wire(addr);
    for _ in 0..3 {
        let r = get(&mut other, "/b", "");
        assert_eq!(r.text(), "genuine", "never the stray response");
    }
    p.wait_for("sent bytes on an idle pooled connection");
}

#[test]
fn bytes_beyond_content_length_are_discarded_and_the_connection_closed() {
    let (backend, strays, connections) = stray_backend();
    let (p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let mut first = wire(addr);
    let r = get(&mut first, "/overlong", "");
    assert_eq!((r.status, r.text().as_str()), (200, "okok"), "exactly the framed body");
    strays.recv_timeout(WAIT).expect("surplus written");
    p.wait_for("beyond the response's framing; discarded, connection closed");
    let mut other = wire(addr);
    assert_eq!(get(&mut other, "/b", "").text(), "genuine");
    assert_eq!(get(&mut first, "/c", "").text(), "genuine", "the first client carries on too");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the tainted connection was replaced, not reused:\n{}",
        p.log_text()
    );
}

/// Rewrites the config between two disjoint backend sets `rounds` times, each reload applied
/// before the next, while the load runs. Every 25th round writes a broken file instead, which
/// must be rejected with the running set left serving.
fn storm(p: &Proc, config: &dyn Fn(usize) -> String, rounds: usize) {
    let path = p.dir().join("config.ini");
    for round in 1..=rounds {
        let broken = round % 25 == 0;
        let text = if broken {
            "[proxy]\nworkers = many\n[backends]\napp1 = nowhere\n".to_string()
        } else {
            config(round % 2)
        };
        std::fs::write(&path, text).expect("rewrite config");
        let mark = p.mark();
        p.signal("HUP");
        let done = if broken { "reload rejected" } else { "reload: " };
        p.wait_for_since(mark, done);
    }
}

fn http_request(addr: SocketAddr, conn: &mut Option<Wire<TcpStream>>) -> Result<(), String> {
    let w = conn.get_or_insert_with(|| wire(addr));
    w.stream.write_all(b"GET /storm HTTP/1.1\r\nHost: t\r\n\r\n").map_err(|e| e.to_string())?;
    let (status, kind) = w
        .read_head(1 << 16, |buf| {
            Ok(lbproxy::h1::head::parse_response(buf, "GET")?.map(|(n, r)| (n, (r.status, r.body))))
        })
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    w.copy_body(kind, &mut body).map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

fn tcp_request(addr: SocketAddr, _: &mut Option<Wire<TcpStream>>) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    s.write_all(b"storm\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&reply))),
            Ok(_) => reply.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    if reply.ends_with(b"] storm\n") {
        Ok(())
    } else {
        Err(format!("unexpected reply {:?}", String::from_utf8_lossy(&reply)))
    }
}

fn reload_storm(mode: &str, one: fn(SocketAddr, &mut Option<Wire<TcpStream>>) -> Result<(), String>) {
    let ds = dummies(4);
    let config = |set: usize| {
        let mut s = format!(
            "[proxy]\nmode = {mode}\nalgorithm = least-connections\nworkers = 32\ndrain_timeout_ms = 20000\n\
             [health]\nenabled = false\n[backends]\n"
        );
        for i in [2 * set, 2 * set + 1] {
            s.push_str(&format!("app{} = {}\n", i + 1, ds[i].1));
        }
        s
    };
    let (p, addr) = proxy_with(&config(0), &[]);
    let load = Load::start(6, |_| {
        let mut conn = None;
        move || {
            let result = one(addr, &mut conn);
            if result.is_err() {
                conn = None;
            }
            result
        }
    });
    storm(&p, &config, 100);
    let ok = load.finish_without_failures();
    assert!(ok >= 100, "the load ran through the storm: {ok} requests");
    // Each served during the storm (its lines may trail the answers: waited for).
    for name in ["app1", "app2", "app3", "app4"] {
        p.wait_for_since(0, &format!("-> {name} "));
    }
}

#[test]
fn a_reload_storm_swapping_whole_sets_loses_no_request_in_http_mode() {
    reload_storm("http", http_request);
}

#[test]
fn a_reload_storm_swapping_whole_sets_loses_no_connection_in_tcp_mode() {
    reload_storm("tcp", tcp_request);
}

#[test]
fn running_out_of_descriptors_does_not_mark_backends_down_in_http_mode() {
    // Our shortage (EMFILE on connect) is not the backend's failure: nginx logs it as a local
    // error; HAProxy counts it as a resource error, not a server failure.
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = http\nworkers = 96\nqueue = 64\n[health]\nenabled = false\nmax_fails = 1\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_under("ulimit -n 40", &config);
    // Idle clients fill the descriptor table: each holds a worker reading its head, until
    // the acceptor itself runs out.
    let mut flood: Vec<TcpStream> = (0..60).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    p.wait_for("accept: Too many open files");
    // The first client was accepted: its request needs a backend connection, and there is no
    // descriptor left for one. The proxy answers 503 itself and blames no backend.
    let first = &mut flood[0];
    first.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let mut w = Wire::new(first.try_clone().expect("clone"));
    let r = read_response(&mut w, "GET");
    assert_eq!(r.status, 503, "{}", r.text());
    p.wait_for("a shortage on this host, not counted against the backend");
    drop(w);
    drop(flood);
    let deadline = Instant::now() + WAIT;
    while http_request(addr, &mut None).is_err() {
        assert!(Instant::now() < deadline, "not serving again; log:\n{}", p.log_text());
    }
    assert!(!p.log_text().contains(" DOWN "), "a local shortage marked the backend down:\n{}", p.log_text());
}

/// Connections opened but silent when the stop comes (a TLS client between its handshake and
/// its request, a browser's preconnected socket) are parked; their request, sent right after,
/// is still answered (with `Connection: close`), as nginx and HAProxy answer it at a graceful
/// stop. Keep-alive connections idle longer are closed at once, as before.
#[test]
fn a_connection_whose_first_request_follows_the_stop_is_answered_not_closed() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\ndrain_timeout_ms = 20000\n[admin]\nlisten = 127.0.0.1:0\n\
         [health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (mut p, addr) = proxy_with(&config, &[]);
    let mut silent: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let admin = admin_addr(&p);
    wait_until("three silent connections parked", || proxy_stats(admin)["parked"].as_u64() >= Some(3));
    p.signal("TERM");
    p.wait_for("stopped accepting");
    for s in &mut silent {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    }
    for s in silent {
        let r = read_response(&mut Wire::new(s), "GET");
        assert_eq!((r.status, r.header("Connection")), (200, Some("close")), "{}", r.text());
    }
    assert_eq!(p.wait_exit().code(), Some(0));
}

#[test]
fn the_drain_deadline_cuts_a_request_without_retrying_it_or_blaming_a_backend() {
    // The proxy's own cut (drain_timeout_ms passed, or a second Ctrl-C) is no backend's
    // failure: the request is not tried on another member and no member goes down, as
    // HAProxy's hard-stop-after blames no server.
    let (ds, addrs): (Vec<Proc>, Vec<SocketAddr>) = dummies(2).into_iter().unzip();
    let config = format!(
        "[proxy]\nmode = http\nalgorithm = round-robin\ndrain_timeout_ms = 300\n\
         [health]\nenabled = false\nmax_fails = 1\n{}",
        backends_section(&addrs)
    );
    let (mut p, addr) = proxy_with(&config, &[]);
    let mut held = connect(addr);
    held.write_all(b"GET /x?fault=slow-head&delay_ms=30000 HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    wait_until("the request is at a backend", || ds.iter().any(|d| d.log_text().contains("fault slow-head")));
    p.signal("TERM");
    p.wait_for("drain timeout: closed 1");
    assert_eq!(p.wait_exit().code(), Some(0));
    let log = p.log_text();
    assert!(log.contains("cut by the proxy's stop"), "{log}");
    assert!(!log.contains("retrying") && !log.contains(" DOWN "), "{log}");
    assert!(log.matches("failures=0").count() == 2, "no failure counted:\n{log}");
    let answered = ds.iter().filter(|d| d.log_text().contains("fault slow-head")).count();
    assert_eq!(answered, 1, "tried on one member only");
}

#[test]
fn the_descriptor_limit_is_raised_to_the_hard_limit_and_one_too_low_is_named() {
    // As HAProxy raises it for its maxconn: a soft limit of 1,024 would cap the connections the
    // proxy holds, parked ones too, far below what it serves.
    let ds = dummies(1);
    let start = |ulimit: &str, workers: usize| {
        let config = format!(
            "[proxy]\nworkers = {workers}\n[health]\nenabled = false\n{}",
            backends_section(&[ds[0].1])
        );
        proxy_under(ulimit, &config).0
    };
    let hard =
        String::from_utf8(Command::new("sh").args(["-c", "ulimit -H -n"]).output().expect("sh").stdout)
            .expect("utf-8");
    let hard = hard.trim();
    assert!(hard.parse::<u64>().is_ok_and(|h| h > 300), "a hard descriptor limit above 300: {hard}");
    let p = start("ulimit -S -n 300", 4);
    let raised = p.wait_for("descriptor limit (ulimit -n) raised from 300 to ");
    assert!(raised.ends_with(&format!("to {hard}, its hard limit")), "{raised}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    assert_eq!(line.split_whitespace().nth(3), Some(hard), "{line}");
    // A hard limit too low for the workers is named (nginx warns of worker_connections so).
    let p = start("ulimit -n 200", 128);
    let low = p.wait_for("descriptor limit (ulimit -n) is 200: 128 workers need about 320");
    assert!(low.contains("[WARN]"), "{low}");
}

#[test]
fn a_descriptor_shortage_under_a_flood_is_logged_once_a_second_not_per_connection() {
    // HAProxy and nginx say so per event in their logs too, but a flood of connections at the
    // limit is thousands of events: the main log gets a line a second, with the count held
    // back, and each client still gets its 503 (http) or close.
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 16\n[health]\nenabled = false\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_under("ulimit -n 48", &config);
    // Relays held open take most descriptors (two each)...
    let held: Vec<TcpStream> = (0..14).map(|_| connect(addr)).collect();
    for mut s in held.iter().map(|s| s.try_clone().expect("clone")) {
        let _ = exchange(&mut s, "held");
    }
    // ... and clients come and go at the limit for two seconds.
    let started = Instant::now();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                while started.elapsed() < Duration::from_secs(2) {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = s.write_all(b"hello\n");
                        let _ = s.read(&mut [0u8; 64]);
                    }
                }
            })
        })
        .collect();
    for t in flood {
        t.join().expect("flood");
    }
    drop(held);
    // Serving again once descriptors free up.
    let deadline = Instant::now() + WAIT;
    while tcp_request(addr, &mut None).is_err() {
        assert!(Instant::now() < deadline, "not serving again; log:\n{}", p.log_text());
        thread::sleep(Duration::from_millis(20));
    }
    let log = p.log_text();
    let seconds = started.elapsed().as_secs() + 1;
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count() as u64;
    assert!(count("Too many open files") > 0, "the flood never reached the limit:\n{log}");
    for needle in ["accept: Too many open files", "a shortage on this host", "; closing the client"] {
        assert!(
            count(needle) <= seconds + 1,
            "{} lines with {needle:?} in {seconds} s:\n{log}",
            count(needle)
        );
    }
}
