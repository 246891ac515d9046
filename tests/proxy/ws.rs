//! WebSocket and other upgrades through HTTP mode: the 101 forwarded, then a two-way tunnel
//! (plain and over TLS), half-close, the tunnel idle limit, h2c stripped, /stats tunnels.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::tls::{client_config, tls_connect, tls_proxy, Ca};
use crate::util::*;

fn echo_many<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, backend: &str) {
    for i in 0..1000 {
        ws.send(Message::Text(format!("message {i}"))).expect("send");
        match ws.read().expect("read") {
            Message::Text(t) => assert_eq!(t, format!("[{backend}] message {i}")),
            other => panic!("unexpected {other:?}"),
        }
    }
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    ws.send(Message::Binary(big.clone())).expect("send 1 MiB");
    match ws.read().expect("read 1 MiB") {
        Message::Binary(b) => {
            let prefix = format!("[{backend}] ");
            assert!(b.starts_with(prefix.as_bytes()));
            assert!(b[prefix.len()..] == big[..], "1 MiB echo differs");
        }
        other => panic!("unexpected {other:?}"),
    }
    ws.close(None).expect("close");
    // The close handshake completes through the tunnel.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close: {e}"),
        }
    }
}

#[test]
fn websocket_echo_through_the_proxy_plain_with_1000_messages_and_1_mib() {
    let (_d, backend) = dummy("app1");
    let (p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let (mut ws, resp) =
        tungstenite::client::client(format!("ws://{addr}/ws"), connect(addr)).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("sec-websocket-accept").is_some());
    echo_many(&mut ws, "app1");
    drop(ws);
    // Both sides closed: the tunnel ends with an access line saying 101.
    let line = p.wait_for("\"GET /ws\" -> app1");
    assert!(line.contains(" 101 "), "{line}");
}

#[test]
fn websocket_echo_over_tls_wss_with_1000_messages_and_1_mib() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("test CA");
    let (_p, addr, _c) = tls_proxy(&ca, "http", &[backend], "", "");
    let tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    let (mut ws, resp) = tungstenite::client::client(format!("wss://localhost:{}/ws", addr.port()), tls)
        .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    echo_many(&mut ws, "app1");
}

/// A backend that answers any request with 101, then reads until EOF and answers with how much
/// it got: the client's half-close must reach it while the other direction stays open.
fn half_close_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.contains("Upgrade: test-proto"), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: upgrade"), "{head}");
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test-proto\r\n\r\n",
        )
        .expect("101");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        s.write_all(format!("got {} bytes", got.len()).as_bytes()).expect("answer");
    });
    addr
}

#[test]
fn a_tunnel_half_closed_by_the_client_passes_eof_and_the_backend_still_answers() {
    let backend = half_close_backend();
    let (_p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let mut s = connect(addr);
    s.write_all(b"GET /t HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: test-proto\r\n\r\nearly")
        .expect("send");
    s.write_all(b" and late").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.ends_with("\r\n\r\ngot 14 bytes"), "{text}");
}

#[test]
fn upgrade_h2c_is_stripped_never_forwarded() {
    let (_d, backend) = dummy("app1");
    let (_p, addr) = http_proxy(&[backend], "round-robin", "", "");
    let req = "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let (resp, _) = send_raw(addr, req.as_bytes(), "GET");
    assert_eq!(resp.status, 200);
    let seen = resp.text().to_ascii_lowercase();
    assert!(!seen.contains("upgrade") && !seen.contains("http2-settings"), "{seen}");
}

#[test]
fn a_quiet_tunnel_is_closed_at_tunnel_ms_and_stats_count_it_while_open() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[admin]\nlisten = 127.0.0.1:0\n[health]\nenabled = false\n\
         [timeouts]\ntunnel_ms = 500\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let tunnels = || {
        let s = proxy_stats(admin);
        (
            s["backends"][0]["tunnels"].as_u64().expect("tunnels"),
            s["backends"][0]["active"].as_u64().expect("active"),
        )
    };
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://{addr}/ws"), connect(addr)).expect("handshake");
    let opened = Instant::now();
    // Open and counted as one active connection for least-connections.
    assert_eq!(tunnels(), (1, 1));
    ws.send(Message::Text("hi".into())).expect("send");
    assert!(matches!(ws.read().expect("echo"), Message::Text(t) if t == "[app1] hi"));
    // Then quiet: the proxy closes it after tunnel_ms.
    let ended = ws.read();
    let after = opened.elapsed();
    assert!(ended.is_err(), "{ended:?}");
    assert!(after >= Duration::from_millis(500) && after < Duration::from_secs(10), "{after:?}");
    let deadline = Instant::now() + WAIT;
    while tunnels() != (0, 0) {
        assert!(Instant::now() < deadline, "tunnel still counted: {:?}", tunnels());
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn simulate_client_mode_ws_spreads_websockets_and_prints_the_table() {
    let ds = dummies(2);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let (code, text, err) = simulate(addr, &["--mode", "ws", "--clients", "4", "--requests", "25"]);
    assert_eq!(code, Some(0), "{text}{err}");
    // Four WebSockets over two backends, round-robin: 50 messages each.
    for name in ["app1", "app2"] {
        let row = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in:\n{text}"));
        assert!(row.split_whitespace().nth(1) == Some("50"), "{row}\n{text}");
    }
    assert!(text.contains("p50") && text.contains("p99"), "{text}");
}

fn unasked_101(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec()
}

#[test]
fn a_101_to_a_request_that_asked_for_no_upgrade_is_502_as_nginx() {
    let backend = raw_backend(unasked_101, 1);
    let (_p, addr) = http_proxy(&[backend.addr], "round-robin", "", "");
    let resp = http_get(addr, "/plain");
    assert_eq!(resp.status, 502, "{}", resp.text());
    // The request went out without Upgrade, so the 101 was not asked for.
    let seen = backend.seen.lock().expect("seen").join("\n");
    assert!(!seen.to_ascii_lowercase().contains("upgrade"), "{seen}");
}

/// A WebSocket upgrade request, as a browser sends it.
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A crowd of WebSocket tunnels opened at once and then quiet, a hundred times the workers:
/// each tunnel used to hold its worker 100 ms after the 101 before it parked, even with
/// requests queued behind it, so a plain GET behind 400 of them waited 10 s. Now a quiet tunnel
/// parks after 1 ms while connections queue, and the crowd costs the GET little, as with
/// HAProxy's and nginx's event loops.
#[test]
fn a_crowd_of_quiet_websocket_tunnels_beyond_the_workers_parks_at_once_and_costs_a_get_little() {
    let (_d, backend) = dummy("app1");
    let (_p, addr, admin) = four_workers("http", backend, "");
    let mut crowd: Vec<TcpStream> = (0..400)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(UPGRADE).expect("upgrade request");
            s
        })
        .collect();
    let started = Instant::now();
    let answer = http_get(addr, "/");
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // 400 tunnels × 100 ms over four workers is 10 s.
    assert!(took < Duration::from_millis(2500), "a GET behind 400 quiet tunnels waited {took:?}");
    for (i, s) in crowd.iter_mut().enumerate() {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap_or_else(|e| panic!("tunnel {i}: {e} after {head:?}"));
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "tunnel {i}: {}", String::from_utf8_lossy(&head));
    }
    wait_until("every quiet tunnel parked", || proxy_stats(admin)["parked"].as_u64() >= Some(400));
}
