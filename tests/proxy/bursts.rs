//! A burst of connects at once (TESTING.md): 3,000 new connections, half silent and half part
//! way through their first bytes, against two workers, on each kind of listener. Each waits
//! a brief first-byte wait in a worker before it parks; that wait is timed by poll(2), exactly.
//! It used to be a socket timeout, which the kernel rounds up to its tick: a 1 ms wait took
//! 8 ms on a 250 Hz kernel, and the client behind the burst waited 4 s or more.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::tls::{client_config, get_over, tls_connect, Ca};
use crate::util::*;

const BURST: usize = 3000;

/// Two workers and 1,500 connections each that wait: 8 ms each (a 250 Hz kernel's rounding of
/// a 1 ms socket timeout) cost 6 s; 1 ms each, under a second (1.6 s at worst beside two CPU
/// hogs).
const BOUND: Duration = Duration::from_secs(4);

/// A TLS record header that promises 512 bytes of ClientHello.
const HELLO_START: &[u8] = b"\x16\x03\x01\x02\x00";

/// The burst: `n` connections, every other one sending `start` and then nothing.
fn burst(addr: SocketAddr, n: usize, start: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = connect(addr);
            if i % 2 == 1 {
                s.write_all(start).expect("send");
            }
            s
        })
        .collect()
}

/// Runs `client` right behind a burst on `addr` and says how long it took.
fn behind_a_burst(addr: SocketAddr, n: usize, start: &[u8], client: impl FnOnce()) -> Duration {
    let held = burst(addr, n, start);
    let started = Instant::now();
    client();
    let took = started.elapsed();
    drop(held);
    took
}

fn workers(mode: &str, extra: &str, backends: &str) -> String {
    format!(
        "[proxy]\nmode = {mode}\nworkers = 2\nactive_workers = 2\n[health]\nenabled = false\n{extra}{backends}"
    )
}

/// One listener after another, so the test holds one burst's descriptors at a time.
#[test]
fn a_burst_of_silent_and_half_sent_connects_costs_the_next_client_little_on_every_listener() {
    let limit = raise_fd_limit();
    assert!(limit >= BURST as u64 + 1000, "RLIMIT_NOFILE hard limit {limit} is too low for this test");
    let (_d, backend) = dummy("plain1");
    let (_a, api) = dummy("api1");
    // Plain HTTP.
    let (p, addr) = proxy_with(&workers("http", "", &backends_section(&[backend])), &[]);
    let took = behind_a_burst(addr, BURST, b"GET / HT", || {
        let answer = http_get(addr, "/");
        assert_eq!(answer.status, 200, "{}", answer.text());
    });
    assert!(took < BOUND, "an http client behind the burst waited {took:?}");
    drop(p);
    // HTTPS: silent connections, and ClientHellos begun.
    let ca = Ca::new("burst");
    let (_certs, tls) = ca.proxy_tls();
    let (p, addr) = proxy_with(&workers("http", &tls, &backends_section(&[backend])), &[]);
    let took = behind_a_burst(addr, BURST, HELLO_START, || {
        let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
        let answer = get_over(&mut tls, "/");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
    assert!(took < BOUND, "a TLS client behind the burst waited {took:?}");
    drop(p);
    // tcp mode routing by SNI: the ClientHello read. A begun ClientHello waits its brief wait
    // out for the rest (it often comes in two segments), where a begun head parks at once: so
    // half the burst.
    let routes = format!(
        "[backends]\nplain1 = {backend}\n[pool.api]\napi1 = {api}\n[route.api]\nsni = api.example.com\npool = api\n"
    );
    let (_p, addr) = proxy_with(&workers("tcp", "", &routes), &[]);
    let took = behind_a_burst(addr, BURST / 2, HELLO_START, || {
        let mut s = connect(addr);
        assert_eq!(exchange(&mut s, "hello"), "plain1");
    });
    assert!(took < BOUND, "an SNI-routed client behind the burst waited {took:?}");
}
