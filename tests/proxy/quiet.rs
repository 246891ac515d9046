//! Quiet relays off the workers (issue #18): a TCP relay that moves no byte waits in the parker
//! with both sockets watched, not in a worker, and a worker picks it up again when either side
//! speaks. With one worker, a second client is served only if the first one's quiet relay let
//! go of it; `idle_ms` and half-close still hold across the waits. And an idle proxy takes no
//! CPU at all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// A backend whose accepted sockets come to the test, which then speaks for it.
fn hand_backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut impl Read, n: usize) -> String {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// A client connected through the proxy, and the backend's end of its relay.
fn open(addr: SocketAddr, backends: &mpsc::Receiver<TcpStream>) -> (TcpStream, TcpStream) {
    let mut client = connect(addr);
    client.write_all(b"hello").expect("send");
    let mut backend = backends.recv_timeout(Duration::from_secs(10)).expect("the relay reaches the backend");
    assert_eq!(read_n(&mut backend, 5), "hello");
    backend.write_all(b"hi").expect("reply");
    assert_eq!(read_n(&mut client, 2), "hi");
    (client, backend)
}

#[test]
fn a_quiet_tcp_relay_frees_its_worker_and_either_side_wakes_it_as_often_as_it_likes() {
    let (addr_b, backends) = hand_backend();
    // One worker: while a quiet relay held it, no other client would be relayed.
    let config = format!(
        "[proxy]\nworkers = 1\n[timeouts]\nidle_ms = 2000\n[health]\nenabled = false\n{}",
        backends_section(&[addr_b])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let (mut a_client, mut a_backend) = open(addr, &backends);
    // A second and a third client are relayed while the first is quiet.
    let started = Instant::now();
    let (mut b_client, mut b_backend) = open(addr, &backends);
    let (c_client, c_backend) = open(addr, &backends);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    for round in 0..3 {
        // The backend speaks first (server push), then the client, on each relay in turn, each
        // after the relays have gone quiet again.
        for (client, backend) in [(&mut a_client, &mut a_backend), (&mut b_client, &mut b_backend)] {
            let push = format!("push {round}");
            backend.write_all(push.as_bytes()).expect("push");
            assert_eq!(read_n(client, push.len()), push);
            let ask = format!("ask {round}");
            client.write_all(ask.as_bytes()).expect("ask");
            assert_eq!(read_n(backend, ask.len()), ask);
        }
        // Longer than a relay takes to park (100 ms), shorter than idle_ms.
        thread::sleep(Duration::from_millis(300));
    }
    // Half-close from the client while quiet: the backend sees EOF, still answers, and closes.
    a_client.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    a_backend.read_to_end(&mut rest).expect("EOF reaches the backend");
    assert!(rest.is_empty(), "{rest:?}");
    a_backend.write_all(b"bye").expect("after EOF");
    drop(a_backend);
    let mut tail = String::new();
    a_client.read_to_string(&mut tail).expect("the rest, then EOF");
    assert_eq!(tail, "bye");
    // Counted across every wake: 5 + 3 * 5 up; 2 + 3 * 6 + 3 down.
    let a_line = p.wait_for_since(0, "conn 1 closed: ");
    assert!(a_line.contains(" 20 bytes up, 23 bytes down, "), "{a_line}");
    // A relay quiet for idle_ms is ended, parked or not, and logged as an idle timeout.
    let mut nothing = [0u8; 1];
    let ended = b_client.read(&mut nothing);
    assert!(matches!(ended, Ok(0) | Err(_)), "idle relay still open: {ended:?}");
    p.wait_for("idle timeout");
    drop((c_client, c_backend, b_backend));
}

/// Reads up to the end of an HTTP head (byte by byte, so nothing past it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("head"), 1, "closed in a head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An upgraded connection through the proxy: the client's end and the backend's, after the 101,
/// and the length of the head the backend received.
fn upgrade(addr: SocketAddr, backends: &mpsc::Receiver<TcpStream>) -> (TcpStream, TcpStream, usize) {
    let mut client = connect(addr);
    client
        .write_all(b"GET /t HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: test-proto\r\n\r\n")
        .expect("ask");
    let mut backend =
        backends.recv_timeout(Duration::from_secs(10)).expect("the request reaches the backend");
    let head = read_head(&mut backend);
    assert!(head.contains("Upgrade: test-proto"), "{head}");
    let sent = head.len();
    backend
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test-proto\r\n\r\n")
        .expect("101");
    let head = read_head(&mut client);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (client, backend, sent)
}

#[test]
fn a_quiet_upgrade_tunnel_frees_its_worker_and_either_side_wakes_it_while_tunnel_ms_holds() {
    let (addr_b, backends) = hand_backend();
    // One worker, and backend connections not pooled (each upgrade gets its own).
    let config = format!(
        "[proxy]\nmode = http\nworkers = 1\n[timeouts]\ntunnel_ms = 2000\n[health]\nenabled = false\n{}",
        backends_section(&[addr_b])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let (mut a_client, mut a_backend, a_head) = upgrade(addr, &backends);
    // With the one worker, a second tunnel opens only if the first, quiet, let go of it.
    let (mut b_client, mut b_backend, _) = upgrade(addr, &backends);
    for round in 0..3 {
        for (client, backend) in [(&mut a_client, &mut a_backend), (&mut b_client, &mut b_backend)] {
            let push = format!("push {round}");
            backend.write_all(push.as_bytes()).expect("push");
            assert_eq!(read_n(client, push.len()), push);
            let ask = format!("ask {round}");
            client.write_all(ask.as_bytes()).expect("ask");
            assert_eq!(read_n(backend, ask.len()), ask);
        }
        // Longer than a tunnel takes to park (100 ms), shorter than tunnel_ms.
        thread::sleep(Duration::from_millis(300));
    }
    // Half-close from the backend while quiet: the client sees EOF and still sends.
    a_backend.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    a_client.read_to_end(&mut rest).expect("EOF reaches the client");
    assert!(rest.is_empty(), "{rest:?}");
    a_client.write_all(b"last").expect("after EOF");
    assert_eq!(read_n(&mut a_backend, 4), "last");
    let a_port = a_client.local_addr().expect("local address").port();
    drop(a_client);
    // Its access line, written at its end, counts the bytes of every turn: the head sent, then
    // 3 * 5 + 4 up. (Its own line, by its port: B's, at tunnel_ms, may come first on a slow
    // machine.)
    let line = p.wait_for(&format!("127.0.0.1:{a_port} \"GET /t\""));
    assert!(line.contains(&format!(" 101 {}B in ", a_head + 19)), "{line}");
    // The other, left quiet, ends at tunnel_ms, parked or not.
    let mut nothing = [0u8; 1];
    let ended = b_client.read(&mut nothing);
    assert!(matches!(ended, Ok(0) | Err(_)), "idle tunnel still open: {ended:?}");
    p.wait_for("idle for tunnel_ms");
    drop(b_backend);
}

/// The /stats gauge of `name`, read now.
fn gauge(admin: SocketAddr, name: &str) -> u64 {
    let stats = proxy_stats(admin);
    stats[name].as_u64().unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// Waits (bounded) until the gauge `name` reads `want`.
fn wait_gauge(admin: SocketAddr, name: &str, want: u64) {
    wait_until(&format!("{name} = {want}"), || gauge(admin, name) == want);
}

/// Issue #20: the gauges are read when asked, so they fall back when the load is gone
/// (`waiting_for_worker` was sampled at each accept and stayed up on an idle proxy), and /stats
/// shows the parker and the worker pool (threadpool's threads, busy workers, caught panics).
#[test]
fn stats_gauges_are_read_when_asked_and_show_the_parker_and_the_pool() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 1\n[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    // The one worker waits on a slow answer while three more clients queue behind it.
    let slow = thread::spawn(move || {
        let mut w = lbproxy::h1::Wire::new(connect(addr));
        (get(&mut w, "/?delay_ms=600", "").status, w)
    });
    wait_gauge(admin, "workers_busy", 1);
    let queued: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                let mut w = lbproxy::h1::Wire::new(connect(addr));
                let status = get(&mut w, "/", "").status;
                (status, w)
            })
        })
        .collect();
    wait_gauge(admin, "waiting_for_worker", 3);
    let (status, slow) = slow.join().expect("slow");
    assert_eq!(status, 200);
    let idle: Vec<_> = queued.into_iter().map(|t| t.join().expect("queued")).collect();
    assert!(idle.iter().all(|(status, _)| *status == 200));
    // Load gone: nothing waits for a worker, and the idle keep-alive clients are parked.
    wait_gauge(admin, "waiting_for_worker", 0);
    wait_gauge(admin, "parked", 4);
    wait_gauge(admin, "workers_busy", 0);
    assert_eq!(
        (gauge(admin, "workers"), gauge(admin, "worker_threads"), gauge(admin, "worker_panics")),
        (1, 1, 0)
    );
    let metrics = http_get(admin, "/metrics").text();
    for line in ["lb_accept_queue_length 0", "lb_parked_connections 4", "lb_workers 1", "lb_workers_busy 0"] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in /metrics");
    }
    drop((idle, slow));
}

/// CPU time (user and system, in clock ticks) of the process's main thread so far.
fn main_thread_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat")).expect("stat");
    // After the command name's closing parenthesis: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).map(|f| f.parse().expect("ticks")).collect();
    fields.iter().sum()
}

/// An idle proxy costs no CPU. Its main thread waits for signals and for a takeover; with no
/// control socket (the default) the takeover channel was closed, so always ready, and the main
/// thread spun at 100% of a core (found by an exploratory review). The window is the
/// measurement itself: a spinning thread gets at least its share of a busy machine's cores.
#[test]
fn an_idle_proxy_without_a_control_socket_takes_no_cpu() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\nworkers = 4\ncontrol_socket =\n[health]\nenabled = false\n\
         [backends]\napp1 = {backend}\n"
    );
    let (p, addr) = proxy_with(&config, &[]);
    assert_eq!(get(&mut lbproxy::h1::Wire::new(connect(addr)), "/", "").status, 200);
    let before = main_thread_ticks(p.pid());
    let window = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let used = main_thread_ticks(p.pid()) - before;
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let wall_ticks = window.elapsed().as_millis() as u64 * per_second / 1000;
    assert!(used * 10 < wall_ticks, "the main thread used {used} of {wall_ticks} ticks while idle");
}

/// At a graceful stop quiet relays still park, through the drain: before, a relay woken after
/// the stop could not park again and kept its worker, so with two workers two relays went on and
/// the rest had no answer until the drain's deadline cut them. HAProxy and nginx serve every
/// connection through their drain.
#[test]
fn at_a_stop_relays_beyond_the_workers_all_drain_each_taking_a_worker_only_while_it_speaks() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 2\ndrain_timeout_ms = 20000\n[admin]\nlisten = 127.0.0.1:0\n\
         [health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(exchange(c, &format!("before {i}")), "app1");
    }
    wait_gauge(admin_addr(&p), "parked", 10);
    p.signal("TERM");
    p.wait_for("stopped accepting");
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            let started = Instant::now();
            assert_eq!(exchange(c, &format!("round {round} client {i}")), "app1");
            // Far inside the drain's 20 s: no client waits for another's relay to end.
            assert!(started.elapsed() < Duration::from_secs(5), "round {round} client {i}");
        }
    }
}
