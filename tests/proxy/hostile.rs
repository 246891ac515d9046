//! Hostile peers through the proxy. Malformed and ambiguous requests never reach a backend.
//! The dummy_server fault lab: every misbehaviour gives the client what nginx would (502, 504, a
//! clean close or a truncated body), never a hang and never another client's bytes, and the
//! proxy serves the next ordinary request.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbproxy::h1::Wire;

use crate::util::*;

/// Two fault-lab dummies behind an HTTP-mode proxy with a short response timeout.
fn lab() -> (Vec<(Proc, SocketAddr)>, Proc, SocketAddr) {
    let ds = dummies(2);
    let addrs: Vec<_> = ds.iter().map(|d| d.1).collect();
    let (p, addr) = http_proxy(&addrs, "round-robin", "response_ms = 1000", "");
    (ds, p, addr)
}

/// Sends one GET and reads until the proxy closes the connection: (status, body bytes).
fn fetch(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let raw = fetch_raw(addr, path);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(Vec::new(), |i| raw[i + 4..].to_vec());
    (status, body)
}

/// Sends one GET and reads until the proxy closes the connection: every byte it sent.
fn fetch_raw(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = connect(addr);
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // ends only when the proxy closes: a hang fails at WAIT
    raw
}

/// The next ordinary request is served.
fn still_serving(addr: SocketAddr) {
    let mut w = Wire::new(connect(addr));
    assert_eq!(get(&mut w, "/ok", "").status, 200);
}

#[test]
fn a_backend_that_resets_or_closes_before_answering_gives_502() {
    // nginx: "upstream prematurely closed connection" / "Connection reset by peer" -> 502 once
    // every backend failed (a GET is retried on the next one first).
    let (_ds, p, addr) = lab();
    for mode in ["reset-before", "close-before"] {
        let mut w = Wire::new(connect(addr));
        let r = get(&mut w, &format!("/x?fault={mode}"), "");
        assert_eq!(r.status, 502, "{mode}: {}", r.text());
        still_serving(addr);
    }
    p.wait_for_since(0, "; retrying "); // the GET was retried first
}

#[test]
fn a_reset_mid_body_truncates_and_closes() {
    let (_ds, _p, addr) = lab();
    let (status, body) = fetch(addr, "/x?fault=reset-mid&bytes=20000");
    assert_eq!(status, 200, "the head was already sent");
    assert!(body.len() < 20000, "the body is cut short ({} bytes), never complete-looking", body.len());
    still_serving(addr);
}

#[test]
fn a_body_shorter_than_its_content_length_closes_the_connection() {
    let (_ds, p, addr) = lab();
    let started = Instant::now();
    let raw = fetch_raw(addr, "/x?fault=bad-length&bytes=300");
    assert!(raw.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&raw));
    let head = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(raw.len() - head, 300, "the short body, then a close (not a wait for the missing 100 bytes)");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    // The log counts what the client got, truncated body included (nginx's $bytes_sent).
    let line = p.wait_for("fault=bad-length&bytes=300");
    assert_eq!(logged_bytes(&line, "B out"), raw.len() as u64, "the head and 300 bytes of body: {line}");
    still_serving(addr);
}

/// A client that leaves mid-body: its access line counts what went out before it left, as
/// nginx's `$bytes_sent` does, not only the head.
#[test]
fn a_client_leaving_mid_body_is_logged_with_the_bytes_sent_before_it_left() {
    let (_ds, p, addr) = lab();
    let mut s = connect(addr);
    s.write_all(b"GET /gone?bytes=50000000 HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let (mut got, mut buf) = (0, [0u8; 65536]);
    while got < 1 << 20 {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {got} bytes");
        got += n;
    }
    drop(s);
    let line = p.wait_for("/gone?bytes=50000000");
    let out = logged_bytes(&line, "B out");
    assert!(out >= got as u64 && out < 50_000_000, "{got} bytes read, then gone: {line}");
    still_serving(addr);
}

#[test]
fn garbage_instead_of_a_response_gives_502() {
    let (_ds, _p, addr) = lab();
    let mut w = Wire::new(connect(addr));
    assert_eq!(get(&mut w, "/x?fault=garbage", "").status, 502);
    still_serving(addr);
}

#[test]
fn a_head_later_than_response_ms_gives_504() {
    // nginx: proxy_read_timeout before the header -> 504.
    let (_ds, _p, addr) = lab();
    let mut w = Wire::new(connect(addr));
    let r = get(&mut w, "/x?fault=slow-head&delay_ms=3000", "");
    assert_eq!(r.status, 504, "{}", r.text());
    still_serving(addr);
}

#[test]
fn a_dripped_body_arrives_whole() {
    let (_ds, _p, addr) = lab();
    let mut w = Wire::new(connect(addr));
    let r = get(&mut w, "/x?fault=drip&bytes=40", "");
    assert_eq!((r.status, r.body.len()), (200, 40));
}

/// Waits until the fault-lab dummies together have written `n` stray responses.
fn strays_written(ds: &[(Proc, SocketAddr)], n: usize) {
    let deadline = Instant::now() + WAIT;
    let count = || ds.iter().map(|d| d.0.log_text().matches("stray response written").count()).sum::<usize>();
    while count() < n {
        assert!(Instant::now() < deadline, "only {} stray responses written", count());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn stray_responses_from_the_fault_lab_reach_nobody() {
    // `extra` (late surplus after a GET, a late "body" on HEAD) and `overlong` (surplus in the
    // same write). The stray response says "STRAY from <name>"; nginx and HAProxy drop a pooled
    // connection that turns readable while idle, and one whose response overran its length.
    let (ds, p, addr) = lab();
    let mut victim = Wire::new(connect(addr));
    let mut written = 0;
    let check = |wire: &mut Wire<std::net::TcpStream>| {
        let r = get(wire, "/plain", "");
        assert_eq!(r.status, 200);
        assert!(!r.text().contains("STRAY"), "another exchange's bytes: {}", r.text());
    };
    for round in 0..3 {
        let mut w = Wire::new(connect(addr));
        let r = get(&mut w, &format!("/x?fault=extra&bytes=5&r={round}"), "");
        assert_eq!((r.status, r.body.len()), (200, 5));
        written += 1;
        strays_written(&ds, written);
        check(&mut victim);
        check(&mut w);
        w.stream.write_all(b"HEAD /x?fault=extra HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        assert_eq!(read_response(&mut w, "HEAD").status, 200);
        written += 1;
        strays_written(&ds, written);
        check(&mut victim);
        check(&mut w);
        let r = get(&mut w, "/x?fault=overlong&bytes=5", "");
        assert_eq!((r.status, r.body.len()), (200, 5), "exactly Content-Length bytes");
        check(&mut victim);
        check(&mut w);
    }
    // Logged as the proxy notices, which may trail the answers: waited for.
    p.wait_for_since(0, "beyond the response's framing"); // the surplus was noticed
    p.wait_for_since(0, "sent bytes on an idle pooled connection"); // the late strays were noticed
}

#[test]
fn a_line_backend_that_resets_after_n_lines_closes_the_client_in_tcp_mode() {
    let (_d, backend) = dummy_with("lab", 0, &["--fault", "reset-after=2"]);
    let (p, addr) = proxy(&[backend], "round-robin");
    let mut s = connect(addr);
    assert_eq!(exchange(&mut s, "one"), "lab");
    assert_eq!(exchange(&mut s, "two"), "lab");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = s.write_all(b"three\n");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no third echo: {:?}", String::from_utf8_lossy(&rest));
    p.wait_for("ended by backend error");
    let mut fresh = connect(addr);
    assert_eq!(exchange(&mut fresh, "again"), "lab");
}

/// Issue #20: a request that fails on every backend is logged truthfully. Each attempt (a
/// stale pooled connection retried fresh counts too) is in the last pick's reason, the last
/// failure says no backend is left rather than promise a next one, and the backends saw
/// exactly as many requests as the log says.
#[test]
fn a_request_that_fails_on_every_backend_counts_its_attempts_truthfully() {
    let (ds, p, addr) = lab();
    // Pooled connections first, so the failing request meets a stale-looking one too.
    still_serving(addr);
    still_serving(addr);
    let mut w = Wire::new(connect(addr));
    let r = get(&mut w, "/count?fault=reset-before", "");
    assert_eq!(r.status, 502, "{}", r.text());
    let last = p.wait_for("no other backend to try (");
    let n: usize = last
        .split("no other backend to try (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {last:?}"));
    let access = p.wait_for("\"GET /count?fault=reset-before\"");
    assert!(access.contains(&format!("attempt {n} after {} failed", n - 1)), "{n} attempts: {access}");
    assert!(access.contains(" 502 "), "{access}");
    // The backends saw exactly that many.
    let deadline = Instant::now() + WAIT;
    let seen = || {
        ds.iter().map(|d| d.0.log_text().matches("fault reset-before on GET /count").count()).sum::<usize>()
    };
    while seen() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen(), n, "the log says {n} attempts");
    assert!(n >= 2, "both backends were tried: {n}");
}

fn counting(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
}

#[test]
fn malformed_and_ambiguous_requests_never_reach_the_backend() {
    let backend = raw_backend(counting, usize::MAX);
    let (p, addr) =
        http_proxy(&[backend.addr], "round-robin", "", "max_head_bytes = 4096\nmax_body_bytes = 50000");
    let big_header = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(5000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
        ),
        (
            "TE and CL",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".to_vec(),
            400,
        ),
        (
            "repeated CL",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "differing CL",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        ("CL list", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(), 400),
        ("negative CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\n".to_vec(), 400),
        ("plus CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc".to_vec(), 400),
        (
            "huge CL",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 123456789012345678901\r\n\r\n".to_vec(),
            400,
        ),
        (
            "TE not final chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            400,
        ),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(), 400),
        // A coding before chunked: nginx answers 501 (RFC 9112 6.1), HAProxy 422.
        (
            "TE gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            501,
        ),
        (
            "TE identity, chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            501,
        ),
        (
            "TE twice chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), 400),
        ("TE in 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n".to_vec(),
            400,
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), 400),
        ("leading space header", b"GET / HTTP/1.1\r\n Host: t\r\n\r\n".to_vec(), 400),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n".to_vec(), 400),
        ("control in name", b"GET / HTTP/1.1\r\nHost: t\r\nX\x01A: 1\r\n\r\n".to_vec(), 400),
        ("bad byte in target", b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("non-ascii target", "GET /caf\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n".as_bytes().to_vec(), 400),
        ("relative target", b"GET index.html HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        // RFC 9112 3.2: no fragment in a request-target, in either form.
        ("fragment in origin form", b"GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("fragment in absolute form", b"GET http://t/a#frag HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        // nginx answers a target with spaces with 400, not 505.
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("spaces in target", b"GET /a b c HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("repeated Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), 400),
        // As nginx: `..` in a host, and an absolute target's authority held to Host's rules.
        ("Host with ..", b"GET / HTTP/1.1\r\nHost: api.test..\r\n\r\n".to_vec(), 400),
        ("backslash in authority", b"GET http://evil\\x/ HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("quotes in authority", b"GET http://a\"<b>/ HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("open IPv6 authority", b"GET http://[::1/ HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("bad method token", b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("double space", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "overflowing chunk size",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
                .to_vec(),
            400,
        ),
        // HAProxy and nginx end a chunk-size line at a bare LF, httparse at the CRLF after it:
        // refused, so the chunk cannot end in two places.
        (
            "bare LF in a chunk extension",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nABC\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
        // HTTP/1.2 is served as 1.1 (RFC 9112 2.3; `http.rs`); a later major version is not.
        ("HTTP/3.0", b"GET / HTTP/3.0\r\nHost: t\r\n\r\n".to_vec(), 505),
        ("HTTP/0.9 style", b"GET / HTTP/0.9\r\nHost: t\r\n\r\n".to_vec(), 505),
        ("head too large", big_header.into_bytes(), 431),
        // nginx answers 414 to a request line too long by itself.
        (
            "request line too long",
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
        ),
        ("body too large", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n".to_vec(), 413),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405),
        ("bad expectation", b"GET / HTTP/1.1\r\nHost: t\r\nExpect: coffee\r\n\r\n".to_vec(), 417),
    ];
    assert!(cases.len() >= 25);
    for (name, raw, status) in &cases {
        let (r, mut wire) = send_raw(addr, raw, "GET");
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        // One failure model: every refusal names the client's head (or body) and why, as the
        // log does.
        assert!(r.text().contains(": client: request "), "{name}: {}", r.text());
        assert!(closed(&mut wire), "{name}: the connection is closed after the error");
    }
    assert_eq!(backend.seen.lock().expect("seen").len(), 0, "nothing reached the backend");
    // The lines may trail the answers (the log is written as the connection closes): waited for.
    for needle in
        ["refused with 400: client: request head: repeated Host", "refused with 431", "refused with 505"]
    {
        p.wait_for_since(0, needle);
    }
    // And the proxy serves normally afterwards.
    let (r, _) = send_raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // HTTP/1.2 is served as 1.1 (RFC 9112 2.3), as nginx and HAProxy answer it 200: it reaches
    // the backend as 1.1 and the connection stays open for the next request.
    let (r, mut wire) = send_raw(addr, b"GET /v12 HTTP/1.2\r\nHost: t\r\n\r\n", "GET");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let seen = backend.seen.lock().expect("seen").clone();
    assert!(seen.iter().any(|h| h.starts_with("GET /v12 HTTP/1.1\r\n")), "{seen:?}");
    assert_eq!(get(&mut wire, "/again", "").status, 200, "kept alive as 1.1");
    assert_eq!(backend.seen.lock().expect("seen").len(), 3);
}

/// A crowd of bad and unfinished request heads: each gets its 400 or 408 and one line at info,
/// as nginx logs "client sent invalid request" and "client timed out" (each was a warning, so
/// any client could flood the warnings); the next ordinary request is served.
#[test]
fn a_crowd_of_bad_or_slow_heads_is_answered_and_logged_at_info_not_warn() {
    let ds = dummies(1);
    let (p, addr) = http_proxy(&[ds[0].1], "round-robin", "header_ms = 500", "");
    let mark = p.mark();
    let mut slow: Vec<_> = (0..10)
        .map(|_| {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").expect("half a head");
            s
        })
        .collect();
    for _ in 0..10 {
        let raw = {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").expect("send");
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            raw
        };
        assert!(raw.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&raw));
    }
    for s in &mut slow {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert!(raw.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&raw));
    }
    wait_until("a line for each", || {
        p.lines_from(mark).iter().filter(|l| l.contains(": refused with 4")).count() == 20
    });
    let lines = p.lines_from(mark);
    assert!(lines.iter().all(|l| !l.contains("[WARN]")), "{lines:#?}");
    still_serving(addr);
}
