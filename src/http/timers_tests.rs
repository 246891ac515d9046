//! Unit tests of the connection's waits on a fake clock: every branch of `before` and `after`.
use super::*;
use crate::conn::accept::{FIRST_BYTE, FIRST_BYTE_PRESSED};

const IDLE: Duration = Duration::from_secs(60);
const HEADER: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits { idle: Some(IDLE), header: Some(HEADER) }
}

/// Between requests on a plain connection with a parker.
fn idle() -> Now {
    Now { parker: true, between_requests: true, ..Now::default() }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_keep_alive_client_waits_park_after_then_parks_and_at_once_when_others_wait() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    assert_eq!(t.before(&idle(), t0), Before::Read(Some(PARK_AFTER)));
    assert_eq!(t.after(&idle(), Filled::TimedOut, t0 + PARK_AFTER), After::Park(Wait::Idle));
    // Back from the parker, it serves the request that woke it before it may park at once.
    let pressed = Now { pressed: true, ..idle() };
    assert_eq!(t.before(&pressed, t0), Before::Read(Some(PARK_AFTER)));
    t.taken = 1;
    assert_eq!(t.before(&pressed, t0), Before::Park(Wait::Idle));
    // Never with plaintext rustls holds, which the parker's epoll cannot see.
    let held = Now { holds_plaintext: true, ..pressed };
    assert_eq!(t.before(&held, t0), Before::Read(Some(PARK_AFTER)));
}

#[test]
fn a_requeued_client_reads_without_waiting_then_parks_or_serves() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    t.requeued = true;
    // Its turn came before its request: it takes what is there and parks for real.
    assert_eq!(t.before(&idle(), t0 + ms(5)), Before::Read(None));
    assert_eq!(t.after(&idle(), Filled::Empty, t0 + ms(5)), After::Park(Wait::Idle));
    // Its request came: served, after which it waits as any keep-alive client.
    assert_eq!(t.after(&idle(), Filled::Bytes, t0 + ms(5)), After::Parse);
    t.served += 1;
    t.since = t0 + ms(6);
    assert_eq!(t.before(&idle(), t0 + ms(6)), Before::Read(Some(PARK_AFTER)));
    // Without a parker (stopping) it is never read without waiting.
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    t.requeued = true;
    let stopping = Now { stopping: true, ..idle() };
    assert!(matches!(t.before(&stopping, t0), Before::Read(Some(_))));
}

#[test]
fn empty_lines_between_requests_start_no_head_and_the_client_idles_on() {
    // RFC 9112 2.2: an empty line before a request is ignored; it is no head begun, so no
    // header_ms and no 408, and idle_ms runs on from the last response.
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    assert_eq!(t.after(&idle(), Filled::EmptyLines, t0 + ms(30)), After::Park(Wait::Idle));
    assert_eq!(t.since, t0);
    // Without parking (at a stop, or with plaintext rustls holds) the worker reads on.
    let stopping = Now { stopping: true, ..idle() };
    assert_eq!(t.after(&stopping, Filled::EmptyLines, t0 + ms(30)), After::ReadOn);
    assert_eq!(t.before(&stopping, t0 + SHUTDOWN_GRACE), Before::Close);
    // A new connection's empty lines are read past too, its header clock unchanged.
    let mut fresh = IdleTimers::new(limits(), t0, 0, false);
    assert_eq!(fresh.after(&idle(), Filled::EmptyLines, t0 + ms(1)), After::ReadOn);
    assert_eq!(fresh.before(&idle(), t0 + HEADER), Before::TimedOut);
}

#[test]
fn a_request_starts_the_head_clock_and_the_rest_of_a_head_is_read_without_waiting() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    assert_eq!(t.after(&idle(), Filled::Bytes, t0 + ms(30)), After::Parse);
    assert_eq!(t.since, t0 + ms(30));
    let mid_head = Now { between_requests: false, ..idle() };
    assert_eq!(t.before(&mid_head, t0 + ms(40)), Before::Read(None));
    assert_eq!(t.after(&mid_head, Filled::Empty, t0 + ms(40)), After::Park(Wait::Head));
    // header_ms from the head's start, across parks.
    assert_eq!(t.before(&mid_head, t0 + ms(30) + HEADER), Before::TimedOut);
}

#[test]
fn a_new_connection_gets_first_byte_then_parks_and_times_out_at_header_ms() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 0, false);
    assert_eq!(t.before(&idle(), t0), Before::Read(Some(FIRST_BYTE)));
    assert_eq!(t.after(&idle(), Filled::TimedOut, t0 + FIRST_BYTE), After::Park(Wait::Head));
    assert_eq!(t.after(&idle(), Filled::TimedOut, t0 + HEADER), After::TimedOut);
    // Greeted (back from the parker), it reads without waiting.
    t.greeted = true;
    assert_eq!(t.before(&idle(), t0 + ms(500)), Before::Read(None));
}

#[test]
fn a_new_connection_waits_less_for_its_first_byte_while_connections_wait_for_a_worker() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 0, false);
    let pressed = Now { pressed: true, ..idle() };
    assert_eq!(t.before(&pressed, t0), Before::Read(Some(FIRST_BYTE_PRESSED)));
    assert_eq!(t.after(&pressed, Filled::TimedOut, t0 + FIRST_BYTE_PRESSED), After::Park(Wait::Head));
}

#[test]
fn without_a_parker_an_idle_client_trims_then_waits_out_idle_ms() {
    let t0 = Instant::now();
    let plain = Now { parker: false, ..idle() };
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    assert_eq!(t.before(&plain, t0), Before::Read(Some(TRIM_AFTER)));
    assert_eq!(t.after(&plain, Filled::TimedOut, t0 + TRIM_AFTER), After::Trim);
    assert_eq!(t.before(&plain, t0 + TRIM_AFTER), Before::Read(Some(IDLE - TRIM_AFTER)));
    assert_eq!(t.after(&plain, Filled::TimedOut, t0 + IDLE), After::Close);
    assert_eq!(t.before(&plain, t0 + IDLE), Before::Close);
    // A head without a parker is waited for here, up to header_ms.
    let head = Now { between_requests: false, ..plain };
    assert_eq!(t.before(&head, t0), Before::Read(Some(HEADER)));
    assert_eq!(t.after(&head, Filled::TimedOut, t0 + HEADER), After::TimedOut);
}

#[test]
fn at_a_stop_nothing_parks_and_an_idle_client_closes_after_trim_after() {
    let t0 = Instant::now();
    let stopping = Now { stopping: true, pressed: true, ..idle() };
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    t.taken = 1;
    assert_eq!(t.before(&stopping, t0), Before::Read(Some(PARK_AFTER)));
    assert_eq!(t.after(&stopping, Filled::TimedOut, t0 + PARK_AFTER), After::Trim);
    assert_eq!(t.before(&stopping, t0 + SHUTDOWN_GRACE), Before::Close);
    let head = Now { between_requests: false, ..stopping };
    assert_eq!(t.before(&head, t0), Before::Read(Some(HEADER)));
}

#[test]
fn a_closed_broken_or_oversized_read_ends_the_wait() {
    let t0 = Instant::now();
    let mut t = IdleTimers::new(limits(), t0, 1, true);
    assert_eq!(t.after(&idle(), Filled::Eof, t0), After::Close);
    assert_eq!(t.after(&idle(), Filled::Failed, t0), After::Close);
    assert_eq!(t.after(&idle(), Filled::TooLarge, t0), After::TooLarge);
    let would_block = io::Error::from(io::ErrorKind::WouldBlock);
    assert_eq!(Filled::of(&Err(would_block), false), Filled::Empty);
    let would_block = io::Error::from(io::ErrorKind::WouldBlock);
    assert_eq!(Filled::of(&Err(would_block), true), Filled::TimedOut);
    assert_eq!(Filled::of(&Ok(0), true), Filled::Eof);
    // Only a head that outgrew its buffer is too large: a TLS record rustls refused is a
    // failed read, not a 414 or 431.
    let tls = io::Error::new(io::ErrorKind::InvalidData, "bad record mac");
    assert_eq!(Filled::of(&Err(tls), true), Filled::Failed);
    let source = vec![b'a'; 1 << 20];
    let mut wire = crate::h1::Wire::new(&source[..]);
    let full = (0..1000).map(|_| wire.fill(16)).find(Result::is_err).expect("the limit is reached");
    assert_eq!(Filled::of(&full, true), Filled::TooLarge);
}

#[test]
fn at_a_stop_a_new_connection_that_sent_nothing_gets_shutdown_grace_then_closes_without_a_408() {
    let t0 = Instant::now();
    let stopping = Now { stopping: true, ..idle() };
    for greeted in [false, true] {
        let mut t = IdleTimers::new(limits(), t0, 0, greeted);
        assert_eq!(t.before(&stopping, t0), Before::Read(Some(SHUTDOWN_GRACE)), "greeted {greeted}");
        assert_eq!(t.after(&stopping, Filled::TimedOut, t0 + SHUTDOWN_GRACE), After::Close);
        assert_eq!(t.after(&stopping, Filled::Bytes, t0 + ms(20)), After::Parse);
    }
    // Half a head at a stop still has its header_ms, and a 408 at its end.
    let mut t = IdleTimers::new(limits(), t0, 0, true);
    let head = Now { between_requests: false, ..stopping };
    assert_eq!(t.before(&head, t0), Before::Read(Some(HEADER)));
    assert_eq!(t.after(&head, Filled::TimedOut, t0 + HEADER), After::TimedOut);
}
