//! The dummy_server fault lab, talked to directly over raw sockets: each mode's wire behaviour
//! (what bytes arrive, and whether the connection ends in FIN, RST or stays open), since the
//! proxy's own fault tests rely on the dummy misbehaving exactly as documented.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use lbproxy::companions::dummy::fault::{BAD_LENGTH_SHORT, GARBAGE};
use lbproxy::companions::dummy::http::pattern_byte;
use lbproxy::h1::Wire;

use crate::util::{closed, connect, dummy, dummy_with, exchange, get, read_response, Proc, DUMMY};

const HELLO: &[u8] = b"Hello from lab\n";
const STRAY: &[u8] = b"STRAY from lab\n";

/// Sends `method target` on a new connection (keep-alive) and returns the socket.
fn ask(addr: SocketAddr, method: &str, target: &str) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(format!("{method} {target} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes()).expect("send");
    s
}

/// Reads until end of stream or an error (the socket has a read timeout, so this is bounded);
/// returns the bytes and how the stream ended.
fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Splits raw response bytes into the head's text and what follows it.
fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no complete head in {:?}", String::from_utf8_lossy(raw));
    });
    (String::from_utf8_lossy(&raw[..end + 4]).into_owned(), &raw[end + 4..])
}

fn assert_reset(end: io::Result<()>, got: &[u8]) {
    let kind = end.as_ref().map_err(io::Error::kind);
    assert_eq!(kind, Err(io::ErrorKind::ConnectionReset), "after {:?}", String::from_utf8_lossy(got));
}

fn lab() -> (Proc, SocketAddr) {
    dummy("lab")
}

#[test]
fn fault_reset_before_resets_without_a_byte() {
    let (d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=reset-before");
    let (got, end) = read_until_end(&mut s);
    assert!(got.is_empty(), "got {:?}", String::from_utf8_lossy(&got));
    assert_reset(end, &got);
    d.wait_for("fault reset-before on GET /x from 127.0.0.1:");
}

#[test]
fn fault_close_before_closes_cleanly_without_a_byte() {
    let (d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=close-before");
    let (got, end) = read_until_end(&mut s);
    assert!(got.is_empty(), "got {:?}", String::from_utf8_lossy(&got));
    assert!(end.is_ok(), "a FIN, not {end:?}");
    d.wait_for("fault close-before on GET /x from");
}

#[test]
fn fault_reset_mid_sends_the_full_length_and_half_the_body_then_resets() {
    let (d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=reset-mid&bytes=1000");
    let (got, end) = read_until_end(&mut s);
    let (head, body) = split_head(&got);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 1000\r\n"), "{head}");
    let half: Vec<u8> = (0..500).map(pattern_byte).collect();
    assert_eq!(body, &half[..], "exactly the first half of the body");
    assert_reset(end, &got);
    d.wait_for("fault reset-mid on GET /x from");
}

#[test]
fn fault_extra_sends_a_stray_response_after_the_real_one_and_stays_open() {
    let (d, addr) = lab();
    let mut wire = Wire::new(ask(addr, "GET", "/x?fault=extra"));
    let first = read_response(&mut wire, "GET");
    assert_eq!((first.status, first.body.as_slice()), (200, HELLO), "the real response comes first, whole");
    assert_eq!(first.header("X-Fault"), None);
    let stray = read_response(&mut wire, "GET");
    assert_eq!((stray.status, stray.body.as_slice()), (200, STRAY));
    assert_eq!(stray.header("X-Fault"), Some("stray"));
    // The dummy reads the next request on the same connection after its stray bytes.
    let next = get(&mut wire, "/y", "");
    assert_eq!(next.body, HELLO);
    d.wait_for("fault extra on GET /x from");
}

#[test]
fn fault_extra_on_head_sends_a_stray_response_after_the_head() {
    let (d, addr) = lab();
    let mut wire = Wire::new(ask(addr, "HEAD", "/x?fault=extra"));
    let head = read_response(&mut wire, "HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some(HELLO.len().to_string().as_str()));
    // Nothing may follow a HEAD response, yet the stray response arrives on the connection.
    let stray = read_response(&mut wire, "GET");
    assert_eq!((stray.status, stray.body.as_slice()), (200, STRAY));
    d.wait_for("fault extra on HEAD /x from");
}

#[test]
fn fault_drip_sends_the_body_one_byte_per_10ms() {
    let (d, addr) = lab();
    let start = Instant::now();
    let mut wire = Wire::new(ask(addr, "GET", "/x?fault=drip"));
    let resp = read_response(&mut wire, "GET");
    let took = start.elapsed();
    assert_eq!((resp.status, resp.body.as_slice()), (200, HELLO));
    let floor = Duration::from_millis(10) * HELLO.len() as u32;
    assert!(took >= floor, "{} bytes took {took:?}, less than {floor:?}", HELLO.len());
    // Still a keep-alive connection afterwards.
    assert_eq!(get(&mut wire, "/y", "").body, HELLO);
    d.wait_for("fault drip on GET /x from");
}

#[test]
fn fault_slow_head_waits_delay_ms_before_any_byte() {
    let (d, addr) = lab();
    let start = Instant::now();
    let s = ask(addr, "GET", "/x?fault=slow-head&delay_ms=300");
    let mut first = [0u8; 1];
    assert_eq!(s.peek(&mut first).expect("first byte"), 1);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "first byte after {took:?}");
    let mut wire = Wire::new(s);
    let resp = read_response(&mut wire, "GET");
    assert_eq!(first[0], b'H');
    assert_eq!((resp.status, resp.body.as_slice()), (200, HELLO));
    d.wait_for("fault slow-head on GET /x from");
}

#[test]
fn fault_slow_head_defaults_to_two_seconds() {
    let (_d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=slow-head");
    s.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let mut buf = [0u8; 64];
    let early = s.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "nothing may arrive within 1.5 s; got {early:?}"
    );
    s.set_read_timeout(Some(crate::util::WAIT)).expect("timeout");
    let resp = read_response(&mut Wire::new(s), "GET");
    assert_eq!(resp.body, HELLO);
}

#[test]
fn fault_bad_length_promises_more_than_it_sends_then_closes() {
    let (d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=bad-length");
    let (got, end) = read_until_end(&mut s);
    assert!(end.is_ok(), "a FIN, not {end:?}");
    let (head, body) = split_head(&got);
    let promised = HELLO.len() as u64 + BAD_LENGTH_SHORT;
    assert!(head.contains(&format!("Content-Length: {promised}\r\n")), "{head}");
    assert_eq!(body, HELLO, "the whole real body and nothing more");
    d.wait_for("fault bad-length on GET /x from");
}

#[test]
fn fault_garbage_sends_bytes_that_are_not_http_then_closes() {
    let (d, addr) = lab();
    let mut s = ask(addr, "GET", "/x?fault=garbage");
    let (got, end) = read_until_end(&mut s);
    assert!(end.is_ok(), "a FIN, not {end:?}");
    assert_eq!(got, GARBAGE);
    assert!(!got.starts_with(b"HTTP/"));
    let mut headers = [httparse::EMPTY_HEADER; 16];
    assert!(httparse::Response::new(&mut headers).parse(&got).is_err(), "httparse must reject it");
    d.wait_for("fault garbage on GET /x from");
}

#[test]
fn fault_overlong_sends_bytes_past_content_length_in_the_same_write() {
    let (d, addr) = lab();
    let mut wire = Wire::new(ask(addr, "GET", "/x?fault=overlong"));
    let first = read_response(&mut wire, "GET");
    assert_eq!((first.status, first.body.as_slice()), (200, HELLO));
    // One small write is one segment on loopback: the surplus came with the body.
    assert!(
        wire.buffered().starts_with(b"HTTP/1.1 200 OK\r\n"),
        "surplus not already buffered: {:?}",
        String::from_utf8_lossy(wire.buffered())
    );
    let stray = read_response(&mut wire, "GET");
    assert_eq!(stray.body, STRAY);
    assert_eq!(get(&mut wire, "/y", "").body, HELLO, "the connection stays open");
    d.wait_for("fault overlong on GET /x from");
}

#[test]
fn fault_unknown_gets_a_400_listing_the_modes() {
    let (_d, addr) = lab();
    let mut wire = Wire::new(ask(addr, "GET", "/x?fault=nope"));
    let resp = read_response(&mut wire, "GET");
    assert_eq!(resp.status, 400);
    let text = resp.text();
    assert!(text.contains("unknown fault \"nope\""), "{text}");
    for mode in ["reset-before", "close-before", "reset-mid", "extra", "drip", "slow-head", "bad-length"] {
        assert!(text.contains(mode), "{mode} missing from {text}");
    }
    assert!(text.contains("garbage") && text.contains("overlong"), "{text}");
    assert!(closed(&mut wire), "the 400 closes the connection");
}

#[test]
fn fault_reset_after_n_resets_line_connections_after_n_echoes() {
    let (d, addr) = dummy_with("lab", 0, &["--fault", "reset-after=2"]);
    d.wait_for("fault reset-after=2 on every line connection");
    let mut s = connect(addr);
    assert_eq!(exchange(&mut s, "one"), "lab");
    assert_eq!(exchange(&mut s, "two"), "lab");
    let (got, end) = read_until_end(&mut s);
    assert!(got.is_empty(), "nothing after the second echo: {:?}", String::from_utf8_lossy(&got));
    assert_reset(end, &got);
    d.wait_for("fault reset-after=2 on line connection from");
    // Every connection gets the fault, not just the first.
    let mut again = connect(addr);
    assert_eq!(exchange(&mut again, "three"), "lab");
    assert_eq!(exchange(&mut again, "four"), "lab");
    let (got, end) = read_until_end(&mut again);
    assert_reset(end, &got);
}

#[test]
fn fault_reset_after_zero_resets_at_the_first_line_unechoed() {
    let (_d, addr) = dummy_with("lab", 0, &["--fault", "reset-after=0"]);
    let mut s = connect(addr);
    s.write_all(b"hello\n").expect("send");
    let (got, end) = read_until_end(&mut s);
    assert!(got.is_empty(), "got {:?}", String::from_utf8_lossy(&got));
    assert_reset(end, &got);
}

#[test]
fn fault_flag_rejects_unknown_line_faults_clearly() {
    for (bad, says) in
        [("drip", "unknown line fault \"drip\""), ("reset-after=x", "reset-after needs a line count")]
    {
        let out = Command::new(DUMMY).args(["0", "--log-dir", "", "--fault", bad]).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
}
