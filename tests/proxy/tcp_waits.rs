//! tcp mode's waits off the workers (issue #18): a new connection's ClientHello, read to route by
//! SNI, and a TLS listener's handshake wait in the parker while the client is silent or slow.
//! Crowds ten times the workers then cost a real client nothing, and `header_ms` still bounds
//! each from its start, however many times it parked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::tls::{client_config, mid_handshake, tls_connect, Ca};
use crate::util::*;

/// Each crowd: ten times the workers.
const CROWD: usize = 40;

/// A tcp-mode proxy with four workers (two taking connections), routing `api.example.com` to
/// `api` and the rest to `plain`; `tls`: a listener section, or empty.
fn config(plain: SocketAddr, api: SocketAddr, header_ms: u64, tls: &str) -> String {
    format!(
        "[proxy]\nmode = tcp\nworkers = 4\nactive_workers = 2\n[timeouts]\nheader_ms = {header_ms}\n\
         [health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{tls}\n[backends]\nplain1 = {plain}\n\
         [pool.api]\napi1 = {api}\n[route.api]\nsni = api.example.com\npool = api\n"
    )
}

/// A ClientHello asking for `name`, as a client sends it.
fn client_hello(name: &str) -> Vec<u8> {
    let mut tls = rustls::ClientConnection::new(
        client_config(&Ca::new("hello"), None),
        name.to_string().try_into().expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("ClientHello");
    hello
}

/// `CROWD` connections that never send a byte, and `CROWD` that send `start` and then nothing;
/// `/stats` shows every one of them parked.
fn crowd(addr: SocketAddr, admin: SocketAddr, start: &[u8]) -> Vec<TcpStream> {
    let mut held: Vec<TcpStream> = (0..CROWD).map(|_| connect(addr)).collect();
    for _ in 0..CROWD {
        let mut s = connect(addr);
        s.write_all(start).expect("send");
        held.push(s);
    }
    wait_until("the crowd waits in the parker, not in the workers", || {
        proxy_stats(admin)["parked"].as_u64() >= Some(2 * CROWD as u64)
    });
    held
}

/// A backend that takes one connection (within the tests' wait), reads `n` bytes from it (or,
/// with `None`, all it sends until its FIN), answers `ok` and closes: what it read comes back
/// from the handle.
fn capture(n: Option<usize>) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("no connection reached the backend: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut got = Vec::new();
        match n {
            Some(n) => {
                got.resize(n, 0);
                s.read_exact(&mut got).expect("the whole ClientHello");
            }
            None => {
                s.read_to_end(&mut got).expect("all the client sent, then its FIN");
            }
        }
        s.write_all(b"ok\n").expect("answer");
        got
    });
    (addr, handle)
}

/// The proxy of [`config`] with a TLS listener signed by `ca`, both pools on one dummy `app`
/// (kept alive with the certificates by the third value).
fn tls_listener(ca: &Ca) -> (Proc, SocketAddr, (Proc, tempfile::TempDir)) {
    let (d, backend) = dummy("app");
    let (certs, tls) = ca.proxy_tls();
    let (p, addr) = proxy_with(&config(backend, backend, 600_000, &tls), &[]);
    (p, addr, (d, certs))
}

/// Sends `msg` as a line over `s` and reads the line that answers it.
fn line_over(s: &mut (impl Read + Write), msg: &str) -> String {
    s.write_all(format!("{msg}\n").as_bytes()).expect("send");
    read_line(s)
}

/// Waits until `/stats` shows `n` connections parked.
fn parked(admin: SocketAddr, n: u64) {
    wait_until("parked", || proxy_stats(admin)["parked"].as_u64() >= Some(n));
}

/// Before, each silent connection held a worker for `header_ms` (ten minutes here) while it
/// waited for a ClientHello: four were enough to stall every new connection, and the SNI client
/// behind them would have waited ten minutes.
#[test]
fn a_crowd_silent_or_stalled_mid_client_hello_beyond_the_workers_costs_an_sni_client_nothing() {
    let (_plain, plain) = dummy("plain1");
    let (_api, api) = dummy("api1");
    let (p, addr) = proxy_with(&config(plain, api, 600_000, ""), &[]);
    let hello = client_hello("api.example.com");
    let held = crowd(addr, admin_addr(&p), &hello[..5]);
    let mark = p.mark();
    let mut s = connect(addr);
    s.write_all(&hello).expect("send");
    // Routed by its name and connected, within the test's wait: far inside header_ms.
    p.wait_for_since(mark, " -> api1 ");
    // A client that is plainly not TLS goes the default pool's way at once, crowd or not.
    let mut plain_client = connect(addr);
    assert_eq!(exchange(&mut plain_client, "hello"), "plain1");
    drop(held);
}

/// A ClientHello that comes a few bytes at a time is put together across parks and routed by
/// its name; between its pieces the one worker serves another client, so it waits in the
/// parker, not in the worker. One trickled too slowly to finish is closed at `header_ms` from
/// its start, which no park restarts (as an http head is).
#[test]
fn a_client_hello_trickled_across_parks_is_routed_and_header_ms_bounds_it_across_them() {
    let (_plain, plain) = dummy("plain1");
    let (api, got) = capture(Some(client_hello("api.example.com").len()));
    let one_worker = config(plain, api, 3000, "").replace("workers = 4\nactive_workers = 2", "workers = 1");
    let (p, addr) = proxy_with(&one_worker, &[]);
    let hello = client_hello("api.example.com");
    let mut s = connect(addr);
    for piece in hello.chunks(hello.len().div_ceil(6)) {
        s.write_all(piece).expect("send");
        let mut other = connect(addr);
        assert_eq!(exchange(&mut other, "between pieces"), "plain1");
    }
    assert_eq!(got.join().expect("backend"), hello, "the ClientHello reaches the backend whole");
    assert_eq!(read_line(&mut s), "ok");
    // Too slow: a byte every 50 ms would take many seconds; header_ms closes it.
    let mark = p.mark();
    let started = Instant::now();
    let mut slow = connect(addr);
    let sent = hello.iter().take_while(|byte| {
        let alive = slow.write_all(&[**byte]).is_ok();
        thread::sleep(Duration::from_millis(50));
        alive
    });
    let sent = sent.count();
    let took = started.elapsed();
    let closed = p.wait_for_since(mark, "no complete TLS ClientHello within header_ms");
    assert!(closed.contains("closing"), "{closed}");
    assert!(sent < hello.len(), "closed before its ClientHello was whole: {sent} of {} bytes", hello.len());
    assert!(took >= Duration::from_millis(3000), "not before header_ms: {took:?}");
}

/// A ClientHello half sent when the proxy stops is finished and relayed with the drain, as
/// HAProxy and nginx finish a connection's inspection at a graceful stop, beside a crowd of
/// silent and stalled ones many times the workers and the queue: they wait on in the parker
/// through the drain, holding no worker, and none is dropped for a full queue.
#[test]
fn a_client_hello_parked_at_a_stop_is_finished_and_relayed_with_the_drain() {
    let (_plain, plain) = dummy("plain1");
    let hello = client_hello("api.example.com");
    let (api, got) = capture(Some(hello.len()));
    let small_queue =
        config(plain, api, 600_000, "").replace("active_workers = 2\n", "active_workers = 2\nqueue = 4\n");
    let (p, addr) = proxy_with(&small_queue, &[]);
    let admin = admin_addr(&p);
    let held = crowd(addr, admin, &hello[..5]);
    let mut s = connect(addr);
    s.write_all(&hello[..10]).expect("send");
    parked(admin, 2 * CROWD as u64 + 1);
    p.signal("TERM");
    p.wait_for("stopped accepting");
    s.write_all(&hello[10..]).expect("send the rest");
    assert_eq!(got.join().expect("backend"), hello, "the ClientHello reaches the backend whole");
    assert_eq!(read_line(&mut s), "ok");
    drop(held);
}

/// A reload that removes every SNI route while a ClientHello is half read: the rest is still
/// read, and the backend of the default pool gets it all, its first bytes too (they were read
/// before the reload).
#[test]
fn a_client_hello_parked_across_a_reload_that_removes_sni_routing_reaches_its_backend_whole() {
    let hello = client_hello("api.example.com");
    let (plain, got) = capture(Some(hello.len()));
    let (_api, api) = dummy("api1");
    let (p, addr) = proxy_with(&config(plain, api, 600_000, ""), &[]);
    let mut s = connect(addr);
    s.write_all(&hello[..10]).expect("send");
    parked(admin_addr(&p), 1);
    let without_routes = config(plain, api, 600_000, "");
    let without_routes = &without_routes[..without_routes.find("[pool.api]").expect("pool")];
    std::fs::write(p.dir().join("config.ini"), without_routes).expect("rewrite");
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "reload: pool api removed");
    s.write_all(&hello[10..]).expect("send the rest");
    assert_eq!(got.join().expect("backend"), hello, "the ClientHello reaches the backend whole");
    assert_eq!(read_line(&mut s), "ok");
}

/// tcp mode with a TLS listener: the handshake waits in the parker, so a crowd of silent clients
/// and of half ClientHellos, ten times the workers, costs a handshaking client nothing. Before,
/// each held a worker for `header_ms`.
#[test]
fn a_crowd_silent_or_stalled_mid_handshake_beyond_the_workers_costs_a_tcp_mode_tls_client_nothing() {
    let ca = Ca::new("crowd");
    let (p, addr, _backend) = tls_listener(&ca);
    let hello = client_hello("localhost");
    let held = crowd(addr, admin_addr(&p), &hello[..hello.len() / 2]);
    let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    assert_eq!(line_over(&mut tls, "hello"), "[app] hello");
    drop(held);
}

/// A handshake parked mid-way when the proxy stops goes on from where it was, as in http mode:
/// the client's last flight finishes it and the relay drains. Before, the worker began a new
/// handshake on the client's Finished and failed. A client connected before the stop that
/// sends its ClientHello after it, in two segments, is served too: its handshake parks between
/// them at the stop as at any time (before, the refused park closed it).
#[test]
fn a_tcp_mode_tls_handshake_parked_at_a_stop_goes_on_from_its_state() {
    let ca = Ca::new("stop");
    let (p, addr, _backend) = tls_listener(&ca);
    let (client, sock) = mid_handshake(addr, &ca);
    let server = ServerName::try_from("localhost").expect("name");
    let mut late = ClientConnection::new(client_config(&ca, None), server).expect("client");
    let mut late_sock = connect(addr);
    parked(admin_addr(&p), 2);
    p.signal("TERM");
    p.wait_for("stopped accepting");
    let mut tls = StreamOwned::new(client, sock);
    assert_eq!(line_over(&mut tls, "hello"), "[app] hello");
    let mut hello = Vec::new();
    late.write_tls(&mut hello).expect("ClientHello");
    late_sock.write_all(&hello[..hello.len() / 2]).expect("send");
    // The second segment comes after the first was read and the handshake parked.
    thread::sleep(Duration::from_millis(30));
    late_sock.write_all(&hello[hello.len() / 2..]).expect("send");
    let mut tls = StreamOwned::new(late, late_sock);
    assert_eq!(line_over(&mut tls, "late"), "[app] late");
}

/// A new relay whose two sides stay silent used to hold its worker 100 ms (`PARK_AFTER`) before
/// it parked, even with connections queued for a worker: 400 silent clients against four
/// workers kept a real client waiting at least 10 s. Now a quiet relay parks after 1 ms while
/// connections queue (as an idle keep-alive client parks at once then), and a crowd of relays
/// costs the client no more than its own connect, as with HAProxy's event loop.
#[test]
fn a_crowd_of_silent_relays_beyond_the_workers_parks_at_once_and_costs_a_client_nothing() {
    let (_d, backend) = dummy("app");
    let (_p, addr, admin) = four_workers("tcp", backend, "");
    let crowd: Vec<TcpStream> = (0..400).map(|_| connect(addr)).collect();
    let started = Instant::now();
    let mut s = connect(addr);
    assert_eq!(line_over(&mut s, "hello"), "[app] hello");
    let took = started.elapsed();
    // 400 relays × 100 ms over four workers is 10 s; parked at once, about 0.4 ms each.
    assert!(took < Duration::from_millis(2500), "a client behind 400 silent relays waited {took:?}");
    parked(admin, 400);
    drop(crowd);
}

/// A client that shuts its side mid-ClientHello goes to the default pool with what it sent,
/// and the backend sees its FIN; its answer comes back. As HAProxy ends `inspect-delay` at the
/// client's shutdown and goes to `default_backend`; before, the connection was closed
/// unanswered. It waits in the parker before its FIN. One that shuts its side having sent
/// nothing (a port probe, a TCP check) is closed quietly, no backend bothered.
#[test]
fn a_client_shutting_its_side_mid_client_hello_reaches_the_default_pool_as_with_haproxy() {
    let (_api, api) = dummy("api1");
    let hello = client_hello("api.example.com");
    let half = &hello[..hello.len() / 2];
    let (plain, got) = capture(None);
    let (p, addr) = proxy_with(&config(plain, api, 600_000, ""), &[]);
    let mark = p.mark();
    let mut s = connect(addr);
    s.write_all(half).expect("send");
    parked(admin_addr(&p), 1);
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(read_line(&mut s), "ok", "the default pool's answer");
    assert_eq!(got.join().expect("backend"), half, "what the client sent, then its FIN");
    p.wait_for_since(mark, "closed its side before a whole ClientHello: default pool");
    let mut probe = connect(addr);
    probe.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    probe.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty(), "{rest:?}");
    let stats = backend_stats(admin_addr(&p), "plain1");
    assert_eq!(stats["total"].as_u64(), Some(1), "only the first reached a backend: {stats}");
}

/// A PROXY v2 header and then a ClientHello, trickled (a byte at a time across the header, the
/// boundary and the record header; then in pieces) to an SNI-routed listener with one worker:
/// between the pieces the worker serves another client, the ClientHello is routed by its name
/// and reaches the backend whole and alone (no PROXY header), and the log names the header's
/// client, as HAProxy's `accept-proxy` with `req.ssl_sni`.
#[test]
fn a_proxy_v2_header_and_client_hello_trickled_together_are_read_across_parks_and_routed() {
    use lbproxy::net::proxy_protocol::{self, Addresses, Version};
    let (_plain, plain) = dummy("plain1");
    let hello = client_hello("api.example.com");
    let (api, got) = capture(Some(hello.len()));
    let config = config(plain, api, 10_000, "")
        .replace("workers = 4\nactive_workers = 2", "workers = 1\naccept_proxy = any");
    let (p, addr) = proxy_with(&config, &[]);
    let from =
        Addresses { src: "10.7.8.9:41000".parse().expect("src"), dst: "10.0.0.1:443".parse().expect("dst") };
    let header = proxy_protocol::encode(Version::V2, from);
    let mut wire = header.clone();
    wire.extend_from_slice(&hello);
    let fine = header.len() + 16;
    let pieces = wire[..fine].chunks(1).chain(wire[fine..].chunks(16));
    let mut s = connect(addr);
    s.set_nodelay(true).expect("nodelay");
    for (i, piece) in pieces.enumerate() {
        s.write_all(piece).expect("send");
        thread::sleep(Duration::from_millis(3));
        if i % 10 == 5 {
            let mut other = connect(addr);
            other.write_all(&proxy_protocol::encode(Version::V2, from)).expect("header");
            assert_eq!(exchange(&mut other, "between pieces"), "plain1");
        }
    }
    assert_eq!(got.join().expect("backend"), hello, "the ClientHello alone reaches the backend, whole");
    assert_eq!(read_line(&mut s), "ok");
    let routed = p.wait_for(" -> api1 ");
    assert!(routed.contains("10.7.8.9"), "the header's client is the connection's: {routed}");
}

/// Running out of descriptors with ClientHellos parked (TESTING.md): silent and half-sent
/// ClientHellos take every descriptor the proxy has; relays already under way still echo, the
/// health checks that cannot get a socket are skipped (the shortage is the proxy's, not the
/// backend's: no backend marked down), and once the crowd leaves an SNI client is routed.
#[test]
fn relays_go_on_and_no_backend_is_marked_down_while_parked_client_hellos_hold_every_descriptor() {
    let (_plain, plain) = dummy("plain1");
    let (_api, api) = dummy("api1");
    let config = config(plain, api, 600_000, "")
        .replace("workers = 4\nactive_workers = 2", "workers = 8")
        .replace("[health]\nenabled = false", "[health]\ninterval_ms = 100\nfall = 1")
        .replace("[admin]\nlisten = 127.0.0.1:0\n", "");
    let (p, addr) = proxy_under("ulimit -n 64", &config);
    let mut relays: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    for (i, s) in relays.iter_mut().enumerate() {
        assert_eq!(line_over(s, &format!("before {i}")), format!("[plain1] before {i}"));
    }
    let hello = client_hello("api.example.com");
    let mark = p.mark();
    let crowd: Vec<TcpStream> = (0..120)
        .filter_map(|i| {
            let mut s = TcpStream::connect(addr).ok()?;
            if i % 2 == 1 {
                let _ = s.write_all(&hello[..5]);
            }
            Some(s)
        })
        .collect();
    p.wait_for("Too many open files");
    for round in 0..3 {
        let checked = p.mark();
        for (i, s) in relays.iter_mut().enumerate() {
            let said = format!("round {round}");
            assert_eq!(line_over(s, &said), format!("[plain1] {said}"), "relay {i}");
        }
        // Checks run (100 ms apart) while the descriptors are gone: each is skipped.
        p.wait_for_since(checked, "health check of plain1 skipped");
    }
    let log = p.lines_from(mark).join("\n");
    assert!(!log.contains(" DOWN "), "a backend was marked down for the proxy's own shortage:\n{log}");
    drop(crowd);
    // The first try may meet the crowd's last descriptors: a new client then, until routed.
    let routed = |mark| p.lines_from(mark).iter().any(|l| l.contains(" -> api1 "));
    let deadline = Instant::now() + WAIT;
    loop {
        let mark = p.mark();
        let mut s = connect(addr);
        let _ = s.write_all(&hello);
        let tried = Instant::now();
        while !routed(mark) && tried.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(10));
        }
        if routed(mark) {
            break;
        }
        assert!(Instant::now() < deadline, "no SNI client routed after the crowd left:\n{}", p.log_text());
    }
}

/// A crowd that resets mid-ClientHello reaches no backend, and each is one line at info, as
/// nginx logs a client's "Connection reset by peer" (it was a warning each); a relay's client
/// that resets is one at info too. A backend's error stays a warning.
#[test]
fn a_crowd_resetting_mid_client_hello_reaches_no_backend_and_each_is_a_line_at_info_as_nginx() {
    let (_plain, plain) = dummy("plain1");
    let (_api, api) = dummy("api1");
    let (p, addr) = proxy_with(&config(plain, api, 600_000, ""), &[]);
    let admin = admin_addr(&p);
    let hello = client_hello("api.example.com");
    let mark = p.mark();
    let crowd: Vec<TcpStream> = (0..CROWD)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(&hello[..hello.len() / 2]).expect("send");
            s
        })
        .collect();
    parked(admin, CROWD as u64);
    for s in crowd {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("linger");
    }
    let reset = "client connection failed (connection reset) with its ClientHello unfinished";
    wait_until("a line for each reset", || {
        p.lines_from(mark).iter().filter(|l| l.contains(reset)).count() == CROWD
    });
    // A relay whose client resets.
    let mut relayed = connect(addr);
    assert_eq!(exchange(&mut relayed, "hello"), "plain1");
    socket2::SockRef::from(&relayed).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(relayed);
    let ended = p.wait_for_since(mark, "ended by client error");
    assert!(ended.contains("[INFO]"), "{ended}");
    let lines = p.lines_from(mark);
    assert!(lines.iter().all(|l| !l.contains("[WARN]")), "{lines:#?}");
    assert!(lines.iter().filter(|l| l.contains(reset)).all(|l| l.contains("[INFO]")), "{lines:#?}");
    assert_eq!(backend_stats(admin, "api1")["total"].as_u64(), Some(0), "a reset client reached api1");
    assert_eq!(backend_stats(admin, "plain1")["total"].as_u64(), Some(1), "only the relay reached plain1");
    // The next SNI client is served.
    let mut s = connect(addr);
    s.write_all(&hello).expect("send");
    p.wait_for_since(mark, " -> api1 ");
}
