//! Unit tests of the balancer: counting, skipping, queueing and replacing members.

use super::*;

fn balancer(weights: &[u32], algorithm: Algorithm) -> Balancer {
    Balancer::new(testing::members(weights), algorithm, crate::config::testing::health())
}

#[test]
fn pick_counts_and_the_guard_gives_back() {
    let b = balancer(&[1, 1], Algorithm::LeastConnections);
    let first = b.pick(0, &Tried::default(), Duration::ZERO).expect("pick");
    let second = b.pick(0, &Tried::default(), Duration::ZERO).expect("pick");
    assert_ne!(first.guard.backend().id(), second.guard.backend().id());
    assert_eq!(b.members()[0].active(), 1);
    drop((first, second));
    assert!(b.members().iter().all(|x| x.active() == 0));
}

#[test]
fn tried_and_down_backends_are_skipped() {
    let b = balancer(&[1, 1, 1], Algorithm::RoundRobin);
    b.members()[1].health().force_down("test");
    let mut tried = Tried::default();
    let first = b.pick(0, &tried, Duration::ZERO).expect("pick");
    tried.insert(first.guard.backend());
    let second = b.pick(0, &tried, Duration::ZERO).expect("pick");
    tried.insert(second.guard.backend());
    assert_eq!([first.guard.backend().name(), second.guard.backend().name()], ["b0", "b2"]);
    assert_eq!(b.pick(0, &tried, Duration::ZERO).err(), Some(Unavailable::NoneUp { tried: 2 }));
}

#[test]
fn full_backends_queue_until_a_slot_frees_or_the_timeout() {
    let members = testing::members(&[1]);
    members[0].set_limits(1, 1);
    let b = Arc::new(Balancer::new(members, Algorithm::LeastConnections, crate::config::testing::health()));
    let held = b.pick(0, &Tried::default(), Duration::ZERO).expect("first slot");
    let started = Instant::now();
    assert_eq!(b.pick(0, &Tried::default(), Duration::from_millis(100)).err(), Some(Unavailable::AllFull));
    assert!(started.elapsed() >= Duration::from_millis(100));
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || b.pick(0, &Tried::default(), Duration::from_secs(20)).map(|p| p.reason))
    };
    while b.queued() == 0 {
        std::thread::yield_now();
    }
    assert_eq!(b.members()[0].queued(), 1, "the waiter is counted on the full backend");
    drop(held);
    assert!(waiter.join().expect("join").is_ok(), "the freed slot went to the waiter");
}

#[test]
fn concurrent_picks_never_lose_a_count() {
    let b = Arc::new(balancer(&[1, 2, 3], Algorithm::LeastConnections));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                let held: Vec<_> =
                    (0..600).filter_map(|_| b.pick(0, &Tried::default(), Duration::ZERO).ok()).collect();
                held.len()
            })
        })
        .collect();
    let picked: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
    assert_eq!(picked, 2400);
    assert!(b.members().iter().all(|x| x.active() == 0));
    let totals: Vec<u64> = b.members().iter().map(|x| x.total()).collect();
    assert_eq!(totals.iter().sum::<u64>(), 2400);
}

#[test]
fn replacing_members_keeps_counts_on_the_old_ones() {
    let b = balancer(&[1], Algorithm::RoundRobin);
    let held = b.pick(0, &Tried::default(), Duration::ZERO).expect("pick");
    let old = held.guard.backend().clone();
    b.replace(testing::members(&[1, 1]), Algorithm::LeastConnections);
    assert_eq!(b.algorithm(), Algorithm::LeastConnections);
    assert_eq!(old.active(), 1);
    drop(held);
    assert_eq!(old.active(), 0);
}

/// The reason for choosing `chosen` when the members hold `active` connections.
fn reason(active: &[usize], chosen: usize, allowed: &[bool]) -> String {
    let members = testing::members(&vec![1; active.len()]);
    for (m, &a) in members.iter().zip(active) {
        m.set_active(a);
    }
    let ok = |i: usize| allowed[i];
    let view = View { members: &members, allowed: &ok, now: crate::backend::now_ms(), key: Some(0) };
    explain::choice(Algorithm::LeastConnections, &view, chosen, &Tried::default())
}

#[test]
fn an_exact_tie_says_it_went_round_robin_and_a_clear_choice_lists_the_loads() {
    let all = [true; 3];
    assert_eq!(reason(&[0, 0, 0], 0, &all), "least-connections: tie at 0 → round-robin: b0");
    assert_eq!(reason(&[1, 0, 0], 1, &all), "least-connections: tie at 0 → round-robin: b1; b0=1");
    assert_eq!(
        reason(&[1, 1, 0], 2, &all),
        "least-connections: b2=0 b0=1 b1=1",
        "no tie: the loads compared"
    );
    assert_eq!(
        reason(&[0, 0, 3], 1, &[false, true, true]),
        "least-connections: b1=0 b2=3",
        "b0 was not allowed"
    );
    assert_eq!(reason(&[0], 0, &[true]), "least-connections: b0=0", "alone is no tie");
}

#[test]
fn a_runtime_weight_change_moves_the_hash_ring_too() {
    let b = balancer(&[1, 1], Algorithm::SourceHash);
    let share = |b: &Balancer| {
        let keys = (0..2000u32).map(|i| source_key(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())));
        let on_b1 = keys
            .filter(|&k| {
                b.pick(Some(k), &Tried::default(), Duration::ZERO).expect("pick").guard.backend().name()
                    == "b1"
            })
            .count();
        on_b1 as f64 / 2000.0
    };
    let before = share(&b);
    assert!((0.35..0.65).contains(&before), "even weights split evenly: {before}");
    b.members()[1].set_runtime_weight(3);
    b.rebuild();
    let after = share(&b);
    assert!((0.65..0.85).contains(&after), "weight 3 of 4 after the change: {after}");
}
