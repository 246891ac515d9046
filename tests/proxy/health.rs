//! Active health checks against backends that misbehave: a check is bounded by `timeout_ms` in
//! all, as HAProxy's `timeout check`, so one backend's slowness is its own failure and never
//! delays the checks of the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A backend that answers every request one byte per 100 ms: a valid head, padded to 3 KiB.
fn dripping_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head);
                let answer =
                    format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(3000));
                // Bounded: 3 KiB at 10 bytes a second is five minutes, but the test is over
                // long before, and a write to a closed socket ends it.
                let deadline = Instant::now() + Duration::from_secs(60);
                for byte in answer.bytes() {
                    if Instant::now() > deadline || s.write_all(&[byte]).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    addr
}

#[test]
fn an_answer_dripped_a_byte_at_a_time_fails_its_check_and_delays_no_other() {
    let drip = dripping_backend();
    let (good, good_addr) = dummy("good");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 8\n[health]\ninterval_ms = 200\ntimeout_ms = 500\nfall = 2\n\
         max_fails = 0\n[backends]\ndrip = {drip}\ngood = {good_addr}\n"
    );
    let (p, _addr) = proxy_with(&config, &[]);
    let down = p.wait_for(&format!("drip {drip} DOWN"));
    assert!(down.contains("timed out"), "{down}");
    // The other member's checks go on: stopped, it goes down within a few rounds.
    good.signal("KILL");
    p.wait_for(&format!("good {good_addr} DOWN"));
}
