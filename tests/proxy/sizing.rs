//! Sizing (issue #18): only `active_workers` take connections at once, and a worker stuck on a
//! peer hands its place to one of the reserve. A slow backend still gets up to `workers`
//! requests in flight (Little's law), as a thread per request gave before, and neither a quiet
//! relay nor clients that stop reading keep the next client waiting.

use std::io::Write;
use std::net::SocketAddr;
use std::thread;

use crate::util::*;

fn gauge(admin: SocketAddr, name: &str) -> u64 {
    let stats = proxy_stats(admin);
    stats[name].as_u64().unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// An http-mode proxy of `workers` workers, two of them taking connections at once, with
/// `extra` config lines, in front of `backend`: the proxy, its address and its admin address.
fn two_takers(workers: usize, extra: &str, backend: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = {workers}\nactive_workers = 2\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n{extra}{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (p, addr, admin)
}

#[test]
fn a_slow_backend_gets_every_worker_though_two_take_connections_at_once() {
    let (_d, backend) = dummy("slow");
    let (p, addr, admin) = two_takers(24, "", backend);
    // The threads reach the reserve as they start (on a busy machine, not all at once).
    wait_until("22 workers in reserve", || gauge(admin, "workers_reserve") == 22);
    assert_eq!(gauge(admin, "workers_active"), 2);
    // Twenty requests that each take the backend 3 s: two takers alone would serve them ten
    // rounds deep. Each taker stuck on its backend hands its place on, so all are in flight.
    let clients: Vec<_> = (0..20)
        .map(|i| {
            thread::spawn(move || {
                let mut w = lbproxy::h1::Wire::new(connect(addr));
                get(&mut w, &format!("/?delay_ms=3000&i={i}"), "").status
            })
        })
        .collect();
    wait_until("20 requests in flight at once", || gauge(admin, "workers_busy") >= 20);
    for c in clients {
        assert_eq!(c.join().expect("client"), 200);
    }
    assert!(gauge(admin, "worker_handoffs") >= 18, "{}", proxy_stats(admin));
    // Done, the workers that were handed on go back to the reserve.
    wait_until("the reserve refilled", || gauge(admin, "workers_reserve") == 22);
    let metrics = http_get(admin, "/metrics").text();
    assert!(metrics.lines().any(|l| l.starts_with("lb_worker_handoffs_total ")), "{metrics}");
    assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
}

#[test]
fn a_quiet_tcp_relay_parks_at_once_while_others_queue_so_the_next_clients_are_echoed() {
    let ds = dummies(1);
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 12\nactive_workers = 1\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[ds[0].1])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    // Ten clients connect together and each says one line; then all stay connected and quiet.
    // The one taker's relay goes quiet while the others queue: it parks after 1 ms rather than
    // hold them for PARK_AFTER (before, it handed its place on to a reserve worker).
    let mut clients: Vec<_> = (0..10).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("hello {i}\n").as_bytes()).expect("send");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(c), format!("[app1] hello {i}"));
    }
    wait_until("every quiet relay parked", || gauge(admin, "parked") >= 10);
    // Each speaks again and is relayed.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("again {i}\n").as_bytes()).expect("send");
        assert_eq!(read_line(c), format!("[app1] again {i}"));
    }
}

#[test]
fn clients_that_stop_reading_hand_their_places_on_so_the_next_client_is_answered() {
    let (_d, backend) = dummy("big");
    let (_p, addr, admin) = two_takers(12, "", backend);
    // Four clients ask for 64 MB each and never read it: each taker's write to them fills the
    // socket buffers and blocks (for idle_ms, a minute). Their places are handed on. (Chunked,
    // which the taker writes itself; a Content-Length body would wait in the parker instead,
    // `slow_readers.rs`.)
    let stalled: Vec<_> = (0..4)
        .map(|i| {
            let mut s = connect(addr);
            write!(s, "GET /?bytes=64000000&chunked=1&i={i} HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
            s
        })
        .collect();
    wait_until("both takers stuck writing", || gauge(admin, "workers_busy") >= 2);
    // The next client is answered at once, not after the stalled writes time out.
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    assert_eq!(get(&mut w, "/", "").status, 200);
    assert!(gauge(admin, "worker_handoffs") >= 2, "{}", proxy_stats(admin));
    drop(stalled);
}

#[test]
fn tls_clients_that_stop_reading_hand_their_places_on_too() {
    use crate::tls::{client_config, get_over, tls_connect, Ca};
    let (_d, backend) = dummy("big");
    let ca = Ca::new("sizing CA");
    let (_certs, tls) = ca.proxy_tls();
    let (_p, addr, admin) = two_takers(12, &tls, backend);
    let client = client_config(&ca, None);
    // The takers block flushing TLS records of chunked bodies to clients that do not read them.
    let stalled: Vec<_> = (0..4)
        .map(|i| {
            let mut s = tls_connect(addr, client.clone(), "localhost").expect("handshake");
            write!(s, "GET /?bytes=64000000&chunked=1&i={i} HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .expect("send");
            s.flush().expect("flush");
            s
        })
        .collect();
    wait_until("both takers stuck writing", || gauge(admin, "workers_busy") >= 2);
    let text = get_over(&mut tls_connect(addr, client, "localhost").expect("handshake"), "/");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(gauge(admin, "worker_handoffs") >= 2, "{}", proxy_stats(admin));
    drop(stalled);
}
