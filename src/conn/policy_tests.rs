//! Unit tests of the per-client policy: allow and deny, the real address behind trusted
//! proxies, the rate's burst, connection slots, and the bounded store.

use super::*;

fn settings(text: &str) -> LimitSettings {
    let text = format!("[backends]\na = 127.0.0.1:1\n[limits]\n{text}");
    crate::config::RawConfig::parse(text.as_bytes(), "t").expect("parse").validate().expect("valid").limits
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn deny_comes_first_then_allow_and_mapped_ipv4_counts_as_ipv4() {
    let p = Policy::new(&settings("allow = 10.0.0.0/8, ::1\ndeny = 10.1.2.3\n"));
    assert_eq!(p.admits(ip("10.9.9.9")), Ok(()));
    assert_eq!(p.admits(ip("::ffff:10.9.9.9")), Ok(()));
    assert_eq!(p.admits(ip("::1")), Ok(()));
    assert_eq!(p.admits(ip("10.1.2.3")), Err(Refused::Denied));
    assert_eq!(p.admits(ip("192.0.2.1")), Err(Refused::Denied));
}

/// Rules written in the mapped form a `[::]` listener's logs show (`::ffff:10.1.2.3`) match
/// the client as its IPv4 form, as nginx matches a mapped client against IPv4 rules; they
/// were silently dead before.
#[test]
fn mapped_ipv4_rules_match_as_ipv4() {
    let p = Policy::new(&settings("allow = ::ffff:10.0.0.0/104, ::1\ndeny = ::ffff:10.1.2.3\n"));
    assert_eq!(p.admits(ip("10.9.9.9")), Ok(()));
    assert_eq!(p.admits(ip("::ffff:10.9.9.9")), Ok(()));
    assert_eq!(p.admits(ip("10.1.2.3")), Err(Refused::Denied));
    assert_eq!(p.admits(ip("::ffff:10.1.2.3")), Err(Refused::Denied));
    assert_eq!(p.admits(ip("192.0.2.1")), Err(Refused::Denied));
    let all = Policy::new(&settings("deny = ::ffff:0:0/96\n"));
    assert_eq!(all.admits(ip("192.0.2.1")), Err(Refused::Denied));
    assert_eq!(all.admits(ip("::1")), Ok(()));
    let behind = Policy::new(&settings("trusted_proxies = ::ffff:127.0.0.1\n"));
    assert!(behind.trusts(ip("127.0.0.1")) && behind.trusts(ip("::ffff:127.0.0.1")));
}

#[test]
fn a_burst_of_30_at_10_per_second_with_burst_5_lets_6_through_per_client() {
    let p = Policy::new(&settings("rate = 10/s\nburst = 5\n"));
    let passed = (0..30).filter(|_| p.rate(ip("127.0.0.2")).is_ok()).count();
    assert_eq!(passed, 6);
    match p.rate(ip("127.0.0.2")) {
        Err(Refused::Rate(wait)) => assert!(wait <= Duration::from_millis(100), "{wait:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.rate(ip("127.0.0.3")), Ok(()), "another client is unaffected");
}

#[test]
fn the_rate_store_stays_within_max_clients() {
    let p = Policy::new(&settings("rate = 1/m\nmax_clients = 100\n"));
    for i in 0..10_000u32 {
        let _ = p.rate(IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i)));
        assert!(p.tracked() <= 100, "{} tracked after {i}", p.tracked());
    }
}

#[test]
fn connection_slots_are_counted_per_client_and_given_back_on_drop() {
    let p = Policy::new(&settings("max_conns_per_client = 2\n"));
    let a = p.open(ip("127.0.0.2")).expect("first");
    let _b = p.open(ip("127.0.0.2")).expect("second");
    assert_eq!(p.open(ip("127.0.0.2")).err(), Some(Refused::Connections));
    assert!(p.open(ip("127.0.0.3")).expect("other client").is_some());
    drop(a);
    assert!(p.open(ip("127.0.0.2")).is_ok());
}

#[test]
fn the_real_client_is_the_right_most_untrusted_forwarded_address() {
    let p = Policy::new(&settings("trusted_proxies = 127.0.0.2/32, 10.0.0.0/8\n"));
    assert!(p.trusts(ip("127.0.0.2")) && !p.trusts(ip("127.0.0.3")));
    assert_eq!(p.real_client(ip("127.0.0.2"), b"203.0.113.9, 198.51.100.7, 10.1.1.1"), ip("198.51.100.7"));
    assert_eq!(p.real_client(ip("127.0.0.2"), b"10.1.1.1"), ip("10.1.1.1"), "all trusted: the left-most");
    assert_eq!(p.real_client(ip("127.0.0.2"), b"garbage, 10.1.1.1"), ip("10.1.1.1"));
    assert_eq!(p.real_client(ip("127.0.0.2"), b"198.51.100.7:4711"), ip("198.51.100.7"));
    assert_eq!(p.real_client(ip("127.0.0.2"), b""), ip("127.0.0.2"));
}

#[test]
fn a_rejected_address_is_noted_once_per_ten_seconds_with_the_count() {
    let p = Policy::new(&settings("rate = 1/s\n"));
    assert_eq!(p.note(ip("127.0.0.2")), Some(0));
    assert_eq!(p.note(ip("127.0.0.2")), None);
    assert_eq!(p.note(ip("127.0.0.3")), Some(0));
}
