//! Property tests of body framing: chunked bodies decode across any read boundaries, re-chunking round-trips, and arbitrary input never panics.

use super::*;
use proptest::prelude::*;

/// Hands out its bytes at most `step` at a time, like a slow socket.
struct Trickle<'a>(&'a [u8], usize);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.len().min(buf.len()).min(self.1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at == body.len() {
            break;
        }
        let end = (at + size).min(body.len());
        raw.extend_from_slice(format!("{:x};ext=1\r\n", end - at).as_bytes());
        raw.extend_from_slice(&body[at..end]);
        raw.extend_from_slice(b"\r\n");
        at = end;
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\nNEXT");
    raw
}

proptest! {
    #[test]
    fn chunked_bodies_decode_across_any_read_boundaries(
        body in proptest::collection::vec(any::<u8>(), 0..20_000),
        sizes in proptest::collection::vec(1usize..9000, 1..8),
        step in 1usize..5000,
    ) {
        let raw = chunked(&body, &sizes);
        let mut wire = Wire::new(Trickle(&raw, step));
        let mut out = Vec::new();
        prop_assert_eq!(wire.copy_body(BodyKind::Chunked, &mut out).expect("decodes"), body.len() as u64);
        prop_assert_eq!(&out, &body);
        while wire.fill(MAX_HEAD).expect("read") > 0 {}
        prop_assert_eq!(wire.buffered(), b"NEXT");
    }

    #[test]
    fn rechunking_round_trips(body in proptest::collection::vec(any::<u8>(), 0..20_000), step in 1usize..3000) {
        let mut wire = Wire::new(Trickle(&body, step));
        let mut encoded = Vec::new();
        wire.forward_body(BodyKind::Length(body.len() as u64), &mut encoded, true, None).expect("encode");
        let mut decoded = Vec::new();
        Wire::new(&encoded[..]).copy_body(BodyKind::Chunked, &mut decoded).expect("decode");
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn arbitrary_chunked_input_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..4000)) {
        let mut wire = Wire::new(&raw[..]);
        let _ = wire.copy_body(BodyKind::Chunked, &mut io::sink());
    }
}
