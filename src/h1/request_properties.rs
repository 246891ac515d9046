//! Property tests of request parsing: arbitrary bytes never panic, and mutated valid requests are accepted or rejected cleanly.

use super::*;
use proptest::prelude::*;

fn fwd() -> Forwarding<'static> {
    Forwarding {
        client: "127.0.0.1",
        local_host: &|| "p:1".to_string(),
        proto: "http",
        hash_header: None,
        underscores: false,
        route: None,
        keep_forwarded: false,
        agents: false,
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut out = Vec::new();
        if let Ok(Some(head)) = parse(&raw, 65536, &fwd(), &mut out) {
            prop_assert!(head.len <= raw.len());
            // Whatever is accepted is forwarded as one unambiguous, parseable head.
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
            let mut req = httparse::Request::new(&mut headers);
            prop_assert!(matches!(req.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
        }
    }

    #[test]
    fn mutated_valid_requests_are_accepted_or_rejected_cleanly(
        pos in 0usize..120,
        byte in any::<u8>(),
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        path in "/[a-z0-9/._?=&-]{0,40}",
    ) {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: example\r\nContent-Length: 4\r\nX-A: b\r\n\r\nbody"
        ).into_bytes();
        let valid = raw.clone();
        let mut out = Vec::new();
        let head = parse(&valid, 65536, &fwd(), &mut out).expect("valid").expect("complete");
        prop_assert_eq!(head.method.as_str(), method);
        prop_assert_eq!(head.target.as_str(), path.as_str());
        prop_assert_eq!(head.body, BodyKind::Length(4));
        if pos < raw.len() {
            raw[pos] = byte;
        }
        out.clear();
        match parse(&raw, 65536, &fwd(), &mut out) {
            Ok(Some(h)) => {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
                let mut req = httparse::Request::new(&mut headers);
                prop_assert!(matches!(req.parse(&out), Ok(httparse::Status::Complete(_))));
                prop_assert!(h.len <= raw.len());
            }
            Ok(None) => {}
            Err(r) => prop_assert!([400, 405, 413, 414, 417, 431, 505].contains(&r.status)),
        }
    }
}
