//! Tests of the PROXY protocol parser and encoder, with a proptest fuzz.

use super::*;
use proptest::prelude::*;

fn addrs(src: &str, dst: &str) -> Addresses {
    Addresses { src: src.parse().expect("src"), dst: dst.parse().expect("dst") }
}

#[test]
fn v1_tcp4_tcp6_and_unknown_parse() {
    let h = parse(b"PROXY TCP4 10.1.2.3 192.0.2.1 56324 443\r\nGET", Accept::V1)
        .expect("valid")
        .expect("complete");
    assert_eq!(h, Header { len: 41, addrs: Some(addrs("10.1.2.3:56324", "192.0.2.1:443")) });
    let h = parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", Accept::Any).expect("valid").expect("complete");
    assert_eq!(h.addrs, Some(addrs("[2001:db8::1]:1", "[::1]:2")));
    let h = parse(b"PROXY UNKNOWN\r\n", Accept::Any).expect("valid").expect("complete");
    assert_eq!(h, Header { len: 15, addrs: None });
}

#[test]
fn v2_proxy_and_local_parse() {
    let bytes = encode(Version::V2, addrs("127.0.0.2:4000", "127.0.0.1:80"));
    let h = parse(&bytes, Accept::V2).expect("valid").expect("complete");
    assert_eq!(h, Header { len: 28, addrs: Some(addrs("127.0.0.2:4000", "127.0.0.1:80")) });
    // LOCAL (0x20) with an IPv4 block: the addresses are ignored.
    let mut local = bytes.clone();
    local[12] = 0x20;
    assert_eq!(parse(&local, Accept::V2), Ok(Some(Header { len: 28, addrs: None })));
    // TLVs after the addresses are skipped with the rest of the declared length.
    let mut tlv = bytes;
    tlv[15] = 12 + 4;
    tlv.extend_from_slice(&[0x04, 0, 1, 0xaa]);
    assert_eq!(parse(&tlv, Accept::Any).expect("valid").expect("complete").len, 32);
}

#[test]
fn bad_headers_are_refused_with_a_reason() {
    for (bad, accept) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], Accept::Any),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\r\n", Accept::V2),
        (b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n", Accept::V1),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 01 2\r\n", Accept::V1),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 +1 2\r\n", Accept::V1),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 1 70000\r\n", Accept::V1),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\n", Accept::V1),
        (b"PROXY TCP4 10.1.2.3 10.0.0.1 1\r\n", Accept::V1),
        (b"PROXY UDP4 10.1.2.3 10.0.0.1 1 2\r\n", Accept::V1),
    ] {
        assert!(parse(bad, accept).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
    }
    let mut v2 = encode(Version::V2, addrs("127.0.0.2:4000", "127.0.0.1:80"));
    v2[12] = 0x31; // version 3
    assert!(parse(&v2, Accept::V2).is_err());
    v2[12] = 0x22; // unknown command
    assert!(parse(&v2, Accept::V2).is_err());
    v2[12] = 0x21;
    v2[13] = 0x12; // UDP
    assert!(parse(&v2, Accept::V2).is_err());
    v2[13] = 0x11;
    v2[15] = 8; // shorter than an IPv4 block
    assert!(parse(&v2[..24], Accept::V2).is_err());
    assert!(parse(&[b'P'; V1_MAX + 1], Accept::V1).is_err(), "too long without LF");
}

#[test]
fn local_headers_parse_as_no_address() {
    for v in [Version::V1, Version::V2] {
        let bytes = encode_local(v);
        assert_eq!(parse(&bytes, Accept::Any), Ok(Some(Header { len: bytes.len(), addrs: None })));
    }
}

#[test]
fn mixed_families_are_sent_as_ipv6() {
    let a = addrs("10.1.2.3:5", "[::1]:80");
    let v1 = String::from_utf8(encode(Version::V1, a)).expect("ascii");
    assert_eq!(v1, "PROXY TCP6 ::ffff:10.1.2.3 ::1 5 80\r\n");
    let v2 = encode(Version::V2, a);
    assert_eq!(parse(&v2, Accept::V2).expect("valid").expect("complete").len, 52);
}

fn any_addrs() -> impl Strategy<Value = Addresses> {
    let v4 = (any::<[u8; 4]>(), any::<u16>(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(s, sp, d, dp)| {
        Addresses {
            src: SocketAddr::new(Ipv4Addr::from(s).into(), sp),
            dst: SocketAddr::new(Ipv4Addr::from(d).into(), dp),
        }
    });
    let v6 = (any::<[u8; 16]>(), any::<u16>(), any::<[u8; 16]>(), any::<u16>()).prop_map(|(s, sp, d, dp)| {
        // IPv4-mapped addresses are written as IPv4, so keep them out of the v6 case.
        let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
        let fix = |a: Ipv6Addr| if a.to_ipv4_mapped().is_some() { Ipv6Addr::LOCALHOST } else { a };
        Addresses { src: SocketAddr::new(fix(s).into(), sp), dst: SocketAddr::new(fix(d).into(), dp) }
    });
    prop_oneof![v4, v6]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever arrives, the parser answers (never panics) and never claims more bytes than it
    /// was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), mode in 0..3u8) {
        let accept = [Accept::V1, Accept::V2, Accept::Any][mode as usize];
        if let Ok(Some(h)) = parse(&bytes, accept) {
            prop_assert!(h.len <= bytes.len());
        }
    }

    /// Headers we write parse back to the same addresses; every strict prefix asks for more;
    /// a byte flipped or cut never panics and never yields a longer header.
    #[test]
    fn encoded_headers_round_trip_and_prefixes_wait(a in any_addrs(), v2 in any::<bool>(), flip in any::<(usize, u8)>()) {
        let version = if v2 { Version::V2 } else { Version::V1 };
        let bytes = encode(version, a);
        let h = parse(&bytes, Accept::Any).expect("valid").expect("complete");
        prop_assert_eq!(h, Header { len: bytes.len(), addrs: Some(a) });
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..cut], Accept::Any), Ok(None), "prefix of {}", cut);
        }
        let mut mutated = bytes.clone();
        let at = flip.0 % mutated.len();
        mutated[at] ^= flip.1.max(1);
        if let Ok(Some(h)) = parse(&mutated, Accept::Any) {
            prop_assert!(h.len <= mutated.len());
        }
    }
}
