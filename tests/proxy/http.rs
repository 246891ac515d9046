//! HTTP mode, end to end.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lbproxy::companions::dummy::http::{pattern_byte, Checksum};
use lbproxy::h1::Wire;

use crate::util::*;

fn three() -> (Vec<(Proc, std::net::SocketAddr)>, Vec<std::net::SocketAddr>) {
    let ds = dummies(3);
    let addrs = ds.iter().map(|d| d.1).collect();
    (ds, addrs)
}

fn checksum(data: &[u8]) -> String {
    let mut c = Checksum::default();
    c.write_all(data).expect("hash");
    format!("{:016x}", c.0)
}

fn pseudo_random(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
}

#[test]
fn curl_through_the_proxy() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let out = Command::new("curl").args(["-sS", "-i", &format!("http://{addr}/")]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("X-Served-By: app1") && text.contains("X-Request-ID: "), "{text}");
    assert!(text.contains("Hello from app1"), "{text}");

    // An upload with Expect: 100-continue, answered by the proxy itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pseudo_random(1 << 20);
    std::fs::write(dir.path().join("up.bin"), &data).expect("write");
    let out = Command::new("curl")
        .current_dir(dir.path())
        .args(["-sS", "-H", "Expect: 100-continue", "--data-binary", "@up.bin", &format!("http://{addr}/up")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("received {} bytes fnv {}", data.len(), checksum(&data))), "{text}");
}

#[test]
fn one_keep_alive_connection_is_spread_over_three_backends() {
    let (_ds, addrs) = three();
    for algorithm in ["round-robin", "least-connections"] {
        let (p, addr) = http_proxy(&addrs, algorithm, "", "");
        let mut wire = Wire::new(connect(addr));
        let served: Vec<String> = (0..6)
            .map(|_| get(&mut wire, "/", "").header("X-Served-By").expect("served by").to_string())
            .collect();
        assert_eq!(served, ["app1", "app2", "app3", "app1", "app2", "app3"], "{algorithm}");
        let line = p.wait_for("\"GET /\" -> app2");
        assert!(line.contains(algorithm), "the access log says why: {line}");
    }
}

#[test]
fn pipelined_requests_come_back_in_order_with_their_own_ids() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let mut batch = String::new();
    for i in 0..10 {
        let id = if i % 2 == 0 { format!("X-Request-ID: pipe-{i}\r\n") } else { String::new() };
        batch.push_str(&format!("GET /?bytes={} HTTP/1.1\r\nHost: t\r\n{id}\r\n", 100 + i));
    }
    let mut s = connect(addr);
    s.write_all(batch.as_bytes()).expect("send all at once");
    let mut wire = Wire::new(s);
    let mut generated = std::collections::HashSet::new();
    for i in 0..10 {
        let r = read_response(&mut wire, "GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 100 + i, "response {i} is in order");
        let id = r.header("X-Request-ID").expect("id").to_string();
        if i % 2 == 0 {
            assert_eq!(id, format!("pipe-{i}"));
        } else {
            assert!(generated.insert(id), "ids are unique");
        }
    }
}

#[test]
fn request_ids_are_generated_and_kept() {
    let (_ds, addrs) = three();
    let (p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    let r = get(&mut wire, "/echo", "");
    let id = r.header("X-Request-ID").expect("generated id").to_string();
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    assert!(r.text().contains(&format!("X-Request-ID: {id}\r\n")), "the backend saw the same id");
    p.wait_for(&format!("req {id} "));

    let r = get(&mut wire, "/echo", "X-Request-ID: client-id-42\r\n");
    assert_eq!(r.header("X-Request-ID"), Some("client-id-42"));
    assert!(r.text().contains("X-Request-ID: client-id-42\r\n"));
    p.wait_for("req client-id-42 ");
}

#[test]
fn forwarded_for_is_appended_and_via_is_on_responses_only() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    let r = get(&mut wire, "/echo", "X-Forwarded-For: 203.0.113.9\r\n");
    let seen = r.text();
    assert!(seen.contains("X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"), "{seen}");
    // HAProxy, nginx and Apache put no `Via` on a request either (see uploads.rs for nginx's
    // gzip, which a `Via` turns off); the client's answer carries one.
    assert!(seen.contains("X-Forwarded-Proto: http\r\n") && !seen.contains("Via:"), "{seen}");
    assert_eq!(r.header("Via"), Some("1.1 lbproxy"));
    let r = get(&mut wire, "/echo", "");
    assert!(r.text().contains("X-Forwarded-For: 127.0.0.1\r\n"), "{}", r.text());
}

fn hop_reply(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n\
      Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nTrailer: X-T\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        .to_vec()
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let backend = raw_backend(hop_reply, usize::MAX);
    let (_p, addr) = http_proxy(&[backend.addr], "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    let r = get(
        &mut wire,
        "/",
        "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\n\
         Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Stay: 1\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    for gone in ["X-Secret", "Keep-Alive", "Proxy-Connection", "Upgrade", "Trailer", "Connection"] {
        assert!(r.header(gone).is_none(), "{gone} reached the client: {:?}", r.headers);
    }
    assert_eq!(r.header("X-Kept"), Some("yes"));
    let seen = backend.seen.lock().expect("seen")[0].to_ascii_lowercase();
    for gone in ["x-drop", "keep-alive", "\nte:", "upgrade", "proxy-connection", "trailer", "connection"] {
        assert!(!seen.contains(gone), "{gone} reached the backend: {seen}");
    }
    assert!(seen.contains("x-stay: 1"), "{seen}");
}

#[test]
fn uploads_and_downloads_are_intact() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    let data = pseudo_random(3 << 20);
    let sum = checksum(&data);

    // Content-Length upload.
    let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", data.len());
    wire.stream.write_all(head.as_bytes()).expect("head");
    wire.stream.write_all(&data).expect("body");
    let r = read_response(&mut wire, "POST");
    assert!(r.text().contains(&format!("received {} bytes fnv {sum}", data.len())), "{}", r.text());

    // Chunked upload, uneven chunk sizes.
    wire.stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let mut at = 0;
    for size in [1usize, 4095, 70_000, 1 << 20].iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        wire.stream.write_all(format!("{:x}\r\n", end - at).as_bytes()).expect("size");
        wire.stream.write_all(&data[at..end]).expect("chunk");
        wire.stream.write_all(b"\r\n").expect("crlf");
        at = end;
    }
    wire.stream.write_all(b"0\r\n\r\n").expect("last chunk");
    let r = read_response(&mut wire, "POST");
    assert!(r.text().contains(&format!("received {} bytes fnv {sum}", data.len())), "{}", r.text());

    // Downloads, Content-Length and chunked.
    for chunked in ["0", "1"] {
        let n = 5_000_003u64;
        let r = get(&mut wire, &format!("/?bytes={n}&chunked={chunked}"), "");
        let expected: Vec<u8> = (0..n).map(pattern_byte).collect();
        assert_eq!(r.body.len() as u64, n);
        assert!(r.body == expected, "download (chunked={chunked}) differs");
        if chunked == "1" {
            assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
        } else {
            assert_eq!(r.header("Content-Length"), Some("5000003"));
        }
    }
}

fn close_delimited(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec()
}

#[test]
fn close_delimited_responses_are_rechunked_for_11_and_closed_for_10() {
    let backend = raw_backend(close_delimited, 1);
    let (_p, addr) = http_proxy(&[backend.addr], "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    let r = get(&mut wire, "/", "");
    assert_eq!((r.header("Transfer-Encoding"), r.text().as_str()), (Some("chunked"), "until the end"));
    assert_eq!(get(&mut wire, "/", "").text(), "until the end", "the client connection stayed open");
    let (r, mut wire) = send_raw(addr, b"GET / HTTP/1.0\r\n\r\n", "GET");
    assert_eq!(r.text(), "until the end");
    assert!(closed(&mut wire));
}

#[test]
fn head_204_and_304_carry_no_body_and_keep_the_connection() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    wire.stream.write_all(b"HEAD /?bytes=1000 HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let r = read_response(&mut wire, "HEAD");
    assert_eq!((r.status, r.header("Content-Length"), r.body.len()), (200, Some("1000"), 0));
    for status in [204, 304] {
        let r = get(&mut wire, &format!("/?status={status}"), "");
        assert_eq!((r.status, r.body.len()), (status, 0));
        // The dummy names a length on its 204; the client never sees one (RFC 9110 8.6, nginx).
        assert_eq!(r.header("Content-Length").is_some(), status == 304, "{status}");
    }
    assert_eq!(get(&mut wire, "/", "").status, 200, "framing intact after bodiless responses");
}

fn garbage(_head: &str) -> Vec<u8> {
    b"SMTP 220 not http at all\r\n\r\n".to_vec()
}

fn silent_close(_head: &str) -> Vec<u8> {
    Vec::new()
}

#[test]
fn error_statuses_502_503_504() {
    // 502: an invalid response, and a connection closed before any response.
    for reply in [garbage as fn(&str) -> Vec<u8>, silent_close] {
        let backend = raw_backend(reply, 1);
        let (p, addr) = http_proxy(&[backend.addr], "round-robin", "", "");
        let (r, _) = send_raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: e502\r\n\r\n", "GET");
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("X-Request-ID"), Some("e502"));
        p.wait_for("req e502 ");
    }
    // 503: no backend up, with Retry-After.
    let (_s1, dead1) = dead_addr();
    let (_s2, dead2) = dead_addr();
    let (_p, addr) = http_proxy(&[dead1, dead2], "round-robin", "", "");
    let (r, mut wire) = send_raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some());
    assert_eq!(get(&mut wire, "/", "").status, 503, "the client connection stays usable");
    // 504: the backend answers after response_ms.
    let ds = dummies(1);
    let (_p, addr) = http_proxy(&[ds[0].1], "round-robin", "response_ms = 300", "");
    let started = Instant::now();
    let (r, _) = send_raw(addr, b"GET /?delay_ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered at response_ms, not at the backend's pace"
    );
}

#[test]
fn a_stalled_partial_head_is_closed_after_header_ms() {
    let ds = dummies(1);
    let (_p, addr) = http_proxy(&[ds[0].1], "round-robin", "header_ms = 400", "");
    // Timed from before the connect: header_ms runs from the accept.
    let started = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").expect("partial head");
    let mut wire = Wire::new(s);
    let r = read_response(&mut wire, "GET");
    let waited = started.elapsed();
    assert_eq!(r.status, 408);
    assert!(r.text().contains("client: request head not complete within header_ms"), "{}", r.text());
    assert!(closed(&mut wire));
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(5), "{waited:?}");
    // A slow client that never sends anything is closed too.
    let mut wire = Wire::new(connect(addr));
    let r = read_response(&mut wire, "GET");
    assert_eq!(r.status, 408);
    assert!(r.text().contains("client: request head not complete within header_ms"), "{}", r.text());
}

fn one_per_connection(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh".to_vec()
}

#[test]
fn a_stale_pooled_connection_is_retried_transparently() {
    // Claims keep-alive but closes every connection after one response.
    let backend = raw_backend(one_per_connection, 1);
    let (_p, addr) = http_proxy(&[backend.addr], "round-robin", "", "");
    let mut wire = Wire::new(connect(addr));
    for i in 0..4 {
        let r = get(&mut wire, "/", "");
        assert_eq!((r.status, r.text().as_str()), (200, "fresh"), "request {i}");
    }
    // Not idempotent: the pooled connection is checked before use, so once the backend has
    // closed it, it is never used.
    for i in 0..3 {
        backend.wait_closed(4 + i);
        // The backend's close reaches the proxy's socket in the kernel's own time (on a busy
        // machine, in ksoftirqd's): the check before use can only see it once it has.
        let port = backend.addr.port();
        wait_until("the proxy's side of the pooled connection saw the close", || !established_to(port));
        wire.stream.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc").expect("send");
        let r = read_response(&mut wire, "POST");
        assert_eq!(r.status, 200, "post {i}: {}", r.text());
    }
    assert_eq!(backend.seen.lock().expect("seen").len(), 7, "each request reached the backend exactly once");
    assert!(backend.connections.load(Ordering::SeqCst) >= 7);
}

/// Whether an IPv4 TCP socket is still established to `port` on the loopback (from
/// /proc/net/tcp: `rem_address` and `st` 01).
fn established_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(2).is_some_and(|r| r.ends_with(&remote)) && fields.get(3) == Some(&"01")
    })
}

fn keep_alive(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
}

/// nginx's upstream `keepalive_timeout`: a pooled connection idle past `backend_idle_ms` is
/// closed, and the next request opens a new one; within it, the connection is reused.
#[test]
fn a_pooled_connection_idle_past_backend_idle_ms_is_closed_not_reused() {
    let gap = Duration::from_millis(400);
    for (idle_ms, reused) in [(150, false), (60_000, true)] {
        let backend = raw_backend(keep_alive, usize::MAX);
        let (_p, addr) =
            http_proxy(&[backend.addr], "round-robin", "", &format!("backend_idle_ms = {idle_ms}"));
        let mut wire = Wire::new(connect(addr));
        assert_eq!(get(&mut wire, "/", "").status, 200);
        // Longer than 150 ms and far shorter than 60 s, however busy the machine.
        std::thread::sleep(gap);
        assert_eq!(get(&mut wire, "/", "").status, 200);
        let opened = backend.connections.load(Ordering::SeqCst);
        if reused {
            assert_eq!(opened, 1, "backend_idle_ms = {idle_ms}: the pooled connection is reused");
        } else {
            assert_eq!(opened, 2, "backend_idle_ms = {idle_ms}: a new connection for the second request");
            backend.wait_closed(1);
        }
        assert_eq!(backend.seen.lock().expect("seen").len(), 2);
    }
}

/// nginx closes an idle upstream connection when its `keepalive_timeout` timer fires, not at
/// the next request: with no traffic at all, the backend sees the pooled connection closed
/// soon after `backend_idle_ms`, and never before.
#[test]
fn a_pooled_connection_idle_past_backend_idle_ms_is_closed_without_another_request() {
    let backend = raw_backend(keep_alive, usize::MAX);
    let (_p, addr) = http_proxy(&[backend.addr], "round-robin", "", "backend_idle_ms = 300");
    let mut wire = Wire::new(connect(addr));
    let sent = Instant::now();
    assert_eq!(get(&mut wire, "/", "").status, 200);
    backend.wait_closed(1);
    let idle = sent.elapsed();
    assert!(idle >= Duration::from_millis(300), "closed after {idle:?}, before backend_idle_ms");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    // The client's own connection is untouched, and the next request opens a new one.
    assert_eq!(get(&mut wire, "/", "").status, 200);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}

/// The housekeeping thread also logs one line per backend every `stats_interval_ms`, and
/// keeps doing so.
#[test]
fn stats_interval_ms_logs_a_line_per_backend_again_and_again() {
    let backend = raw_backend(keep_alive, usize::MAX);
    let config = format!(
        "[proxy]\nmode = http\nstats_interval_ms = 100\n[health]\nenabled = false\n{}",
        backends_section(&[backend.addr])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut wire = Wire::new(connect(addr));
    for _ in 0..3 {
        assert_eq!(get(&mut wire, "/", "").status, 200);
    }
    // A tick during the third request logs it in flight (active=1): wait for the one after.
    let line = p.wait_for("total=3 failures=0 active=0 ");
    assert!(line.contains(&format!("stats: app1 {} up total=3 ", backend.addr)), "{line}");
    let mark = p.mark();
    p.wait_for_since(mark, "stats: app1 ");
}

#[test]
fn http10_and_connection_close_are_honoured() {
    let (_ds, addrs) = three();
    let (_p, addr) = http_proxy(&addrs, "round-robin", "", "");
    let (r, mut wire) = send_raw(addr, b"GET / HTTP/1.0\r\n\r\n", "GET");
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(closed(&mut wire));
    let (r, mut wire) = send_raw(addr, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    wire.stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
    let r = read_response(&mut wire, "GET");
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(closed(&mut wire));
}

#[test]
fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let (_ds, addrs) = three();
    let config = format!("[proxy]\nmode = http\ndrain_timeout_ms = 20000\n{}", backends_section(&addrs));
    let (mut p, addr) = proxy_with(&config, &[]);
    let mut wire = Wire::new(connect(addr));
    assert_eq!(get(&mut wire, "/", "").status, 200);
    let started = Instant::now();
    p.signal("TERM");
    assert_eq!(p.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10), "did not wait for the drain deadline");
    assert!(closed(&mut wire));
}
