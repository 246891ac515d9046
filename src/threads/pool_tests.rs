//! Tests of the worker pools: jobs, panics, gauges, and the gate's hand-overs and sizing.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn runs_every_job_survives_panics_and_joins_when_closed() {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let pool = WorkerPool::start("test", 3, 4, move |job: usize, _: &mut ()| {
        if job.is_multiple_of(10) {
            panic!("job {job} fails on purpose");
        }
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .expect("start");
    let tx = pool.sender();
    for job in 1..=100 {
        tx.send(job).expect("send");
    }
    drop(tx);
    pool.join();
    assert_eq!(done.load(Ordering::SeqCst), 90);
}

#[test]
fn a_thread_that_cannot_start_is_an_error_not_a_panic() {
    // A 64 TiB stack cannot be mapped, so threadpool's first spawn fails (and it panics).
    let started = WorkerPool::start_with("doomed", (6, None), 4, |_: (), _: &mut ()| {}, 1usize << 46);
    let err = started.err().expect("no thread can start");
    assert!(err.to_string().starts_with("cannot start 6 doomed threads: "), "{err}");
}

#[test]
fn gauges_count_busy_threads_and_caught_panics() {
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let pool = WorkerPool::start("gauged", 2, 4, move |job: u8, _: &mut ()| {
        if job == 0 {
            panic!("job 0 fails on purpose");
        }
        let _ = hold_rx.recv();
    })
    .expect("start");
    let hold_tx = held_after_the_pool(hold_tx);
    let gauges = pool.gauges();
    assert_eq!(gauges.size(), 2);
    let tx = pool.sender();
    tx.send(0).expect("send");
    tx.send(1).expect("send");
    // Job 1 holds its thread until released; job 0's panic is counted. The threads start on
    // their own time: on a busy machine the second may not run its loop yet.
    until(|| gauges.busy() == 1 && gauges.panics() == 1 && gauges.running() == 2);
    assert_eq!((gauges.busy(), gauges.panics(), gauges.running()), (1, 1, 2));
    hold_tx.send(()).expect("release");
    drop(tx);
    pool.join();
}

/// The sender that releases held jobs, bound again after the pool so that it drops first: a
/// failing assert then ends the held jobs, and the pool's join (as it drops) can finish, so
/// the test fails instead of hanging.
fn held_after_the_pool(hold: crossbeam_channel::Sender<()>) -> crossbeam_channel::Sender<()> {
    hold
}

/// Polls `done` until it holds, for at most ten seconds.
fn until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    done()
}

#[test]
fn a_taker_stuck_in_a_wait_hands_its_place_to_the_reserve_while_jobs_queue() {
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let aside = Arc::new(AtomicUsize::new(0));
    let stepped = aside.clone();
    let pool = WorkerPool::start_gated(
        "gated",
        4,
        (Sizing { few: 1, many: 1 }, Box::new(|| 0)),
        8,
        move |_: u8, _: &mut ()| {
            let _ = crate::threads::gate::waiting(|| hold_rx.recv());
            if crate::threads::gate::stepped_aside() {
                stepped.fetch_add(1, Ordering::SeqCst);
            }
        },
    )
    .expect("start");
    let hold_tx = held_after_the_pool(hold_tx);
    let gauges = pool.gauges();
    assert_eq!((gauges.size(), gauges.active()), (4, 1));
    let tx = pool.sender();
    for job in 0..4 {
        tx.send(job).expect("send");
    }
    // One taker at a time, but each waits on its peer while jobs queue: all four end up
    // waiting, three of them let in by hand-overs.
    assert!(until(|| gauges.busy() == 4), "busy {}", gauges.busy());
    assert_eq!(gauges.handoffs(), 3);
    for _ in 0..4 {
        hold_tx.send(()).expect("release");
    }
    drop(tx);
    pool.join();
    assert_eq!(aside.load(Ordering::SeqCst), 3, "the handed-on workers knew it");
}

#[test]
fn a_busy_taker_keeps_its_place_and_the_reserve_sleeps() {
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now, peak) = (running.clone(), most.clone());
    let done = Arc::new(AtomicUsize::new(0));
    let finished = done.clone();
    let pool = WorkerPool::start_gated(
        "busy",
        4,
        (Sizing { few: 1, many: 1 }, Box::new(|| 0)),
        16,
        move |_: u8, _: &mut ()| {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            // Working, not waiting on a peer, for several ticks.
            let start = std::time::Instant::now();
            while start.elapsed() < crate::threads::gate::TICK * 5 {
                std::hint::spin_loop();
            }
            now.fetch_sub(1, Ordering::SeqCst);
            finished.fetch_add(1, Ordering::SeqCst);
        },
    )
    .expect("start");
    let gauges = pool.gauges();
    let tx = pool.sender();
    for job in 0..8 {
        tx.send(job).expect("send");
    }
    assert!(until(|| gauges.reserve() == 3), "reserve {}", gauges.reserve());
    assert!(until(|| done.load(Ordering::SeqCst) == 8), "done {}", done.load(Ordering::SeqCst));
    drop(tx);
    // Joining lets the reserve in to see the queue closed.
    pool.join();
    assert_eq!((most.load(Ordering::SeqCst), gauges.handoffs()), (1, 0));
}

#[test]
fn many_take_while_few_connections_are_open_and_few_once_they_outnumber_them() {
    let open = Arc::new(AtomicUsize::new(0));
    let demand = open.clone();
    let sizing = Sizing { few: 1, many: 3 };
    let pool = WorkerPool::start_gated(
        "sized",
        4,
        (sizing, Box::new(move || demand.load(Ordering::SeqCst))),
        8,
        |_: u8, _: &mut ()| {},
    )
    .expect("start");
    let gauges = pool.gauges();
    assert!(until(|| gauges.reserve() == 1), "reserve {}", gauges.reserve());
    assert_eq!(gauges.active(), 3);
    // More connections than `many`: two takers retire at their next job.
    open.store(10, Ordering::SeqCst);
    assert!(until(|| gauges.active() == 1), "active {}", gauges.active());
    let tx = pool.sender();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gauges.reserve() != 3 && std::time::Instant::now() < deadline {
        let _ = tx.try_send(0);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(gauges.reserve(), 3);
    // Few again: the reserve is let back in.
    open.store(2, Ordering::SeqCst);
    assert!(until(|| gauges.reserve() == 1), "reserve {}", gauges.reserve());
    drop(tx);
    pool.join();
}

#[test]
fn queued_jobs_are_taken_when_the_limit_falls_while_the_takers_are_stuck() {
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let (open, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (demand, finished) = (open.clone(), done.clone());
    let sizing = (Sizing { few: 1, many: 2 }, Box::new(move || demand.load(Ordering::SeqCst)) as Demand);
    let pool = WorkerPool::start_gated("fall", 4, sizing, 8, move |job: u8, _: &mut ()| {
        if job == 0 {
            let _ = crate::threads::gate::waiting(|| hold_rx.recv());
        } else {
            finished.fetch_add(1, Ordering::SeqCst);
        }
    })
    .expect("start");
    let hold_tx = held_after_the_pool(hold_tx);
    let gauges = pool.gauges();
    let tx = pool.sender();
    // Both takers stuck on a peer, then the limit falls to one, then quick jobs queue.
    tx.send(0).expect("send");
    tx.send(0).expect("send");
    assert!(until(|| gauges.busy() == 2), "busy {}", gauges.busy());
    open.store(10, Ordering::SeqCst);
    assert!(until(|| gauges.active() == 1), "active {}", gauges.active());
    for _ in 0..3 {
        tx.send(1).expect("send");
    }
    assert!(until(|| done.load(Ordering::SeqCst) == 3), "done {}", done.load(Ordering::SeqCst));
    for _ in 0..2 {
        hold_tx.send(()).expect("release");
    }
    drop(tx);
    pool.join();
}

/// Scratch state that each thread can make only once (when its worker starts): every later
/// renewal panics.
struct Brittle;

thread_local! {
    static BRITTLE_MADE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Default for Brittle {
    fn default() -> Brittle {
        if BRITTLE_MADE.replace(true) {
            panic!("scratch state fails on purpose");
        }
        Brittle
    }
}

#[test]
fn a_panic_while_idle_is_counted_and_every_worker_keeps_taking_jobs() {
    let (hold_tx, hold_rx) = crossbeam_channel::bounded::<()>(0);
    let done = Arc::new(AtomicUsize::new(0));
    let ran = done.clone();
    let pool = WorkerPool::start_gated(
        "brittle",
        2,
        (Sizing { few: 1, many: 1 }, Box::new(|| 0)),
        4,
        move |_: u8, _: &mut Brittle| {
            let _ = crate::threads::gate::waiting(|| hold_rx.recv());
            ran.fetch_add(1, Ordering::SeqCst);
        },
    )
    .expect("start");
    let hold_tx = held_after_the_pool(hold_tx);
    let gauges = pool.gauges();
    // Idle past TRIM_AFTER, the taker (waiting for a job) and the reserve worker (waiting for
    // a place) both renew their scratch state, and both renewals panic.
    assert!(until(|| gauges.panics() >= 2), "panics {}", gauges.panics());
    let tx = pool.sender();
    tx.send(0).expect("send");
    tx.send(1).expect("send");
    // Both loops survived: the taker holds job 0 in a wait, the reserve worker is let in for
    // job 1.
    assert!(until(|| gauges.busy() == 2), "busy {}", gauges.busy());
    for _ in 0..2 {
        hold_tx.send(()).expect("release");
    }
    drop(tx);
    pool.join();
    assert_eq!(done.load(Ordering::SeqCst), 2);
}
