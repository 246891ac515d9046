//! tcp mode's waits off the workers (issue #18): a new connection's ClientHello, read to route by
//! SNI, and a TLS listener's handshake wait in the parker while the client is silent or slow.
//! Crowds ten times the workers then cost a real client nothing, and `header_ms` still bounds
//! each from its start, however many times it parked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::tls::{client_config, tls_connect, Ca};
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
    // Routed by its name, within the test's wait: far inside header_ms.
    let line = p.wait_for_since(mark, " -> api1 ");
    assert!(!line.contains("plain1"), "{line}");
    // A client that waits for the server to speak (SMTP) is still relayed the default pool's way
    // once it speaks plainly, crowd or not.
    let mut plain_client = connect(addr);
    assert_eq!(exchange(&mut plain_client, "hello"), "plain1");
    drop(held);
}

/// A ClientHello that comes a few bytes at a time, the connection parking between them, is put
/// together across the parks and routed by its name. One trickled too slowly to finish is
/// closed at `header_ms` from its start, which no park restarts (as an http head is).
#[test]
fn a_client_hello_trickled_across_parks_is_routed_and_header_ms_bounds_it_across_them() {
    let (_plain, plain) = dummy("plain1");
    let (_api, api) = dummy("api1");
    let (p, addr) = proxy_with(&config(plain, api, 1500, ""), &[]);
    let hello = client_hello("api.example.com");
    // Too slow: a byte every 50 ms would take many seconds; header_ms closes it.
    let slow_hello = hello.clone();
    let slow = thread::spawn(move || {
        let mut s = connect(addr);
        let started = Instant::now();
        for (i, byte) in slow_hello.iter().enumerate() {
            if s.write_all(&[*byte]).is_err() {
                return (i, started.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        (slow_hello.len(), started.elapsed())
    });
    let mark = p.mark();
    let mut s = connect(addr);
    // Six pieces, each long after the worker that read the one before parked the connection
    // (a new connection's first byte gets 10 ms in its worker, later reads none).
    for piece in hello.chunks(hello.len().div_ceil(6)) {
        s.write_all(piece).expect("send");
        thread::sleep(Duration::from_millis(60));
    }
    let line = p.wait_for_since(mark, " -> api1 ");
    assert!(!line.contains("plain1"), "{line}");
    let closed = p.wait_for_since(mark, "no complete TLS ClientHello within header_ms");
    assert!(closed.contains("closing"), "{closed}");
    let (sent, took) = slow.join().expect("slow client");
    assert!(sent < hello.len(), "closed before its ClientHello was whole: {sent} of {} bytes", hello.len());
    assert!(took >= Duration::from_millis(1500), "not before header_ms: {took:?}");
    drop(s);
}

/// tcp mode with a TLS listener: the handshake waits in the parker, so a crowd of silent clients
/// and of half ClientHellos, ten times the workers, costs a handshaking client nothing. Before,
/// each held a worker for `header_ms`.
#[test]
fn a_crowd_silent_or_stalled_mid_handshake_beyond_the_workers_costs_a_tcp_mode_tls_client_nothing() {
    let ca = Ca::new("crowd");
    let (_d, backend) = dummy("app");
    let (_certs, tls) = ca.proxy_tls();
    let (p, addr) = proxy_with(&config(backend, backend, 600_000, &tls), &[]);
    let hello = client_hello("localhost");
    let held = crowd(addr, admin_addr(&p), &hello[..hello.len() / 2]);
    let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    tls.write_all(b"hello\n").expect("send");
    let mut reply = [0u8; 64];
    let n = tls.read(&mut reply).expect("reply");
    assert_eq!(&reply[..n], b"[app] hello\n");
    drop(held);
}
