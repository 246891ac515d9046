//! Micro-benchmark of the balancer's choose-and-count step under contention: 1, 2 and 8 threads
//! picking (and releasing) backends from one shared balancer. Plain harness, no dependencies:
//! `cargo bench --bench balancer`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lbproxy::backend::Backend;
use lbproxy::balancer::{Balancer, Tried};
use lbproxy::config::{Algorithm, RawConfig};

const PICKS_PER_THREAD: usize = 400_000;

fn balancer(algorithm: Algorithm) -> Arc<Balancer> {
    let raw = RawConfig::parse(&b"[backends]\na = 127.0.0.1:1\n"[..], "bench").expect("parse");
    let health = raw.validate().expect("valid").health;
    let members = (0..10)
        .map(|i| {
            let addr = ([127, 0, 0, 1], 9000 + i as u16).into();
            Arc::new(Backend::new(format!("b{i}"), format!("b{i}"), addr, 1 + i % 3, 0))
        })
        .collect();
    Arc::new(Balancer::new(members, algorithm, health))
}

fn run(algorithm: Algorithm, threads: usize) -> Duration {
    let b = balancer(algorithm);
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (b, start) = (b.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let tried = Tried::default();
                for i in 0..PICKS_PER_THREAD {
                    let key = (t * PICKS_PER_THREAD + i) as u64;
                    let pick = b.pick(key, &tried, Duration::ZERO).expect("a backend");
                    std::hint::black_box(&pick);
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for h in handles {
        h.join().expect("join");
    }
    began.elapsed()
}

fn main() {
    // Picks log their reason only at info level; no logger is installed here, as in production
    // at warn level.
    println!("{:<18} {:>8} {:>14} {:>16}", "algorithm", "threads", "ns per pick", "picks/s total");
    for algorithm in
        [Algorithm::LeastConnections, Algorithm::RoundRobin, Algorithm::RandomTwo, Algorithm::SourceHash]
    {
        for threads in [1, 2, 8] {
            let took = run(algorithm, threads);
            let picks = (threads * PICKS_PER_THREAD) as f64;
            println!(
                "{:<18} {:>8} {:>14.1} {:>16.0}",
                algorithm.name(),
                threads,
                took.as_nanos() as f64 / picks * threads as f64,
                picks / took.as_secs_f64()
            );
        }
    }
}
