//! Unit tests of the backend: the one passive-health rule, slots, idle connections, tunnels.

use super::*;
use crate::config::testing::health;
use crate::config::HealthSettings;
use crate::error::{Cause, Failure, Party, Phase};
use std::time::Duration;

#[test]
fn only_the_backends_own_failures_count_and_only_before_a_relay_can_mark_it_down() {
    let s = HealthSettings { max_fails: 2, fail_window: Duration::from_secs(60), ..health() };
    let b = Backend::new("a".into(), "a".into(), ([127, 0, 0, 1], 1).into(), 1, 0);
    let refused = || Cause::Io(std::io::ErrorKind::ConnectionRefused.into());
    let failures = || b.failures();
    // Ours (a descriptor shortage), the client's, and finding no backend count for nothing.
    assert!(!b.record_failure(&Failure::at("a", Party::Local, Phase::Connect, refused()), &s, false));
    assert!(!b.record_failure(&Failure::at("a", Party::Client, Phase::Request, refused()), &s, false));
    assert!(!b.record_failure(&Failure::new(Party::Backend, Phase::Connect, refused()), &s, false));
    assert_eq!(failures(), 0);
    // A TCP relay's idle timeout is nobody's failure; its errors count, but never mark down.
    assert!(!b.record_failure(&Failure::at("a", Party::Backend, Phase::Relay, Cause::Timeout), &s, false));
    for _ in 0..3 {
        assert!(b.record_failure(&Failure::at("a", Party::Backend, Phase::Relay, refused()), &s, false));
    }
    // Nor does a response body cut once it flows.
    assert!(b.record_failure(&Failure::at("a", Party::Backend, Phase::Body, refused()), &s, false));
    assert_eq!(failures(), 4);
    assert!(b.health().is_up(), "relay and body errors never mark a backend down");
    // Connecting, or an exchange: `max_fails` of them within the window mark it down.
    assert!(b.record_failure(&Failure::at("a", Party::Backend, Phase::Connect, refused()), &s, false));
    assert!(b.health().is_up());
    assert!(b.record_failure(&Failure::at("a", Party::Backend, Phase::Head, Cause::Timeout), &s, false));
    assert!(!b.health().is_up(), "down after max_fails");
    assert_eq!(failures(), 6);
    // A 5xx counts only when `observe_5xx` says so.
    let c = Backend::new("c".into(), "c".into(), ([127, 0, 0, 1], 2).into(), 1, 0);
    c.record_status(503, &HealthSettings { observe_5xx: false, ..s.clone() }, false);
    c.record_status(200, &HealthSettings { observe_5xx: true, ..s.clone() }, false);
    assert_eq!(c.failures(), 0);
    c.record_status(502, &HealthSettings { observe_5xx: true, ..s }, false);
    assert_eq!(c.failures(), 1);
}

#[test]
fn slow_start_ramps_the_weight_after_recovery_only() {
    let s = HealthSettings { rise: 1, fall: 1, slowstart: Duration::from_secs(100), ..health() };
    let b = crate::backend::Backend::new("a".into(), "a".into(), ([127, 0, 0, 1], 1).into(), 2, 0);
    assert_eq!(b.effective_weight(now_ms()), 2000, "full weight at start");
    b.health.observe_check(Err("x".into()), &s);
    b.health.observe_check(Ok(()), &s);
    let w = b.effective_weight(now_ms());
    assert!((1..200).contains(&w), "near zero right after recovery: {w}");
    assert_eq!(b.effective_weight(now_ms() + 50_000) / 100, 10, "half way at half time");
    assert_eq!(b.effective_weight(now_ms() + 200_000), 2000);
}

#[test]
fn slots_and_tunnels_are_counted_and_a_removed_backend_pools_nothing() {
    let b = Arc::new(Backend::new("a".into(), "a".into(), ([127, 0, 0, 1], 1).into(), 1, 1));
    assert!(!b.is_full());
    b.take_slot();
    assert_eq!((b.active(), b.total(), b.is_full()), (1, 1, true));
    b.give_slot();
    assert_eq!((b.active(), b.total(), b.is_full()), (0, 1, false));
    let (one, two) = (b.open_tunnel(), b.open_tunnel());
    assert_eq!(b.tunnels(), 2);
    drop(one);
    assert_eq!(b.tunnels(), 1);
    drop(two);
    assert_eq!(b.tunnels(), 0);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    b.put_idle(TcpStream::connect(addr).expect("connect"), 4);
    assert_eq!(b.idle_count(), 1);
    b.retire();
    assert_eq!(b.idle_count(), 0, "retiring closes the idle ones");
    b.put_idle(TcpStream::connect(addr).expect("connect"), 4);
    assert_eq!(b.idle_count(), 0, "and none is kept afterwards");
}

#[test]
fn a_health_check_host_is_the_members_name_or_its_address_without_an_ipv6_zone() {
    let v6: std::net::SocketAddr = "[fe80::1%2]:8080".parse().expect("addr");
    let b = Backend::new("z".into(), "z".into(), v6, 1, 0);
    assert_eq!(b.check_host(), "[fe80::1]:8080", "a Host may not carry a zone as such");
    let b = Backend::new("a".into(), "a".into(), ([127, 0, 0, 1], 80).into(), 1, 0);
    assert_eq!(b.check_host(), "127.0.0.1:80");
    b.set_check_host("app.internal:80");
    assert_eq!(b.check_host(), "app.internal:80");
}
