//! PROXY protocol: received (`accept_proxy`) and sent (`send_proxy=`) in both modes, bad and
//! truncated headers closed and never forwarded, header-hash, and two instances agreeing on
//! where a client goes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lbproxy::net::proxy_protocol::{self, Accept, Addresses, Version};

use crate::util::*;

fn addrs(src: &str, dst: &str) -> Addresses {
    Addresses { src: src.parse().expect("src"), dst: dst.parse().expect("dst") }
}

/// GET /echo after `header` on a fresh connection; returns the response.
fn echo_after(proxy: SocketAddr, header: &[u8]) -> Resp {
    let mut raw = header.to_vec();
    raw.extend_from_slice(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    send_raw(proxy, &raw, "GET").0
}

fn xff(resp: &Resp) -> String {
    let text = resp.text();
    let line = text.lines().find(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"));
    line.unwrap_or_else(|| panic!("no X-Forwarded-For in {text:?}"))
        .split_once(':')
        .expect("colon")
        .1
        .trim()
        .to_string()
}

#[test]
fn v1_and_v2_client_addresses_reach_x_forwarded_for_and_the_access_log_local_keeps_the_peer() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\naccept_proxy = any\nworkers = 8\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, proxy) = proxy_with(&config, &[]);
    let v1 = proxy_protocol::encode(Version::V1, addrs("10.1.2.3:40000", "10.0.0.1:80"));
    assert_eq!(xff(&echo_after(proxy, &v1)), "10.1.2.3");
    // The access log names the header's client.
    p.wait_for(" 10.1.2.3:40000 \"GET /echo");
    let v2 = proxy_protocol::encode(Version::V2, addrs("[2001:db8::7]:5", "[2001:db8::1]:80"));
    assert_eq!(xff(&echo_after(proxy, &v2)), "2001:db8::7");
    // v2 LOCAL (the L4 tier's own health check): the connection's own address stands.
    let mut local = proxy_protocol::encode(Version::V2, addrs("10.9.9.9:1", "10.0.0.1:80"));
    local[12] = 0x20;
    assert_eq!(xff(&echo_after(proxy, &local)), "127.0.0.1");
}

/// A TCP backend that counts connections and records what each sent first.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn counting_backend() -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Counting { addr, accepted }
}

/// Whether the proxy closes `s` (EOF or reset) within `within`, sending nothing.
fn closed_silently(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn missing_bad_and_truncated_proxy_headers_are_closed_and_logged_never_forwarded() {
    let backend = counting_backend();
    for (mode, accept) in [("tcp", "v2"), ("http", "any"), ("tcp", "v1")] {
        let config = format!(
            "[proxy]\nmode = {mode}\naccept_proxy = {accept}\nworkers = 8\n[timeouts]\nheader_ms = 300\n\
             [health]\nenabled = false\n{}",
            backends_section(&[backend.addr])
        );
        let (p, proxy) = proxy_with(&config, &[]);
        let v2 = proxy_protocol::encode(Version::V2, addrs("10.1.2.3:40000", "10.0.0.1:80"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("plain request", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()),
            ("truncated v2", v2[..20].to_vec()),
            ("truncated v1", b"PROXY TCP4 10.1.2.3 10.0.0.1 4".to_vec()),
            ("bad v1", b"PROXY TCP4 10.1.2.3 10.0.0.1 99999 80\r\nhello\n".to_vec()),
            ("nothing", Vec::new()),
        ];
        for (i, (what, bytes)) in cases.into_iter().enumerate() {
            let first = i == 0;
            let mark = p.mark();
            let mut s = connect(proxy);
            s.write_all(&bytes).expect("send");
            let started = Instant::now();
            assert!(closed_silently(&mut s, Duration::from_secs(5)), "{mode}/{accept}: {what} not closed");
            assert!(started.elapsed() < Duration::from_secs(3), "{mode}/{accept}: {what} held too long");
            // One line per refusal; repeats within a second are rate-limited (counted), so only
            // the first case of each instance must show its own line.
            if first {
                p.wait_for_since(mark, "closing (accept_proxy");
            }
        }
        assert_eq!(
            backend.accepted.load(Ordering::SeqCst),
            0,
            "{mode}/{accept}: a bad connection reached the backend"
        );
    }
}

/// Takes a PROXY header off `s`, waiting (up to 5 s) for each part of it.
fn read_header(s: &TcpStream) -> proxy_protocol::Header {
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = Vec::new();
    loop {
        if let Some(h) = proxy_protocol::read_now(s, Accept::Any, &mut got).expect("a PROXY header") {
            return h;
        }
        // Blocks until more has arrived.
        s.peek(&mut [0u8; 1]).expect("more of the header");
    }
}

/// A backend that reads a PROXY header and answers with the source address it names: a line
/// in TCP mode, an HTTP response per request in HTTP mode. Counts connections.
fn proxy_reading_backend(http: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (conns.clone(), seen.clone());
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c2.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            thread::spawn(move || {
                let h = read_header(&s);
                let src = h.addrs.map(|a| a.src.to_string()).unwrap_or_default();
                seen.lock().expect("seen").push(src.clone());
                if !http {
                    let _ = s.write_all(format!("src={src}\n").as_bytes());
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = format!("src={src}\n");
                        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, conns, seen)
}

#[test]
fn send_proxy_v1_and_v2_carry_the_client_address_in_tcp_mode() {
    for version in ["v1", "v2"] {
        let (backend, _, _) = proxy_reading_backend(false);
        let config = format!(
            "[proxy]\nmode = tcp\nworkers = 8\n[health]\nenabled = false\n[backends]\napp1 = {backend} send_proxy={version}\n"
        );
        let (_p, proxy) = proxy_with(&config, &[]);
        let mut s = connect(proxy);
        let me = s.local_addr().expect("local");
        assert_eq!(read_line(&mut s), format!("src={me}"), "{version}");
    }
}

#[test]
fn send_proxy_in_http_mode_turns_pooling_off_and_passes_on_a_received_address() {
    let (backend, conns, seen) = proxy_reading_backend(true);
    let config = format!(
        "[proxy]\nmode = http\naccept_proxy = v1\nworkers = 8\n[health]\nenabled = false\n\
         [backends]\napp1 = {backend} send_proxy=v2\n"
    );
    let (_p, proxy) = proxy_with(&config, &[]);
    let mut s = connect(proxy);
    s.write_all(&proxy_protocol::encode(Version::V1, addrs("10.1.2.3:40000", "10.0.0.1:80"))).expect("send");
    let mut wire = lbproxy::h1::Wire::new(s);
    for _ in 0..3 {
        let r = get(&mut wire, "/", "");
        assert_eq!((r.status, r.text()), (200, "src=10.1.2.3:40000\n".to_string()));
    }
    // Three requests on one client connection: three backend connections, each with the header
    // (a pooled connection could carry another client's requests under this one's address).
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    assert_eq!(seen.lock().expect("seen").len(), 3);
}

#[test]
fn header_hash_sticks_by_user_and_falls_back_to_least_connections_without_the_header() {
    let ds = dummies(3);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let config = format!(
        "[proxy]\nmode = http\nalgorithm = header-hash\nhash_header = X-User-Id\nworkers = 8\n\
         [health]\nenabled = false\n{}",
        backends_section(&addrs)
    );
    let (_p, proxy) = proxy_with(&config, &[]);
    let served = |extra: &str| {
        let raw = format!("GET / HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
        send_raw(proxy, raw.as_bytes(), "GET").0.header("X-Served-By").expect("served by").to_string()
    };
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let first = served(&format!("X-User-Id: user{user}\r\n"));
        for _ in 0..3 {
            assert_eq!(served(&format!("x-user-id:  user{user} \r\n")), first, "user{user} moved");
        }
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3, "30 users spread over every backend");
    // No header: least connections, whose ties go round-robin: three requests, three backends.
    let without: std::collections::HashSet<String> = (0..3).map(|_| served("")).collect();
    assert_eq!(without.len(), 3, "{without:?}");
}

#[test]
fn two_instances_with_the_same_backends_send_every_client_to_the_same_backend() {
    let ds = dummies(4);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let config = format!(
        "[proxy]\nmode = tcp\nalgorithm = source-hash\naccept_proxy = v1\nworkers = 8\n\
         [health]\nenabled = false\n{}",
        backends_section(&addrs)
    );
    let (_a, proxy_a) = proxy_with(&config, &[]);
    let (_b, proxy_b) = proxy_with(&config, &[]);
    let via = |proxy: SocketAddr, client: &str| {
        let mut s = connect(proxy);
        s.write_all(&proxy_protocol::encode(Version::V1, addrs_of(client))).expect("send");
        exchange(&mut s, "hi")
    };
    let mut used = std::collections::HashSet::new();
    for i in 0..200u32 {
        let client = format!("10.{}.{}.{}:5000", i % 7, i / 7, i % 251);
        let (a, b) = (via(proxy_a, &client), via(proxy_b, &client));
        assert_eq!(a, b, "{client}: instance A chose {a}, instance B {b}");
        used.insert(a);
    }
    assert_eq!(used.len(), 4, "clients spread over every backend");
}

fn addrs_of(client: &str) -> Addresses {
    addrs(client, "10.0.0.1:80")
}

/// Issue #18: a PROXY header that arrives a byte at a time waits in the parker between bytes,
/// not in a worker: with one worker, other clients are served meanwhile, in both modes; the
/// header's address is the client's once it completes; and `header_ms` counts from accept
/// across every wait, as HAProxy's `timeout client` does for its `accept-proxy` wait.
#[test]
fn a_proxy_header_trickled_byte_by_byte_holds_no_worker_and_header_ms_spans_its_waits() {
    let (_d, backend) = dummy("app1");
    for mode in ["http", "tcp"] {
        let config = format!(
            "[proxy]\nmode = {mode}\naccept_proxy = any\nworkers = 1\n[timeouts]\nheader_ms = 3000\n\
             [health]\nenabled = false\n{}",
            backends_section(&[backend])
        );
        let (p, proxy) = proxy_with(&config, &[]);
        let v1 = b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n".to_vec();
        let v2 = proxy_protocol::encode(Version::V2, addrs("10.4.5.6:41000", "10.0.0.1:80"));
        for (header, src) in [(v1, "10.1.2.3"), (v2, "10.4.5.6")] {
            let mut slow = connect(proxy);
            for (i, byte) in header.iter().enumerate() {
                slow.write_all(&[*byte]).expect("a byte");
                thread::sleep(Duration::from_millis(10));
                // Meanwhile a client with its header whole is served by the one worker.
                if i % 16 == 8 {
                    let started = Instant::now();
                    let quick = proxy_protocol::encode(Version::V2, addrs("10.9.9.9:42000", "10.0.0.1:80"));
                    let served = match mode {
                        "http" => echo_after(proxy, &quick).status == 200,
                        _ => {
                            let mut s = connect(proxy);
                            s.write_all(&quick).expect("header");
                            exchange(&mut s, "quick") == "app1"
                        }
                    };
                    assert!(served, "{mode}: a client beside the trickle was not served");
                    // Had the trickle held the one worker, this client would have waited for
                    // its header_ms (3 s from its accept, well under a second ago).
                    assert!(
                        started.elapsed() < Duration::from_millis(1500),
                        "{mode}: took {:?}",
                        started.elapsed()
                    );
                }
            }
            // Complete: the connection is served as from the header's client.
            match mode {
                "http" => {
                    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        .expect("get");
                    let mut wire = lbproxy::h1::Wire::new(slow);
                    let resp = read_response(&mut wire, "GET");
                    assert_eq!(resp.status, 200);
                    assert!(xff(&resp).ends_with(src), "{mode}: {}", xff(&resp));
                }
                _ => {
                    assert_eq!(exchange(&mut slow, "after the header"), "app1");
                    drop(slow);
                    p.wait_for(&format!("from {src}:"));
                }
            }
        }
        // header_ms counts from accept, across the waits: a header still trickling at 3 s is
        // closed then, without an answer (as a missing one).
        let started = Instant::now();
        let mut late = connect(proxy);
        let mut closed_at = None;
        for byte in b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80"
            .iter()
            .cycle()
            .take(36)
            .chain(std::iter::repeat_n(&b' ', 30))
        {
            if late.write_all(&[*byte]).is_err() {
                closed_at = Some(started.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let closed_at = closed_at.unwrap_or_else(|| {
            assert!(closed_silently(&mut late, Duration::from_secs(5)), "{mode}: still open after header_ms");
            started.elapsed()
        });
        assert!(
            closed_at >= Duration::from_millis(2900),
            "{mode}: closed at {closed_at:?}, before header_ms"
        );
        assert!(closed_at < Duration::from_secs(5), "{mode}: closed at {closed_at:?}, long after header_ms");
        p.wait_for("no PROXY header within header_ms; closing (accept_proxy = any)");
    }
}
