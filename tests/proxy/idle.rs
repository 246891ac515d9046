//! A keep-alive client between requests: what it may send while idle without beginning a
//! request.

use std::io::Write;

use crate::util::*;

/// Empty lines between requests are no request (RFC 9112 2.2, as nginx's and HAProxy's parsers
/// skip them): a keep-alive client that sends one after its response and then idles past
/// `header_ms` is still between requests, and its next request is answered on the same
/// connection. Before, the empty line began a head, and the client got a 408 it never asked
/// for at `header_ms`, then a close.
#[test]
fn an_empty_line_between_requests_begins_no_head_and_gets_no_408() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 4\n[timeouts]\nheader_ms = 300\n[health]\nenabled = false\n\
         [backends]\napp1 = {backend}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    let (r, mut wire) = send_raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", "GET");
    assert_eq!(r.status, 200);
    wire.stream.write_all(b"\r\n").expect("an empty line");
    // And as old clients send it: right after a POST body, in the same segment.
    let (r, mut posted) =
        send_raw(addr, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi\r\n", "POST");
    assert_eq!(r.status, 200);
    // A head begun after it, and left unfinished, gets its 408: header_ms has passed since.
    let mark = p.mark();
    let mut control = connect(addr);
    control.write_all(b"GET / HTTP/1.1\r\nHost:").expect("send");
    p.wait_for_since(mark, "refused with 408");
    let r = get(&mut wire, "/after", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&mut posted, "/after-post", "");
    assert_eq!(r.status, 200, "{}", r.text());
    // It is the same connection, still open: one more.
    let r = get(&mut wire, "/again", "");
    assert_eq!(r.status, 200, "{}", r.text());
}
