//! Slow readers off the workers: a relay or tunnel whose destination has no room for what it read
//! (a client that reads its download slowly or not at all, a backend that stopped reading an
//! upload) waits in the parker with the bytes it holds, not in a worker. A crowd of them ten
//! times the workers then costs a real client nothing, as with HAProxy's and nginx's event loops,
//! and every held byte arrives once room is made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::tls::{client_config, tls_connect, Ca};
use crate::util::*;

/// Each crowd: ten times the workers.
const CROWD: usize = 40;

/// Tunnels, each echoing 4 MiB: fewer than the crowd, to spare the machine's memory.
const TUNNELS: usize = 10;

/// A download far larger than any socket buffer on the way.
const BIG: usize = 4 << 20;

/// A client whose receive buffer stays small (set before connecting, so the window never
/// grows), as a slow reader on a thin link: what the proxy sends it soon has nowhere to go.
fn thin_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_write_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Reads `n` bytes (or fails the test naming `what`).
fn read_n(s: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: {e}"));
    got
}

/// Reads a head up to its blank line.
fn read_head(s: &mut impl Read, what: &str) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap_or_else(|e| panic!("{what}: {e} after {head:?}"));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads the rest of a `Connection: close` download after its head: exactly `BIG` bytes of the
/// dummy's `?bytes=N` pattern, then the end (nothing more, nothing repeated).
fn read_download(s: &mut impl Read) {
    let body = read_n(s, BIG, "download body");
    let at = body.iter().enumerate().position(|(i, &b)| b != b'a' + (i % 26) as u8);
    assert_eq!(at, None, "the download's bytes leave the pattern");
    let mut more = [0u8; 1];
    let end = s.read(&mut more).unwrap_or_else(|e| panic!("no end after the download: {e}"));
    assert_eq!(end, 0, "bytes after the download");
}

/// Half a crowd of TLS clients that each send `get` and read nothing, once all wait in the
/// parker.
fn tls_crowd(
    addr: SocketAddr,
    admin: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    get: &str,
) -> Vec<StreamOwned<ClientConnection, TcpStream>> {
    let crowd = (0..CROWD / 2)
        .map(|_| {
            let name = ServerName::try_from("localhost").expect("name");
            let conn = ClientConnection::new(config.clone(), name).expect("client");
            let mut tls = StreamOwned::new(conn, thin_client(addr));
            tls.write_all(get.as_bytes()).expect("request");
            tls.flush().expect("flush");
            tls
        })
        .collect();
    wait_until("the slow TLS crowd waits in the parker", || {
        proxy_stats(admin)["parked"].as_u64() >= Some(CROWD as u64 / 2)
    });
    crowd
}

/// Line `i` of an upload: its number, then filler, 1,000 bytes with the newline.
fn numbered(i: usize) -> String {
    format!("{i:08} {}\n", "x".repeat(990))
}

/// Waits until the whole crowd is parked (held bytes and all) and no worker is busy, then
/// times a line echoed beside it on a connection of its own.
fn a_line_beside_the_crowd(addr: SocketAddr, admin: SocketAddr, n: u64) -> Duration {
    wait_until("the slow crowd waits in the parker", || proxy_stats(admin)["parked"].as_u64() >= Some(n));
    let started = Instant::now();
    let mut s = connect(addr);
    assert_eq!(exchange(&mut s, "hello"), "app");
    started.elapsed()
}

/// tcp mode, both directions. Half the crowd downloads 4 MiB and reads none of it; the other
/// half sends 8 MiB of lines to the echoing backend (or what fits on the way, once the backend
/// stops reading because nobody reads its echoes) and reads no echo. Each relay used to hold its worker until `idle_ms`: four
/// workers, and a client beside the crowd got no answer for a minute. HAProxy answers it in
/// milliseconds. Then one of each reads what it was owed, byte for byte.
#[test]
fn a_crowd_of_slow_readers_beyond_the_workers_waits_in_the_parker_and_gets_every_byte() {
    let (_d, backend) = dummy("app");
    let (_p, addr, admin) = four_workers("tcp", backend, "");
    let get = format!("GET /?bytes={BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut downloads: Vec<TcpStream> = (0..CROWD / 2)
        .map(|_| {
            let mut s = thin_client(addr);
            s.write_all(get.as_bytes()).expect("request");
            s
        })
        .collect();
    // Lines until the way to the backend is full: the proxy holds some for a backend that is
    // itself held up by echoes nobody reads.
    const LINE: usize = 1000;
    let mut uploads: Vec<(TcpStream, usize)> = (0..CROWD / 2)
        .map(|_| {
            let mut s = thin_client(addr);
            s.set_nonblocking(true).expect("nonblocking");
            let (mut sent, mut stalls) = (0usize, 0);
            // Full once it stays full for a while (the proxy may still be taking it up).
            while stalls < 3 && sent < 8 << 20 {
                match s.write(&numbered(sent / LINE).as_bytes()[sent % LINE..]) {
                    Ok(n) => (sent, stalls) = (sent + n, 0),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        stalls += 1;
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("upload: {e}"),
                }
            }
            s.set_nonblocking(false).expect("blocking");
            (s, sent)
        })
        .collect();
    let took = a_line_beside_the_crowd(addr, admin, CROWD as u64);
    assert!(took < Duration::from_millis(2500), "a client beside {CROWD} slow readers waited {took:?}");

    // A download read at last: its head, then every byte of the pattern.
    let s = &mut downloads[0];
    let head = read_head(s, "download");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_download(s);

    // An upload's echoes read at last, while the rest of its last line goes out.
    let (s, sent) = uploads.pop().expect("an upload");
    let lines = sent.div_ceil(LINE);
    let mut writer = s.try_clone().expect("clone");
    let last = numbered(lines - 1);
    let tail = thread::spawn(move || writer.write_all(&last.as_bytes()[LINE - (lines * LINE - sent)..]));
    let mut echoes = std::io::BufReader::new(s);
    for i in 0..lines {
        let echo = read_line(&mut echoes);
        assert_eq!(format!("{echo}\n"), format!("[app] {}", numbered(i)), "echo {i} of {lines}");
    }
    tail.join().expect("writer").expect("the last line");
}

/// WebSocket tunnels (http mode, after the 101) whose clients never read the echo of a 4 MiB
/// message: each parks holding what its client has no room for, so a GET beside them is
/// answered at once (four workers, ten tunnels: held in the workers, four of them kept the GET
/// waiting for `tunnel_ms`); one of them then reads its echo whole.
#[test]
fn websocket_tunnels_whose_clients_read_nothing_wait_in_the_parker_and_deliver_the_echo_whole() {
    let (_d, backend) = dummy("app");
    let (_p, addr, admin) = four_workers("http", backend, "");
    let message: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    // A masked binary frame; the zero key leaves the payload as it is.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(BIG as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&message);
    let mut crowd = Vec::new();
    let mut senders = Vec::new();
    let frame = std::sync::Arc::new(frame);
    for i in 0..TUNNELS {
        let mut s = thin_client(addr);
        s.write_all(UPGRADE).expect("upgrade request");
        let head = read_head(&mut s, "upgrade");
        assert!(head.starts_with("HTTP/1.1 101"), "tunnel {i}: {head}");
        let mut writer = s.try_clone().expect("clone");
        let frame = frame.clone();
        // The backend reads the whole message before it echoes: the send completes.
        senders.push(thread::spawn(move || writer.write_all(&frame[..])));
        crowd.push(s);
    }
    for sender in senders {
        sender.join().expect("sender").expect("the message goes out");
    }
    wait_until("the tunnels wait in the parker", || {
        proxy_stats(admin)["parked"].as_u64() >= Some(TUNNELS as u64)
    });
    let started = Instant::now();
    let answer = http_get(addr, "/");
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(took < Duration::from_millis(2500), "a GET beside {TUNNELS} slow tunnels waited {took:?}");

    let s = &mut crowd[0];
    let echo_len = BIG + "[app] ".len();
    let head = read_n(s, 10, "echo frame head");
    assert_eq!(head[..2], [0x82, 127], "an unmasked binary frame with a 64-bit length");
    assert_eq!(u64::from_be_bytes(head[2..].try_into().expect("8 bytes")), echo_len as u64);
    let body = read_n(s, echo_len, "echo");
    assert_eq!(&body[..6], b"[app] ");
    assert!(body[6..] == message[..], "the echo differs from the message");
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A client that resets while its upload waits, parked, on a backend that stopped reading is
/// let go at once: the parker watches the client's socket for a reset even though the relay
/// waits only for room at the backend (else it would hold its slot until `idle_ms`).
#[test]
fn a_client_reset_is_seen_while_its_upload_waits_parked_on_a_backend_that_stopped_reading() {
    let (backend, done, h) = deaf_backend();
    let (p, addr, admin) = four_workers("tcp", backend, "");
    let s = connect(addr);
    send_until_full(&s);
    // Parked, and staying there: nothing moved over 20 looks (its count is told at each park).
    let (mut last, mut same) = (None, 0);
    wait_until("the relay waits in the parker", || {
        let up = backend_stats(admin, "app1")["bytes_up"].as_u64();
        let parked = proxy_stats(admin)["parked"].as_u64() == Some(1);
        same = if parked && up == last { same + 1 } else { 0 };
        last = up;
        same >= 20
    });
    reset_is_seen(&p, admin, s, (done, h));
}

/// tcp mode over TLS: clients that download 4 MiB and read none of it park with the records
/// their session could not send (and the plaintext behind them); a TLS client beside them is
/// echoed at once, and one of them then reads its download whole.
#[test]
fn tls_clients_that_read_nothing_wait_in_the_parker_with_their_records_and_get_every_byte() {
    let ca = Ca::new("slow");
    let (_d, backend) = dummy("app");
    let (_certs, tls) = ca.proxy_tls();
    let (_p, addr, admin) = four_workers("tcp", backend, &tls);
    let config = client_config(&ca, None);
    let get = format!("GET /?bytes={BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut crowd = tls_crowd(addr, admin, &config, &get);
    let started = Instant::now();
    let mut line = tls_connect(addr, config.clone(), "localhost").expect("TLS client");
    line.write_all(b"hello\n").expect("send");
    assert_eq!(read_line(&mut line), "[app] hello");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "a TLS client beside the slow crowd waited {took:?}");

    let s = &mut crowd[0];
    let head = read_head(s, "download");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_download(s);
    // `close_notify` came; the FIN behind it too, though it waited for the client's room.
    let mut more = [0u8; 1];
    let fin = s.sock.read(&mut more).unwrap_or_else(|e| panic!("no FIN after close_notify: {e}"));
    assert_eq!(fin, 0, "bytes after close_notify");
}

/// A parked crowd of slow readers rides through ten reloads and then a stop: each reader, once
/// it reads, gets every byte of its download within the drain and then its end, while the proxy
/// has stopped accepting. (Parked relays stay watched through the drain, as quiet ones do.)
#[test]
fn slow_readers_parked_through_a_reload_storm_and_a_stop_still_get_every_byte() {
    let (_d, backend) = dummy("app");
    let config = format!(
        "[proxy]\nmode = tcp\nworkers = 2\nactive_workers = 1\ndrain_timeout_ms = 20000\n\
         [health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:0\n{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    let get = format!("GET /?bytes={BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut readers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = thin_client(addr);
            s.write_all(get.as_bytes()).expect("request");
            s
        })
        .collect();
    wait_until("the readers wait in the parker", || proxy_stats(admin)["parked"].as_u64() >= Some(8));
    for i in 1..=10 {
        p.signal("HUP");
        wait_until("the reload is applied", || p.log_text().matches("] reload: ").count() >= i);
    }
    p.signal("TERM");
    p.wait_for("stopped accepting");
    for (i, s) in readers.iter_mut().enumerate() {
        let head = read_head(s, "download");
        assert!(head.starts_with("HTTP/1.1 200"), "reader {i}: {head}");
        read_download(s);
    }
}

/// http mode: a crowd asks for 4 MiB each on keep-alive connections and reads none of it. Each
/// body used to hold its worker until `idle_ms`: with four workers, a GET beside the crowd got
/// no answer for a minute, where nginx and HAProxy answer it at once. Each now waits in the
/// parker with what is held for it. One of them then reads its body, byte for byte, and the
/// request it sent behind the first (pipelined, read or not with the first head) is answered
/// on the same connection; the access line counts the whole body.
#[test]
fn http_a_crowd_of_slow_downloaders_waits_in_the_parker_and_each_connection_goes_on() {
    let (_d, backend) = dummy("app");
    let (p, addr, admin) = four_workers("http", backend, "");
    let get = format!("GET /?bytes={BIG} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut crowd: Vec<TcpStream> = (0..CROWD)
        .map(|i| {
            let mut s = thin_client(addr);
            let mut ask = get.clone();
            if i == 0 {
                ask.push_str("GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            }
            s.write_all(ask.as_bytes()).expect("request");
            s
        })
        .collect();
    wait_until("the slow crowd waits in the parker", || {
        proxy_stats(admin)["parked"].as_u64() >= Some(CROWD as u64)
    });
    let started = Instant::now();
    let r = http_get(addr, "/");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_millis(2500), "a GET beside {CROWD} slow downloads waited {took:?}");

    let s = &mut crowd[0];
    let port = s.local_addr().expect("local").port();
    let head = read_head(s, "download");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains(&format!("Content-Length: {BIG}\r\n")),
        "{head}"
    );
    let body = read_n(s, BIG, "download body");
    let at = body.iter().enumerate().position(|(i, &b)| b != b'a' + (i % 26) as u8);
    assert_eq!(at, None, "the download's bytes leave the pattern");
    let second = read_head(s, "the pipelined request's answer");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let mut rest = String::new();
    s.read_to_string(&mut rest).expect("its body, then the end");
    assert_eq!(rest, "Hello from app\n");
    let line = p.wait_for(&format!("127.0.0.1:{port} \"GET /?bytes={BIG}\""));
    let out = line.split_whitespace().find_map(|w| {
        w.strip_suffix("B")
            .filter(|_| line.contains(&format!("{w} out")))
            .and_then(|n| n.parse::<usize>().ok())
    });
    assert!(out.is_some_and(|n| n == BIG + head.len()), "the access line counts head and body: {line}");
}

/// https: TLS clients that ask for 4 MiB on keep-alive and read none of it wait in the parker
/// with their records; a TLS client beside them is served; one then reads some of its body, sends
/// its next request (which must wait for the body's end, never reach the backend inside it),
/// reads the rest and that request's answer, then `close_notify` and the FIN.
#[test]
fn https_slow_downloaders_wait_in_the_parker_with_their_records_and_the_connection_goes_on() {
    let ca = Ca::new("slow-https");
    let (_d, backend) = dummy("app");
    let (_certs, tls) = ca.proxy_tls();
    let (_p, addr, admin) = four_workers("http", backend, &tls);
    let config = client_config(&ca, None);
    let get = format!("GET /?bytes={BIG} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut crowd = tls_crowd(addr, admin, &config, &get);
    let started = Instant::now();
    let mut beside = tls_connect(addr, config.clone(), "localhost").expect("TLS client");
    beside.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let head = read_head(&mut beside, "beside");
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(took < Duration::from_millis(2500), "a TLS client beside the slow crowd waited {took:?}");

    let s = &mut crowd[0];
    let head = read_head(s, "download");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A little of it (reading fast would let the socket's buffer grow to hold the rest).
    let mut body = read_n(s, 64 << 10, "the body's start");
    s.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("next request");
    s.flush().expect("flush");
    // Parked again, its next request in the socket when it resumes.
    wait_until("the download parks again", || {
        proxy_stats(admin)["parked"].as_u64() >= Some(CROWD as u64 / 2)
    });
    body.extend(read_n(s, BIG - (64 << 10), "the body's rest"));
    assert!(body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8), "the bytes leave the pattern");
    let second = read_head(s, "the pipelined request's answer");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(read_n(s, 15, "its body"), b"Hello from app\n");
    let mut more = [0u8; 1];
    assert_eq!(s.read(&mut more).expect("close_notify"), 0, "bytes after the last answer");
    assert_eq!(s.sock.read(&mut more).expect("the FIN"), 0, "bytes after close_notify");
}

/// A large body the backend breaks off (its Content-Length promises 100 bytes more, then its
/// FIN) reaches a slow client cut and then closed, never looking complete; one the backend
/// follows with a stray response (bytes past its framing) never passes them on: the client's
/// next request on the connection gets its own answer. As nginx and HAProxy.
#[test]
fn a_large_body_cut_or_overlong_at_the_backend_is_never_passed_on_as_whole_or_stray() {
    let (_d, backend) = dummy("app");
    let (p, addr, admin) = four_workers("http", backend, "");
    let n = BIG;
    let mut s = thin_client(addr);
    s.write_all(format!("GET /cut?fault=bad-length&bytes={n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    // The backend has sent all it will; the proxy holds what the client has no room for.
    wait_until("the cut body waits in the parker", || proxy_stats(admin)["parked"].as_u64() >= Some(1));
    let head = read_head(&mut s, "cut");
    assert!(head.contains(&format!("Content-Length: {}\r\n", n + 100)), "{head}");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("the end");
    assert_eq!(body.len(), n, "what the backend sent, then the close");
    let line = p.wait_for("\"GET /cut?fault=bad-length");
    assert!(line.contains("body ended early"), "{line}");

    let mut s = thin_client(addr);
    s.write_all(format!("GET /long?fault=overlong&bytes={n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let head = read_head(&mut s, "overlong");
    assert!(head.contains(&format!("Content-Length: {n}\r\n")), "{head}");
    let body = read_n(&mut s, n, "overlong body");
    assert!(body.iter().enumerate().all(|(i, &b)| b == b'a' + (i % 26) as u8), "the bytes leave the pattern");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("next");
    let mut rest = String::new();
    s.read_to_string(&mut rest).expect("the next answer");
    assert!(rest.starts_with("HTTP/1.1 200") && rest.ends_with("\r\n\r\nHello from app\n"), "{rest}");
    assert!(!rest.contains("STRAY"), "{rest}");
}
