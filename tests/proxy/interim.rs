//! A backend's informational (1xx) heads, as HAProxy forwards them: they reach HTTP/1.1
//! clients before the final answer and never HTTP/1.0 ones, a request whose 1xx went out is not
//! sent again, and together they may not pass `max_head_bytes` (each backend's counted alone).

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::fidelity::round_trip;
use crate::streaming::{backend, read_head};
use crate::util::*;

fn early_hints_backend() -> SocketAddr {
    backend(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
    })
}

#[test]
fn a_backends_103_reaches_an_http_1_1_client_before_the_200_and_never_an_http_1_0_one_as_haproxy() {
    let (_p, proxy) = http_proxy(&[early_hints_backend()], "round-robin", "", "");
    let text = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        text.starts_with(
            "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    let text = round_trip(proxy, b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && !text.contains("103"), "{text}");
    // curl, a client nobody here wrote, sees the hint and then the answer.
    let out = Command::new("curl").args(["-sv", &format!("http://{proxy}/")]).output().expect("curl");
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = err.find("< HTTP/1.1 103 Early Hints").unwrap_or_else(|| panic!("no 103 in {err}"));
    assert!(err[hint..].contains("< HTTP/1.1 200 OK"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
}

/// A backend that sends `103 Early Hints` and then closes: the hint went to the client, so the
/// GET is not sent again (the client would get the hint twice); it gets one hint, then a 502.
#[test]
fn a_request_whose_103_reached_the_client_is_not_retried_when_the_backend_then_closes() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = backend(move |mut s| {
        read_head(&mut s);
        seen.fetch_add(1, Ordering::SeqCst);
        let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
    });
    let (_p, proxy) = http_proxy(&[app, app], "round-robin", "", "");
    let text = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(text.matches("103 Early Hints").count(), 1, "{text}");
    assert!(text.contains("\r\n\r\nHTTP/1.1 502 "), "{text}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "sent again after its 103 went out");
}

/// A backend that sends 1xx heads without end: together they count against `max_head_bytes`
/// (as Go's HTTP client counts them against its header limit), so the client gets the ones
/// forwarded so far and then a 502, not a connection held for as long as the backend likes.
#[test]
fn a_backend_sending_1xx_heads_without_end_gets_a_502_once_they_pass_max_head_bytes() {
    let app = backend(|mut s| {
        read_head(&mut s);
        // 100,000 heads of 27 bytes, far past the 4 KiB below; then a final answer never sent.
        for _ in 0..1_000 {
            if s.write_all(&b"HTTP/1.1 102 Processing\r\n\r\n".repeat(100)).is_err() {
                return;
            }
        }
    });
    let (p, proxy) = http_proxy(&[app], "round-robin", "", "max_head_bytes = 4096");
    let text = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let forwarded = text.matches("HTTP/1.1 102 Processing\r\n\r\n").count();
    assert!((100..=4096 / 27).contains(&forwarded), "{forwarded} forwarded");
    assert!(text.contains("\r\n\r\nHTTP/1.1 502 "), "{}", &text[text.len().saturating_sub(300)..]);
    let line = p.wait_for("1xx heads over max_head_bytes (4096) in all");
    assert!(line.contains("\"GET /\" -> app1") && line.contains(" 502 "), "{line}");
}

/// Each backend's 1xx heads count on their own: an HTTP/1.0 client (which never sees a 1xx, so
/// its GET may go again) whose first backend sent a 3 KiB `103` and closed gets the second
/// backend's answer, though the two `103`s together pass `max_head_bytes`.
#[test]
fn the_1xx_limit_counts_each_backends_heads_not_those_of_a_backend_tried_before() {
    let connections = Arc::new(AtomicUsize::new(0));
    let hints = || {
        let connections = connections.clone();
        backend(move |mut s| {
            read_head(&mut s);
            let hint = format!("HTTP/1.1 103 Early Hints\r\nLink: <{}>\r\n\r\n", "a".repeat(3000));
            let _ = s.write_all(hint.as_bytes());
            // The first connection of all closes after its hint; any later one answers.
            if connections.fetch_add(1, Ordering::SeqCst) > 0 {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        })
    };
    let (_p, proxy) = http_proxy(&[hints(), hints()], "round-robin", "", "max_head_bytes = 4096");
    let text = round_trip(proxy, b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nok"), "{text}");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "tried twice");
}
