//! Unit tests of the relay: both directions at once through a slow reader, idle timeouts naming the right side, EOF passed on.
use super::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::net::TcpListener;
use std::thread;

/// A connected loopback pair: (our end, the relay's end).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ours = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (theirs, _) = l.accept().expect("accept");
    (ours, theirs)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len).map(|i| (i as u32 ^ seed).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
}

/// Sends `data` then half-closes, while reading everything that arrives, `chunk` bytes at
/// a time; returns what arrived.
fn send_and_receive(s: TcpStream, data: Vec<u8>, chunk: usize) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut w = s.try_clone().expect("clone");
        let writer = thread::spawn(move || {
            w.write_all(&data).expect("write");
            w.shutdown(Shutdown::Write).expect("half-close");
        });
        let mut got = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match (&s).read(&mut buf).expect("read") {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().expect("writer");
        got
    })
}

#[test]
fn both_directions_flow_at_once_through_a_slow_reader_and_splicing() {
    let (client, client_relay) = pair();
    let (backend, backend_relay) = pair();
    const UP: usize = 3 << 20;
    const DOWN: usize = 5 << 20;
    let (up_data, down_data) = (pattern(UP, 1), pattern(DOWN, 2));
    // Small socket buffers towards the backend, which reads in small pieces: its side
    // fills up, and the spliced direction keeps bytes in its pipe while the other goes on.
    socket2::SockRef::from(&backend_relay).set_send_buffer_size(64 * 1024).expect("sndbuf");
    socket2::SockRef::from(&backend).set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let at_backend = send_and_receive(backend, down_data.clone(), 512);
    let at_client = send_and_receive(client, up_data.clone(), 64 * 1024);
    let out = relay(
        End::plain(&client_relay),
        End::plain(&backend_relay),
        Duration::from_secs(20),
        &mut Buffers::default(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!((out.up, out.down), (UP as u64, DOWN as u64));
    assert!(at_backend.join().expect("backend") == up_data, "upstream bytes differ");
    assert!(at_client.join().expect("client") == down_data, "downstream bytes differ");
}

#[test]
fn a_backend_that_stops_reading_is_named_when_the_idle_timeout_fires() {
    let (client, client_relay) = pair();
    let (_backend, backend_relay) = pair();
    // More than the socket buffers hold: the relay ends up waiting to write to the backend.
    let writer = thread::spawn(move || {
        let block = vec![7u8; 64 * 1024];
        let mut c = client;
        while c.write_all(&block).is_ok() {}
    });
    let started = Instant::now();
    let out = relay(
        End::plain(&client_relay),
        End::plain(&backend_relay),
        Duration::from_millis(300),
        &mut Buffers::default(),
    );
    let f = out.error.expect("idle timeout");
    assert!(matches!((f.party, f.phase, &f.cause), (Party::Backend, Phase::Relay, Cause::Timeout)), "{f}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(out.up > 0);
    drop(client_relay);
    writer.join().expect("writer");
}

#[test]
fn a_quiet_connection_times_out_on_the_client_and_eof_passes_through() {
    let (client, client_relay) = pair();
    let (mut backend, backend_relay) = pair();
    backend.write_all(b"hello").expect("write");
    backend.shutdown(Shutdown::Write).expect("half-close");
    let out = relay(
        End::plain(&client_relay),
        End::plain(&backend_relay),
        Duration::from_millis(200),
        &mut Buffers::default(),
    );
    let f = out.error.expect("idle timeout");
    assert!(matches!((f.party, f.phase, &f.cause), (Party::Client, Phase::Relay, Cause::Timeout)), "{f}");
    assert_eq!((out.up, out.down), (0, 5));
    let mut got = Vec::new();
    (&client).read_to_end(&mut got).expect("EOF passed on");
    assert_eq!(got, b"hello");
}

/// A relay whose client reads nothing goes quiet holding what the client had no room for (in
/// memory or in its pipe), asks the parker to watch only for room at the client and for the
/// client's input, and, resumed turn after turn as the client reads, delivers every byte once.
#[test]
fn a_relay_parks_holding_bytes_for_a_full_destination_and_delivers_them_when_resumed() {
    let (mut client, client_relay) = pair();
    let (mut backend, backend_relay) = pair();
    const DOWN: usize = 4 << 20;
    let data = pattern(DOWN, 3);
    socket2::SockRef::from(&client_relay).set_send_buffer_size(32 * 1024).expect("sndbuf");
    socket2::SockRef::from(&client).set_recv_buffer_size(32 * 1024).expect("rcvbuf");
    let sent = data.clone();
    let writer = thread::spawn(move || {
        backend.write_all(&sent).expect("backend writes");
        backend.shutdown(Shutdown::Write).expect("half-close");
        backend
    });
    let never = || false;
    let when = ParkWhen { after: Duration::from_millis(20), wanted: &never };
    let mut bufs = Buffers::default();
    let step = |from: Progress, bufs: &mut Buffers| {
        let (c, b) = (End::plain(&client_relay), End::plain(&backend_relay));
        resume(c, b, Duration::from_secs(20), bufs, from, Some(when), &|_, _| {})
    };
    // Waits as the parker would, for what the relay asked: each side's socket ready for it.
    let wait = |p: &Progress| {
        let flags = |on: Interest| {
            let mut f = PollFlags::empty();
            if on.read {
                f |= PollFlags::IN | PollFlags::RDHUP;
            }
            if on.write {
                f |= PollFlags::OUT;
            }
            f
        };
        let (on_client, on_backend) = p.interest();
        let mut fds =
            [PollFd::new(&client_relay, flags(on_client)), PollFd::new(&backend_relay, flags(on_backend))];
        let ready = poll(&mut fds, Some(&crate::net::timespec(Duration::from_secs(20)))).expect("poll");
        assert!(ready > 0, "nothing the relay waits for came within 20 s: {p:?}");
    };
    // Quiet with nothing held until the backend's bytes reach it (a busy machine may be slow
    // to start the writer), then holding what the client has no room for.
    let mut progress = Progress::start();
    for turn in 0.. {
        assert!(turn < 1000, "never held anything");
        let Relayed::Quiet(p) = step(progress, &mut bufs) else { panic!("ended") };
        progress = p;
        if progress.held.is_some() {
            break;
        }
        wait(&progress);
    }
    let (on_client, on_backend) = progress.interest();
    assert_eq!(on_client, Interest { read: true, write: true, reset: true });
    assert_eq!(on_backend, Interest { read: false, write: false, reset: true });
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("client reads");
        got
    });
    let mut turns = 1;
    let out = loop {
        wait(&progress);
        match step(progress, &mut bufs) {
            Relayed::Quiet(p) => progress = p,
            Relayed::Ended(out) => break out,
        }
        turns += 1;
        assert!(turns < 10_000, "no end after {turns} turns");
    };
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.down, DOWN as u64);
    // The relay's end of the client is shut after the backend's EOF; the client sees it.
    drop(writer.join().expect("writer"));
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), DOWN);
    assert!(got == data, "the bytes arrived changed");
}

/// A side brought back from the parker with its FIN still owed (its `close_notify` was queued
/// behind records the client had no room for) sends the FIN at its first flush; one whose FIN
/// went out before it parked sends nothing more.
#[test]
fn a_side_resumed_with_its_fin_owed_sends_it_and_one_already_shut_does_not() {
    let (mut ours, theirs) = pair();
    let mut side = side::Side::new(&theirs, None, Party::Client, false, (true, true));
    assert!(side.fin_owed());
    side.flush().expect("flush");
    assert!(!side.fin_owed());
    ours.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    assert_eq!(ours.read(&mut [0u8; 1]).expect("the FIN"), 0);

    let (mut ours, theirs) = pair();
    let mut side = side::Side::new(&theirs, None, Party::Client, false, (true, false));
    side.flush().expect("flush");
    ours.set_nonblocking(true).expect("nonblocking");
    let e = ours.read(&mut [0u8; 1]).expect_err("no FIN sent twice, none at all here");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

/// A response body ([`Progress::body`]): exactly its length goes to the client, spliced or
/// copied, early bytes first; what the backend sends beyond it stays unread in its socket;
/// neither side is shut; the client's next request is not read (it is not the backend's).
#[test]
fn a_body_relays_exactly_its_length_one_way_and_shuts_nothing() {
    let (mut client, client_relay) = pair();
    let (mut backend, backend_relay) = pair();
    const LEN: usize = 3 << 20;
    let data = pattern(LEN + 100, 3);
    let early = data[..1000].to_vec();
    let writer = {
        let rest = data[1000..].to_vec();
        let mut b = backend.try_clone().expect("clone");
        thread::spawn(move || b.write_all(&rest).expect("write"))
    };
    client.write_all(b"GET /next HTTP/1.1\r\n\r\n").expect("next request");
    let reader = {
        let mut c = client.try_clone().expect("clone");
        thread::spawn(move || {
            let mut got = vec![0u8; LEN];
            c.read_exact(&mut got).expect("the body");
            got
        })
    };
    let out = resume(
        End::plain(&client_relay),
        End { sock: &backend_relay, tls: None, early: &early },
        Duration::from_secs(20),
        &mut Buffers::default(),
        Progress::body(LEN as u64, Duration::from_secs(20)),
        None,
        &|_, _| {},
    )
    .into_outcome();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!((out.up, out.down), (0, LEN as u64));
    assert!(reader.join().expect("client") == data[..LEN], "the body's bytes differ");
    writer.join().expect("backend");
    // Beyond the body: still in the backend's socket, for the pool's check to find.
    client_relay.set_nonblocking(false).expect("blocking");
    backend_relay.set_nonblocking(false).expect("blocking");
    let mut beyond = [0u8; 100];
    (&backend_relay).read_exact(&mut beyond).expect("the bytes beyond");
    assert_eq!(beyond[..], data[LEN..]);
    // Nothing shut, nothing of the client's forwarded.
    let mut next = [0u8; 22];
    (&client_relay).read_exact(&mut next).expect("the next request, unread");
    assert_eq!(&next, b"GET /next HTTP/1.1\r\n\r\n");
    backend.set_nonblocking(true).expect("nonblocking");
    let mut one = [0u8; 1];
    assert!(matches!(backend.read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    client.set_nonblocking(true).expect("nonblocking");
    assert!(matches!(client.read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
}

/// Idle, a body's rest is the backend's to send (its client is done); a relay whose sides are
/// both merely quiet is put down to the client.
#[test]
fn an_idle_body_names_the_backend_and_a_quiet_relay_the_client() {
    assert_eq!(idle_timeout(Wait::Done, Wait::Read).0, Party::Backend);
    assert_eq!(idle_timeout(Wait::Read, Wait::Read).0, Party::Client);
    assert_eq!(idle_timeout(Wait::Write, Wait::Read).0, Party::Backend);
}

/// A body whose backend goes silent mid-way is cut at its own limit (`response_ms`), not the
/// idle one, and the backend is named; so is the parker's deadline for it while nothing waits
/// for the client.
#[test]
fn a_body_whose_backend_goes_silent_is_cut_at_its_own_limit_naming_the_backend() {
    let (client, client_relay) = pair();
    let (mut backend, backend_relay) = pair();
    backend.write_all(&[7u8; 1000]).expect("part of the body");
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let _ = (&client).read_to_end(&mut got);
        got.len()
    });
    let started = Instant::now();
    let body = Progress::body(1 << 20, Duration::from_millis(300));
    let out = resume(
        End::plain(&client_relay),
        End::plain(&backend_relay),
        Duration::from_secs(30),
        &mut Buffers::default(),
        body,
        None,
        &|_, _| {},
    )
    .into_outcome();
    let took = started.elapsed();
    let f = out.error.expect("cut");
    assert_eq!((f.party, matches!(f.cause, Cause::Timeout)), (Party::Backend, true), "{f}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(out.down, 1000);
    drop(client_relay);
    assert_eq!(reader.join().expect("client"), 1000);
    drop(backend);
    let waiting = Progress { down: 1000, ..Progress::body(1 << 20, Duration::from_millis(300)) };
    let at = waiting.last_moved;
    assert_eq!(waiting.deadline(Duration::from_secs(30)), Some(at + Duration::from_millis(300)));
    let plain = Progress::start();
    assert_eq!(plain.deadline(Duration::from_secs(30)), Some(plain.last_moved + Duration::from_secs(30)));
}

/// A client that reads, however slowly, is not idle. `POLLOUT` waits for a third of the send
/// buffer to be free, which a slow reader may take longer than the idle limit to free while it
/// does read; what a write takes at the limit counts, as nginx's `send_timeout` counts any.
#[test]
fn a_slow_reader_that_keeps_reading_is_not_cut_at_the_idle_limit() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    s.connect(&l.local_addr().expect("addr").into()).expect("connect");
    let client: TcpStream = s.into();
    let (client_relay, _) = l.accept().expect("accept");
    socket2::SockRef::from(&client_relay).set_send_buffer_size(256 * 1024).expect("sndbuf");
    let (backend, backend_relay) = pair();
    const LEN: usize = 2 << 20;
    let data = pattern(LEN, 4);
    let writer = {
        let data = data.clone();
        let mut b = backend;
        thread::spawn(move || {
            b.write_all(&data).expect("write");
            b.shutdown(Shutdown::Write).expect("half-close");
            b
        })
    };
    let reader = thread::spawn(move || {
        let mut c = client;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // About 10 KB/s for three idle limits and a half, then at full speed.
        let slow_until = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < slow_until {
            let n = c.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
            thread::sleep(Duration::from_millis(100));
        }
        c.read_to_end(&mut got).expect("the rest");
        got
    });
    let out = relay(
        End::plain(&client_relay),
        End::plain(&backend_relay),
        Duration::from_secs(1),
        &mut Buffers::default(),
    );
    assert!(out.error.is_none(), "cut while its client read: {:?}", out.error);
    assert_eq!(out.down, LEN as u64);
    drop(client_relay);
    assert!(reader.join().expect("client") == data, "the bytes differ");
    drop(writer.join().expect("backend"));
}
