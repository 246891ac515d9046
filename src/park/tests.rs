//! Unit tests of the parker: hand-back when readable, idle expiry, the stop and its grace.
use super::*;
use crate::conn::Registry;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// A registered connection and the client's end of it.
fn pair(registry: &Arc<Registry>, id: u64) -> (Conn, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server, peer) = l.accept().expect("accept");
    (Conn::register(registry, id, server, peer), client)
}

#[test]
fn a_parked_connection_comes_back_when_its_next_request_arrives() {
    let registry = Registry::new();
    let parker = Parker::new(Duration::from_secs(60)).expect("parker");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let running = parker.spawn(tx, rx.clone()).expect("spawn");
    let (conn, mut client) = pair(&registry, 1);
    let since = Instant::now();
    assert!(parker.park(conn, since).is_none());
    assert_eq!(parker.len(), 1);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing arrived: it stays parked");
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let mut back = rx.recv_timeout(Duration::from_secs(5)).expect("handed back to the workers");
    assert_eq!(back.id, 1);
    assert_eq!(back.parked_since, Some(since));
    assert!(parker.is_empty());
    let mut buf = [0u8; 64];
    let n = (&mut &back.stream).read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n", "the request is still there to read");
    // Parked again (the epoll entry was removed on the way out), it comes back again.
    back.parked_since = None;
    assert!(parker.park(back, Instant::now()).is_none());
    drop(client);
    let closed = rx.recv_timeout(Duration::from_secs(5)).expect("a client that closes comes back too");
    assert_eq!((&mut &closed.stream).read(&mut buf).expect("read"), 0, "and reads EOF");
    running.stop();
}

#[test]
fn idle_too_long_or_at_stop_a_parked_connection_is_closed() {
    let registry = Registry::new();
    let parker = Parker::new(Duration::from_millis(200)).expect("parker");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let running = parker.spawn(tx, rx.clone()).expect("spawn");
    let (expiring, mut expiring_client) = pair(&registry, 1);
    assert!(parker.park(expiring, Instant::now()).is_none());
    // Closed by the sweep (within a second or two): the client reads EOF.
    expiring_client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 8];
    assert_eq!(expiring_client.read(&mut buf).expect("EOF, not a timeout"), 0);
    assert!(registry.is_empty(), "unregistered as it closed");

    let parker = Parker::new(Duration::ZERO).expect("parker");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let running2 = parker.spawn(tx, rx.clone()).expect("spawn");
    let (kept, mut kept_client) = pair(&registry, 2);
    assert!(parker.park(kept, Instant::now()).is_none());
    running2.stop();
    kept_client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(kept_client.read(&mut buf).expect("EOF at stop"), 0);
    let (late, _late_client) = pair(&registry, 3);
    assert!(parker.park(late, Instant::now()).is_some(), "a stopped parker refuses, handing it back");
    assert!(registry.is_empty());
    assert!(
        matches!(rx.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)),
        "the channel closed with the thread's sender"
    );
    running.stop();
}

#[test]
fn a_request_arriving_just_after_a_stop_is_still_handed_to_the_workers() {
    let registry = Registry::new();
    let parker = Parker::new(Duration::ZERO).expect("parker");
    let (tx, rx) = crossbeam_channel::bounded(4);
    let running = parker.spawn(tx, rx.clone()).expect("spawn");
    let (conn, mut client) = pair(&registry, 1);
    assert!(parker.park(conn, Instant::now()).is_none());
    let stopper = thread::spawn(move || running.stop());
    while parker.open.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    // Parked a moment ago, its client's request crosses the stop: served, not reset.
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let back = rx.recv_timeout(Duration::from_secs(5)).expect("handed to the workers in the grace");
    assert_eq!(back.id, 1);
    stopper.join().expect("stopped");
    assert!(parker.is_empty());
}
