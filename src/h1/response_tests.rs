//! Unit tests of response parsing and rewriting: framing towards the client, transfer codings, 1xx, hop-by-hop and `Via`.

use super::*;

fn client(version: u8, keep_alive: bool) -> ClientSide<'static> {
    ClientSide {
        method: "GET",
        version,
        keep_alive,
        request_id: "id-1",
        via: "lbproxy",
        upgrade: false,
        edits: Edits::NONE,
        set_cookie: None,
    }
}

fn run(raw: &str, c: &ClientSide<'_>) -> Result<Option<(ResponseHead, String)>, &'static str> {
    let mut out = Vec::new();
    parse(raw.as_bytes(), 65536, c, &mut out).map(|r| r.map(|h| (h, String::from_utf8_lossy(&out).into())))
}

#[test]
fn rewrites_for_a_keep_alive_client() {
    let (h, out) = run(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nX-Request-ID: other\r\nServer: t\r\n\r\nabc",
        &client(1, true),
    )
    .expect("valid")
    .expect("complete");
    assert_eq!(
        (h.status, h.body, h.backend_reusable, h.client_keep_alive),
        (200, BodyKind::Length(3), true, true)
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nServer: t\r\nX-Request-ID: id-1\r\nVia: 1.1 lbproxy\r\nContent-Length: 3\r\n\r\n"
    );
}

#[test]
fn until_close_becomes_chunked_for_11_and_close_for_10() {
    let raw = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    let (h, out) = run(raw, &client(1, true)).expect("ok").expect("c");
    assert_eq!((h.body, h.client_body, h.backend_reusable), (BodyKind::UntilClose, BodyKind::Chunked, false));
    assert!(out.contains("Transfer-Encoding: chunked\r\n") && !out.contains("Connection"));
    let (h, out) = run(raw, &client(0, true)).expect("ok").expect("c");
    assert!(!h.client_keep_alive && out.contains("Connection: close\r\n"), "{out}");
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (h, out) = run(chunked, &client(0, true)).expect("ok").expect("c");
    assert_eq!(
        (h.body, h.client_body, h.client_keep_alive),
        (BodyKind::Chunked, BodyKind::UntilClose, false)
    );
    assert!(!out.contains("chunked") && out.contains("Connection: close\r\n"), "{out}");
}

/// The body is re-chunked, so its other transfer codings must stay named: the client got
/// gzip bytes labelled only `chunked` before.
#[test]
fn other_transfer_codings_stay_named_before_chunked() {
    for (te, body) in [
        ("gzip, chunked", BodyKind::Chunked),
        ("gzip", BodyKind::UntilClose),
        ("gzip\r\nTransfer-Encoding: chunked", BodyKind::Chunked),
        // An empty list element is no coding (RFC 9110 5.6.1): `chunked` is still the last.
        ("gzip, chunked, ", BodyKind::Chunked),
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        let (h, out) = run(&raw, &client(1, true)).expect("ok").expect("c");
        assert_eq!((h.body, h.client_body), (body, BodyKind::Chunked), "{te}");
        assert_eq!(out.matches("Transfer-Encoding").count(), 1, "{out}");
        assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"), "{te}: {out}");
    }
    let (_, out) = run("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &client(1, true))
        .expect("ok")
        .expect("c");
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    // `chunked` not last or twice, or `identity`: re-chunked it would be chunked twice, so
    // refused (502), as HAProxy does.
    for te in [
        "chunked, gzip",
        "chunked, identity",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
        "identity",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\nContent-Length: 5\r\n\r\n");
        assert!(run(&raw, &client(1, true)).is_err(), "{te}");
        // No body, nothing framed: a HEAD's answer goes on.
        let head = ClientSide { method: "HEAD", ..client(1, true) };
        assert!(run(&raw, &head).is_ok(), "{te}");
    }
}

#[test]
fn a_204_loses_its_content_length_and_a_304_keeps_it() {
    let (_, out) = run("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", &client(1, true))
        .expect("ok")
        .expect("c");
    assert!(!out.contains("Content-Length"), "{out}");
    let (_, out) = run("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", &client(1, true))
        .expect("ok")
        .expect("c");
    assert!(out.contains("Content-Length: 7\r\n"), "{out}");
}

#[test]
fn over_100_header_fields_are_named_as_such() {
    let raw = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: 1\r\n".repeat(101));
    assert_eq!(run(&raw, &client(1, true)).err(), Some("response head with over 100 header fields"));
    assert_eq!(
        run("HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", &client(1, true)).err(),
        Some("malformed response head")
    );
}

#[test]
fn head_responses_keep_their_length() {
    let c = ClientSide { method: "HEAD", ..client(1, true) };
    let (h, out) = run("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", &c).expect("ok").expect("c");
    assert_eq!(h.body, BodyKind::Empty);
    assert!(out.contains("Content-Length: 99\r\n"));
}

#[test]
fn informational_heads_are_written_for_forwarding_without_hop_by_hop_fields() {
    let (h, out) = run("HTTP/1.1 100 Continue\r\n\r\n", &client(1, true)).expect("ok").expect("c");
    assert_eq!((h.status, h.body, out.as_str()), (100, BodyKind::Empty, "HTTP/1.1 100 Continue\r\n\r\n"));
    let raw =
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n";
    let (h, out) = run(raw, &client(1, true)).expect("ok").expect("c");
    assert_eq!(h.status, 103);
    assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n");
}

#[test]
fn unusable_responses_are_errors() {
    for raw in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "SMTP 220 hello\r\n\r\n",
    ] {
        assert!(run(raw, &client(1, true)).is_err(), "{raw:?}");
    }
}

#[test]
fn a_101_to_an_upgrade_request_keeps_upgrade_and_drops_other_hop_by_hop_headers() {
    let raw = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\n\
               Upgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n";
    let side = ClientSide { upgrade: true, ..client(1, true) };
    let mut out = Vec::new();
    let head = parse(raw.as_bytes(), 4096, &side, &mut out).expect("valid").expect("complete");
    assert_eq!((head.status, head.backend_reusable, head.client_keep_alive), (101, false, false));
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
    for kept in ["Connection: upgrade\r\n", "Upgrade: websocket\r\n", "Sec-WebSocket-Accept: abc\r\n"] {
        assert!(text.contains(kept), "{kept} missing: {text}");
    }
    assert!(!text.contains("X-Hop"), "{text}");
}

#[test]
fn an_upgrade_request_forwards_connection_and_upgrade_without_h2c() {
    let fwd = crate::h1::request::Forwarding {
        client: "10.0.0.7",
        local_host: &|| "p:1".to_string(),
        proto: "https",
        hash_header: None,
        underscores: false,
        route: None,
        keep_forwarded: false,
        agents: false,
    };
    let raw =
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n";
    let mut out = Vec::new();
    let head =
        crate::h1::request::parse(raw.as_bytes(), 4096, &fwd, &mut out).expect("valid").expect("complete");
    assert_eq!(head.upgrade.as_deref(), Some("websocket"));
    assert!(head.h2c_stripped);
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"), "{text}");
    assert!(text.contains("X-Forwarded-Proto: https\r\n") && !text.contains("h2c"), "{text}");
    // h2c alone: nothing to upgrade to, and nothing of it forwarded.
    let raw = "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let mut out = Vec::new();
    let head =
        crate::h1::request::parse(raw.as_bytes(), 4096, &fwd, &mut out).expect("valid").expect("complete");
    assert_eq!((head.upgrade.as_deref(), head.h2c_stripped), (None, true));
    let text = String::from_utf8(out).expect("utf8").to_ascii_lowercase();
    assert!(!text.contains("upgrade"), "{text}");
}
