//! Unit tests of request parsing and rewriting: forwarding headers, hop-by-hop stripping, framing, upgrades.

use super::*;

fn fwd() -> Forwarding<'static> {
    Forwarding {
        client: "10.0.0.7",
        local_host: &|| "proxy:8080".to_string(),
        proto: "http",
        hash_header: None,
        underscores: false,
        route: None,
        keep_forwarded: false,
        agents: false,
    }
}

fn run(raw: &str) -> Result<Option<(RequestHead, String)>, Rejection> {
    let mut out = Vec::new();
    parse(raw.as_bytes(), 65536, &fwd(), &mut out)
        .map(|r| r.map(|h| (h, String::from_utf8_lossy(&out).into_owned())))
}

fn status(raw: &str) -> u16 {
    match run(raw) {
        Err(r) => r.status,
        Ok(Some(_)) => 200,
        Ok(None) => 0,
    }
}

#[test]
fn rewrites_headers_for_the_backend() {
    let (head, out) = run("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n\
         X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.2.3.4\r\n\
         Accept: */*\r\n\r\n")
    .expect("valid")
    .expect("complete");
    assert_eq!(head.method, "GET");
    assert!(head.keep_alive && head.retryable);
    assert_eq!(head.request_id.len(), 36);
    assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n"), "{out}");
    for gone in ["X-Secret", "Keep-Alive", "TE:", "Upgrade", "Connection"] {
        assert!(!out.contains(gone), "{gone} forwarded: {out}");
    }
    assert!(out.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\n"), "{out}");
    assert!(out.contains(&format!("X-Request-ID: {}\r\n", head.request_id)));
    // No `Via` of the proxy's on a request, as HAProxy, nginx and Apache send none: nginx's
    // default `gzip_proxied off` would stop compressing for it.
    assert!(!out.contains("Via:") && out.ends_with("\r\n\r\n"), "{out}");
}

#[test]
fn keeps_the_clients_request_id_and_reframes_bodies() {
    let (head, out) = run("POST /u HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc-1\r\nContent-Length: 5\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!(head.request_id, "abc-1");
    assert_eq!(head.body, BodyKind::Length(5));
    assert!(!head.retryable);
    assert!(out.contains("Content-Length: 5\r\n") && out.contains("X-Request-ID: abc-1\r\n"));
    let (head, out) =
        run("PUT /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").expect("ok").expect("c");
    assert_eq!(head.body, BodyKind::Chunked);
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
}

/// An id no log line could carry whole gets a new one, as the request had sent none; the
/// request itself is served (it was refused with 400 before, where nginx passes it on).
#[test]
fn an_unusable_request_id_is_replaced_not_refused() {
    let long = format!("X-Request-ID: {}\r\n", "a".repeat(201));
    for bad in ["X-Request-ID:\r\n", "X-Request-ID: a b\r\n", "X-Request-ID: caf\u{e9}\r\n", long.as_str()] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{bad}\r\n");
        let (head, out) = run(&raw).expect("served").expect("complete");
        assert_eq!(head.request_id.len(), 36, "{bad:?}: a UUID, not {}", head.request_id);
        assert_eq!(out.matches("X-Request-ID: ").count(), 1, "{out}");
        assert!(out.contains(&format!("X-Request-ID: {}\r\n", head.request_id)), "{out}");
    }
}

#[test]
fn absolute_form_becomes_origin_form_with_the_authority_as_host() {
    let (_, out) =
        run("GET http://api.example:81/v1?x=1 HTTP/1.1\r\nHost: other\r\n\r\n").expect("ok").expect("c");
    assert!(out.starts_with("GET /v1?x=1 HTTP/1.1\r\n"), "{out}");
    assert!(out.contains("Host: api.example:81\r\n") && !out.contains("other"), "{out}");
    let (_, out) =
        run("GET http://api.example HTTP/1.1\r\nHost: api.example\r\n\r\n").expect("ok").expect("c");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
    // A query straight after the authority: `/?q`, as nginx sends it; the scheme in any case.
    let (_, out) =
        run("GET HTTP://a.example?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n").expect("ok").expect("c");
    assert!(out.starts_with("GET /?x=1 HTTP/1.1\r\n") && out.contains("Host: a.example\r\n"), "{out}");
    assert_eq!(status("GET http://user@evil/ HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET ftp://a.example/ HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

/// What a host may be, in `Host` and in an absolute target alike (RFC 3986 3.2.2; `..` refused
/// as nginx refuses it): the backend never gets a host that its own `Host` check would refuse.
#[test]
fn host_and_authority_are_held_to_the_same_grammar() {
    for ok in ["t", "api.example.com:8080", "[::1]:80", "[::1]", "127.0.0.1", "a_b.x", "x.", "h:", "a%41b"] {
        assert!(crate::h1::target::valid_host(ok.as_bytes()), "{ok}");
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n")), 200, "Host: {ok}");
        assert_eq!(status(&format!("GET http://{ok}/ HTTP/1.1\r\nHost: t\r\n\r\n")), 200, "authority {ok}");
    }
    for bad in
        ["evil\\x", "a\"<b>", "[::1", "..", "a..b", "u@h", "a:b", "[::1]x", "[]", "a%4", "h:8o", ".", ".:80"]
    {
        assert!(!crate::h1::target::valid_host(bad.as_bytes()), "{bad}");
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")), 400, "Host: {bad}");
        assert_eq!(status(&format!("GET http://{bad}/ HTTP/1.1\r\nHost: t\r\n\r\n")), 400, "authority {bad}");
    }
}

#[test]
fn connection_cannot_strip_host_or_length() {
    let (_, out) =
        run("POST / HTTP/1.1\r\nHost: x\r\nConnection: host, content-length\r\nContent-Length: 2\r\n\r\n")
            .expect("ok")
            .expect("c");
    assert!(out.contains("Host: x\r\n") && out.contains("Content-Length: 2\r\n"), "{out}");
}

#[test]
fn http10_defaults_to_close_and_gets_a_host() {
    let (head, out) = run("GET / HTTP/1.0\r\n\r\n").expect("valid").expect("complete");
    assert!(!head.keep_alive);
    assert!(out.contains("Host: proxy:8080\r\n"));
    let (head, _) = run("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("ok").expect("c");
    assert!(head.keep_alive);
}

#[test]
fn incomplete_heads_ask_for_more_and_huge_ones_are_431() {
    assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), 0);
    let mut out = Vec::new();
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(2000));
    assert_eq!(parse(big.as_bytes(), 1024, &fwd(), &mut out).expect_err("too big").status, 431);
}

#[test]
fn smuggling_shapes_are_rejected() {
    let cases = [
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        // Well-formed but coded: nginx answers 501 (RFC 9112 6.1), HAProxy 422.
        ("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("GET / HTTP/1.12\r\nHost: x\r\n\r\n", 400),
        ("GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET noslash HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-\x7f: 1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        ("CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n", 417),
    ];
    for (raw, want) in cases {
        assert_eq!(status(raw), want, "{raw:?}");
    }
}

/// RFC 9112 2.3: a later minor version of HTTP/1 is processed as 1.1, as nginx and HAProxy
/// answer `HTTP/1.2` 200 (HTTP/2.0 in a request line stays 505, as nginx answers it).
#[test]
fn a_later_http_1_minor_version_is_served_as_1_1() {
    let (head, out) = run("GET / HTTP/1.2\r\nHost: x\r\n\r\n").expect("valid").expect("complete");
    assert!(head.keep_alive, "1.1 semantics: keep-alive by default");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
    assert!(matches!(run("GET / HTTP/1.9\r\nHost: x\r\n"), Ok(None)), "a partial head waits for more");
    assert!(matches!(run("GET / HTTP/1.2"), Ok(None)), "so does a partial line");
    assert_eq!(status("GET / HTTP/1.3\r\n\r\n"), 400, "missing Host, as for 1.1");
}

#[test]
fn underscored_headers_are_dropped_and_counted_unless_kept_as_nginx_does() {
    let raw = "POST / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\n\
               Content_Length: 5\r\nX-Ok: 1\r\nContent-Length: 2\r\n\r\nhi";
    let (head, out) = run(raw).expect("valid").expect("complete");
    assert_eq!((head.underscored, head.body), (3, BodyKind::Length(2)));
    assert!(!out.contains('_') && out.contains("X-Ok: 1\r\n"), "{out}");
    assert!(out.contains("X-Forwarded-For: 10.0.0.7\r\n"), "{out}");
    let keep = Forwarding { underscores: true, ..fwd() };
    let mut out = Vec::new();
    let head = parse(raw.as_bytes(), 65536, &keep, &mut out).expect("valid").expect("complete");
    let out = String::from_utf8_lossy(&out);
    assert_eq!(head.underscored, 0);
    assert!(out.contains("X_Forwarded_For: 6.6.6.6\r\n") && out.contains("Content_Length: 5\r\n"), "{out}");
}

#[test]
fn expect_100_continue_is_forwarded_with_a_body_only() {
    let (head, out) = run("PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .expect("ok")
        .expect("c");
    assert!(head.expect_continue && out.contains("Expect: 100-continue\r\n"), "{out}");
    let (head, out) =
        run("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect("ok").expect("c");
    assert!(!head.expect_continue && !out.contains("Expect"), "{out}");
    // HTTP/1.0 has no 1xx: its expectation is ignored (RFC 9110 10.1.1), as nginx and HAProxy.
    let (head, out) =
        run("PUT /u HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").expect("ok").expect("c");
    assert!(!head.expect_continue && !out.contains("Expect"), "{out}");
}

#[test]
fn an_upgrade_is_forwarded_on_http_1_1_only() {
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let (head, out) = run(&format!("GET /ws HTTP/1.1\r\nHost: a\r\n{ws}")).expect("ok").expect("c");
    assert_eq!(head.upgrade.as_deref(), Some("websocket"));
    assert!(out.contains("Upgrade: websocket\r\n"), "{out}");
    // RFC 9110 7.8: a server ignores Upgrade in an HTTP/1.0 request.
    let (head, out) = run(&format!("GET /ws HTTP/1.0\r\nHost: a\r\n{ws}")).expect("ok").expect("c");
    assert_eq!(head.upgrade, None);
    assert!(!out.contains("Upgrade"), "{out}");
}

#[test]
fn generated_request_ids_are_distinct_uuid_v4() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!((uuid.get_version_num(), uuid.get_variant()), (4, uuid::Variant::RFC4122), "{id}");
        assert_eq!(id, &id.to_ascii_lowercase());
    }
}

/// From a trusted proxy (one that terminates TLS in front), its `X-Forwarded-Proto` is kept, as
/// Traefik keeps it from its `trustedIPs`; from anyone else, or naming no scheme, it is the
/// proxy's own.
#[test]
fn x_forwarded_proto_is_kept_only_from_a_trusted_proxy_and_only_as_a_scheme() {
    let cases = [
        (true, "https", "https"),
        (true, "HTTP", "http"),
        (true, "gopher", "http"),
        (false, "https", "http"),
    ];
    for (trusted, sent, forwarded) in cases {
        let fwd = Forwarding { keep_forwarded: trusted, ..fwd() };
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: {sent}\r\n\r\n");
        let mut out = Vec::new();
        parse(raw.as_bytes(), 65536, &fwd, &mut out).expect("valid").expect("complete");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("X-Forwarded-Proto").count(), 1, "{out}");
        assert!(out.contains(&format!("X-Forwarded-Proto: {forwarded}\r\n")), "{trusted} {sent}: {out}");
    }
}
