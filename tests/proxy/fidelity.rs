//! HTTP fidelity against what HAProxy and nginx do (1xx heads are in `interim.rs`): trailers
//! go through both ways (filtered, and refused when malformed), underscored header names
//! never reach a backend by default (nginx's `underscores_in_headers off`), `Expect:
//! 100-continue` lets the backend decide, a response's `gzip` transfer coding stays named, and a
//! TLS client whose ALPN guess is wrong still gets HTTP/1.1 (as HAProxy answers it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::streaming::{backend, read_head};
use crate::tls::{client_config, tls_connect, tls_proxy, Ca};
use crate::util::*;

/// Sends `raw` and reads until the proxy closes the connection.
pub fn round_trip(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn trailer_backend(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    backend(move |mut s| {
        let (head, mut body) = read_head(&mut s);
        if head.contains("chunked") {
            let mut chunk = [0u8; 4096];
            while !body.ends_with(b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        }
        seen.lock().expect("seen").push(format!("{head}{}", String::from_utf8_lossy(&body)));
        let reply: &[u8] = if head.starts_with("GET /bad-trailer") {
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nno colon here\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTrailer: Server-Timing\r\n\r\n5\r\nhello\r\n\
              0\r\nServer-Timing: db;dur=53\r\nSet-Cookie: evil=1\r\nContent-Length: 99\r\n\r\n"
        };
        let _ = s.write_all(reply);
    })
}

#[test]
fn response_trailers_go_on_to_a_chunked_client_filtered_and_are_dropped_for_http_1_0() {
    let addr = trailer_backend(Arc::new(Mutex::new(Vec::new())));
    let (_p, proxy) = http_proxy(&[addr], "round-robin", "", "");
    let text = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(text.ends_with("5\r\nhello\r\n0\r\nServer-Timing: db;dur=53\r\n\r\n"), "{text}");
    // Announced as the backend announced it, as HAProxy and nginx keep `Trailer`.
    assert!(text.contains("\r\nTrailer: Server-Timing\r\n"), "{text}");
    assert!(
        !text.contains("Set-Cookie") && !text.contains("Content-Length: 99"),
        "a forbidden trailer field went through: {text}"
    );
    let text = round_trip(proxy, b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.ends_with("\r\n\r\nhello") && !text.contains("Server-Timing"), "{text}");
}

#[test]
fn request_trailers_reach_the_backend_filtered_and_a_malformed_one_gets_400() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = trailer_backend(seen.clone());
    let (_p, proxy) = http_proxy(&[addr], "round-robin", "", "");
    let text = round_trip(
        proxy,
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nX-Checksum: abc\r\nHost: evil\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let got = seen.lock().expect("seen").pop().expect("the backend got the upload");
    assert!(got.ends_with("3\r\nabc\r\n0\r\nX-Checksum: abc\r\n\r\n"), "{got}");
    // A request line hidden in the trailers (a smuggling attempt) is refused, never delivered.
    let text = round_trip(
        proxy,
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(seen.lock().expect("seen").iter().all(|h| !h.starts_with("GET /smuggled")));
}

#[test]
fn a_malformed_response_trailer_closes_the_client_connection_without_a_clean_end() {
    let addr = trailer_backend(Arc::new(Mutex::new(Vec::new())));
    let (_p, proxy) = http_proxy(&[addr], "round-robin", "", "");
    // Keep-alive asked for: only the close ends the read, and the body has no last chunk.
    let text = round_trip(proxy, b"GET /bad-trailer HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.contains("5\r\nhello\r\n"), "{text}");
    assert!(!text.contains("\r\n0\r\n"), "a truncated body was made to look complete: {text}");
}

fn underscore_proxy(addr: SocketAddr, keep: bool) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n\
         [http]\nunderscores_in_headers = {keep}\n{}",
        backends_section(&[addr])
    );
    proxy_with(&config, &[])
}

#[test]
fn underscored_headers_never_reach_the_backend_by_default_as_nginx_and_do_with_the_switch_on() {
    let b = raw_backend(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), 0);
    let spoof = b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let (p, proxy) = underscore_proxy(b.addr, false);
    assert!(round_trip(proxy, spoof).starts_with("HTTP/1.1 200"));
    let head = b.seen.lock().expect("seen").pop().expect("a head");
    assert!(!head.contains("6.6.6.6") && !head.contains('_'), "{head}");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(admin_addr(&p), "/stats").text()).expect("json");
    assert_eq!(stats["underscored_headers_dropped"], 2, "{stats}");
    let (_p, proxy) = underscore_proxy(b.addr, true);
    assert!(round_trip(proxy, spoof).starts_with("HTTP/1.1 200"));
    let head = b.seen.lock().expect("seen").pop().expect("a head");
    assert!(
        head.contains("X_Forwarded_For: 6.6.6.6\r\n") && head.contains("X_Real_IP: 6.6.6.6\r\n"),
        "{head}"
    );
}

/// A backend for `Expect: 100-continue`: `/limited` answers 413 at once, `/ok` sends its own
/// `100` (marked `X-From: backend`), `/processing` only a `102`, `/silent` says nothing until
/// the body is in. Body bytes received are added to `received`.
fn expect_backend(received: Arc<AtomicUsize>) -> SocketAddr {
    backend(move |mut s| {
        let (head, body) = read_head(&mut s);
        received.fetch_add(body.len(), Ordering::SeqCst);
        if head.starts_with("POST /limited") {
            let _ = s.write_all(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
            );
            // Count whatever still comes, until the proxy lets go.
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut chunk = [0u8; 65536];
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                received.fetch_add(n, Ordering::SeqCst);
            }
            return;
        }
        if head.starts_with("POST /ok") {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\nX-From: backend\r\n\r\n");
        }
        if head.starts_with("POST /processing") {
            let _ = s.write_all(b"HTTP/1.1 102 Processing\r\nX-From: backend\r\n\r\n");
        }
        let want: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut got = body.len();
        let mut chunk = [0u8; 65536];
        while got < want {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        received.fetch_add(got - body.len(), Ordering::SeqCst);
        let saw = if head.contains("\r\nExpect: 100-continue\r\n") { "yes" } else { "no" };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nX-Saw-Expect: {saw}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{got}",
            got.to_string().len()
        );
        let _ = s.write_all(reply.as_bytes());
    })
}

/// Reads one response head from `s`.
fn head_from(s: &mut TcpStream) -> String {
    let (head, _) = read_head(s);
    head
}

#[test]
fn expect_lets_the_backend_refuse_before_a_byte_of_the_body_is_sent() {
    let received = Arc::new(AtomicUsize::new(0));
    let (_p, proxy) = http_proxy(&[expect_backend(received.clone())], "round-robin", "", "");
    let mut s = connect(proxy);
    s.write_all(
        b"POST /limited HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 52428800\r\n\r\n",
    )
    .expect("send head");
    let head = head_from(&mut s);
    assert!(head.starts_with("HTTP/1.1 413") && head.contains("Connection: close"), "{head}");
    // curl, told to expect, uploads nothing of a 5 MiB body when the backend refuses it.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 5 << 20]).expect("write");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{proxy}/limited"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413 0", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(received.load(Ordering::SeqCst), 0, "body bytes reached the backend");
}

#[test]
fn expect_relays_the_backends_100_and_sends_its_own_only_when_the_backend_is_silent() {
    let received = Arc::new(AtomicUsize::new(0));
    let (_p, proxy) = http_proxy(&[expect_backend(received.clone())], "round-robin", "", "");
    for (path, from_backend) in [("/ok", true), ("/silent", false)] {
        let mut s = connect(proxy);
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        s.write_all(head.as_bytes()).expect("send head");
        let interim = head_from(&mut s);
        assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{path}: {interim}");
        assert_eq!(interim.contains("X-From: backend"), from_backend, "{path}: {interim}");
        s.write_all(b"hello").expect("send body");
        let head = head_from(&mut s);
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("X-Saw-Expect: yes"), "{path}: {head}");
    }
    assert_eq!(received.load(Ordering::SeqCst), 10);
    // A 102 and then silence: the 102 goes on, then the proxy's own 100 within the one wait.
    let mut s = connect(proxy);
    s.write_all(b"POST /processing HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .expect("send head");
    let processing = head_from(&mut s);
    assert!(processing.starts_with("HTTP/1.1 102 Processing\r\nX-From: backend"), "{processing}");
    let interim = head_from(&mut s);
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n") && !interim.contains("X-From"), "{interim}");
    s.write_all(b"hello").expect("send body");
    assert!(head_from(&mut s).starts_with("HTTP/1.1 200"));
    assert_eq!(received.load(Ordering::SeqCst), 15);
}

/// A client that sends its whole body with the head, not waiting for `100` (RFC 9110 10.1.1
/// lets it), is not made to wait for a silent backend's word: the body goes on at once, and
/// the proxy's own `100` (sent only after 1 s of silence) never comes. One that sent only part
/// of it may be waiting for the `100` to send the rest: it still gets the backend's.
#[test]
fn a_whole_body_sent_with_its_expect_head_goes_on_without_waiting_for_a_100() {
    let received = Arc::new(AtomicUsize::new(0));
    let (_p, proxy) = http_proxy(&[expect_backend(received.clone())], "round-robin", "", "");
    let mut s = connect(proxy);
    s.write_all(
        b"POST /silent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    )
    .expect("send");
    let head = head_from(&mut s);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("X-Saw-Expect: yes"), "{head}");
    assert_eq!(received.load(Ordering::SeqCst), 5);
    let mut s = connect(proxy);
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhe")
        .expect("send");
    let interim = head_from(&mut s);
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n") && interim.contains("X-From: backend"),
        "{interim}"
    );
    s.write_all(b"llo").expect("the rest");
    assert!(head_from(&mut s).starts_with("HTTP/1.1 200"));
    assert_eq!(received.load(Ordering::SeqCst), 10);
}

/// RFC 9110 15.2: no 1xx to an HTTP/1.0 client, whose `100-continue` is ignored (10.1.1), as
/// nginx and HAProxy ignore it: the backend is not asked for one either.
#[test]
fn an_http_1_0_client_gets_no_100_and_its_expectation_goes_no_further_as_nginx() {
    let received = Arc::new(AtomicUsize::new(0));
    let (_p, proxy) = http_proxy(&[expect_backend(received.clone())], "round-robin", "", "");
    let mut s = connect(proxy);
    s.write_all(b"POST /silent HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
        .expect("send");
    let head = head_from(&mut s);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("X-Saw-Expect: no"), "{head}");
    assert_eq!(received.load(Ordering::SeqCst), 5);
}

/// Methods are case-sensitive (RFC 9110 9.1): `head` is some other method, whose answer has a
/// body, and it goes to the client whole, as HAProxy forwards it. Framed as HEAD's, that body
/// stayed on the backend connection for the next client to read as its answer.
#[test]
fn a_lowercase_head_is_not_head_and_its_answer_keeps_its_body_as_haproxy() {
    fn reply(head: &str) -> Vec<u8> {
        let body = if head.starts_with("head ") { "for head" } else { "for GET!" };
        format!("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{body}").into_bytes()
    }
    let b = raw_backend(reply, usize::MAX);
    let (_p, proxy) = http_proxy(&[b.addr], "round-robin", "", "backend_keepalive = 1");
    let mut w = lbproxy::h1::Wire::new(connect(proxy));
    w.stream.write_all(b"head /first HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let first = read_response(&mut w, "head");
    assert_eq!((first.status, first.text().as_str()), (200, "for head"));
    // Another client, over the one pooled backend connection, gets its own answer.
    let mut other = lbproxy::h1::Wire::new(connect(proxy));
    let second = get(&mut other, "/second", "");
    assert_eq!((second.status, second.text().as_str()), (200, "for GET!"));
    assert_eq!(b.connections.load(Ordering::SeqCst), 1, "the backend connection was reused");
}

#[test]
fn a_tls_client_offering_only_h2_or_http_1_0_still_gets_http_1_1_as_haproxy() {
    let (_d, addr) = dummy("alpn");
    let ca = Ca::new("alpn CA");
    let (_p, proxy, _certs) = tls_proxy(&ca, "http", &[addr], "", "");
    for (offer, chosen) in [
        (vec![&b"h2"[..]], None),
        (vec![&b"http/1.0"[..]], None),
        (vec![&b"h2"[..], &b"http/1.1"[..]], Some(&b"http/1.1"[..])),
    ] {
        let mut config = (*client_config(&ca, None)).clone();
        config.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
        let mut tls = tls_connect(proxy, Arc::new(config), "localhost")
            .unwrap_or_else(|e| panic!("offering {offer:?}: handshake failed: {e}"));
        assert_eq!(tls.conn.alpn_protocol(), chosen, "offering {offer:?}");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "offering {offer:?}: {text}");
    }
}

/// "compressed in transit\n", gzipped.
const GZIPPED: &[u8] =
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x4b\xce\xcf\x2d\x28\x4a\x2d\x2e\x4e\x4d\x51\xc8\xcc\
\x53\x28\x29\x4a\xcc\x2b\xce\x2c\xe1\x02\x00\x71\x9b\x51\x2c\x16\x00\x00\x00";

/// A backend's `Transfer-Encoding: gzip` survives the re-chunking, as HAProxy passes it: curl,
/// asked to undo transfer codings, gets the text back, where before it got gzip bytes labelled
/// only `chunked`. Both framings: gzip then chunked, and gzip delimited by close.
#[test]
fn a_gzip_transfer_coding_reaches_the_client_named_so_curl_can_undo_it() {
    let b = backend(|mut s| {
        let (head, _) = read_head(&mut s);
        let mut reply = Vec::new();
        if head.starts_with("GET /chunked ") {
            reply.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
            reply.extend_from_slice(format!("{:x}\r\n", GZIPPED.len()).as_bytes());
            reply.extend_from_slice(GZIPPED);
            reply.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            reply.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n",
            );
            reply.extend_from_slice(GZIPPED);
        }
        let _ = s.write_all(&reply);
    });
    let (_p, proxy) = http_proxy(&[b], "round-robin", "", "");
    for path in ["/chunked", "/close"] {
        let out = Command::new("curl")
            .args(["-s", "--tr-encoding", "-D", "/dev/stderr", &format!("http://{proxy}{path}")])
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stderr);
        assert!(head.contains("Transfer-Encoding: gzip, chunked\r\n"), "{path}: {head}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "compressed in transit\n", "{path}: {head}");
    }
}

/// A response whose `Transfer-Encoding` has `chunked` twice or before another coding, or
/// `identity`, is answered 502, as HAProxy answers it: passed on re-chunked, its body would be
/// chunked twice (curl showed the inner chunk sizes), or cut at `response_ms`.
#[test]
fn a_response_chunked_twice_or_coded_identity_is_a_502_as_haproxy_answers() {
    let b = backend(|mut s| {
        let (head, _) = read_head(&mut s);
        let te = match head.split_whitespace().nth(1) {
            Some("/twice") => "chunked, chunked",
            Some("/not-last") => "chunked, gzip",
            _ => "identity\r\nContent-Length: 5",
        };
        let reply = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let _ = s.write_all(reply.as_bytes());
    });
    let (p, proxy) = http_proxy(&[b], "round-robin", "", "");
    for path in ["/twice", "/not-last", "/identity"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = round_trip(proxy, raw.as_bytes());
        assert!(out.starts_with("HTTP/1.1 502 "), "{path}: {out}");
        assert!(out.contains("Transfer-Encoding"), "{path}: the answer says why: {out}");
    }
    p.wait_for("chunked twice or not last");
}
