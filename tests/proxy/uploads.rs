//! A backend's early answer to an upload, as HAProxy forwards it: a refusal (a 413, a 401) sent
//! before the body is in reaches the client at once, whether the backend then closes, stops
//! reading, or reads on (nginx's `client_max_body_size`), and never counts as a failure; a
//! backend that streams its 2xx head while it reads still gets the whole body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::fidelity::round_trip;
use crate::streaming::{backend, read_head};
use crate::util::*;

/// Without `Expect`, a backend that refuses an upload before reading it and closes (a 413, as
/// Python's http.server answers a POST with 501) has its answer reach the client, as HAProxy
/// forwards it, rather than a 502; and since it answered, it is not failing: after more such
/// uploads than `max_fails`, it still serves (before, the third marked it down).
#[test]
fn a_backend_answering_an_upload_early_and_closing_has_its_answer_reach_the_client_as_haproxy() {
    let app = backend(|mut s| {
        let (head, _) = read_head(&mut s);
        let reply: &[u8] = if head.starts_with("POST") {
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        };
        // Closing with the body unread resets the connection under the proxy's writes.
        let _ = s.write_all(reply);
    });
    let (_p, proxy) = http_proxy(&[app], "round-robin", "", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    // More than the sockets' buffers hold, so the proxy's writes fail.
    std::fs::write(&file, vec![b'x'; 8 << 20]).expect("write");
    for round in 0..5 {
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", " %{http_code}", "-H", "Expect:", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{proxy}/upload"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, "too large 413", "upload {round}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let after = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(after.starts_with("HTTP/1.1 200"), "the backend was marked down: {after}");
}

const REFUSAL: &[u8] =
    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";

/// Sends the head of a 100 MiB upload and its first 64 KiB, then stops, as a client that
/// waits on the answer does (curl stops sending once one comes), and returns what it gets by
/// the time the proxy closes.
fn upload_then_wait(proxy: SocketAddr, path: &str) -> String {
    let mut s = connect(proxy);
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&[b'x'; 64 << 10]).expect("first part of the body");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                panic!("no answer from the proxy mid-upload ({e}); got {:?}", String::from_utf8_lossy(&out))
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Uploads `file` with curl (no `Expect`, so the body follows the head at once): the status,
/// the bytes curl sent, and what it got and said.
fn curl_upload(file: &std::path::Path, proxy: SocketAddr) -> (u16, u64, String) {
    curl_upload_to(file, proxy, "/upload")
}

fn curl_upload_to(file: &std::path::Path, proxy: SocketAddr, path: &str) -> (u16, u64, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-H", "Expect:", "-o", "-", "-w", "\n%{http_code} %{size_upload}"])
        .args(["--data-binary", &format!("@{}", file.display()), &format!("http://{proxy}{path}")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let said = format!("{text} {}", String::from_utf8_lossy(&out.stderr));
    let mut figures = text.rsplit('\n').next().unwrap_or("").split(' ').map(|n| n.parse::<u64>().ok());
    let status = figures.next().flatten().unwrap_or(0) as u16;
    (status, figures.next().flatten().unwrap_or(u64::MAX), said)
}

/// A backend that answers an upload with 413 at once and then either reads on to the end (as
/// nginx does after its `client_max_body_size` answer) or keeps the connection without reading.
/// The answer reaches the client while it is still uploading, as HAProxy forwards it: one that
/// stops sending to wait for it, and curl, which never stops. Before, the client got nothing
/// until it had sent the whole body, or until `idle_ms` for the second backend.
#[test]
fn a_refusal_reaches_a_client_mid_upload_whether_the_backend_reads_on_or_stops_as_haproxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 64 << 20]).expect("write");
    for reads_on in [true, false] {
        let app = backend(move |mut s| {
            let (head, _) = read_head(&mut s);
            if !head.starts_with("POST") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                return;
            }
            let _ = s.write_all(REFUSAL);
            if reads_on {
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            } else {
                // Kept without a read: the proxy's writes would stall once the buffers fill.
                std::thread::sleep(Duration::from_secs(60));
            }
        });
        let (_p, proxy) = http_proxy(&[app], "round-robin", "", "");
        for round in 0..3 {
            let text = upload_then_wait(proxy, "/upload");
            assert!(text.starts_with("HTTP/1.1 413 "), "reads_on={reads_on}, upload {round}: {text}");
            assert!(text.ends_with("\r\n\r\ntoo large"), "reads_on={reads_on}, upload {round}: {text}");
        }
        // curl never stops to wait: it gets the answer having sent a few MiB of 64, not all.
        let (status, sent, said) = curl_upload(&file, proxy);
        assert_eq!(status, 413, "reads_on={reads_on}: {said}");
        assert!(said.starts_with("too large\n413 "), "reads_on={reads_on}: {said}");
        assert!(sent < 32 << 20, "reads_on={reads_on}: curl sent {sent} bytes before the answer");
        let after = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(
            after.starts_with("HTTP/1.1 200"),
            "reads_on={reads_on}: the backend was marked down: {after}"
        );
    }
}

/// A backend that streams its answer while it reads a 1 MiB body: after the request head it
/// sends `start` (a `200` head), and then `piece` (a first chunk) once some body has come; it
/// tells the test when the last of these is out, and ends its answer with the body's length.
fn streaming_backend(start: &'static [u8], piece: &'static [u8]) -> (SocketAddr, Receiver<()>) {
    let (told, heard) = crossbeam_channel::bounded::<()>(1);
    let app = backend(move |mut s| {
        let (_, mut body) = read_head(&mut s);
        let _ = s.write_all(start);
        let mut chunk = [0u8; 16384];
        let mut said = false;
        while body.len() < 1 << 20 {
            if !said && (piece.is_empty() || !body.is_empty()) {
                let _ = s.write_all(piece);
                let _ = told.send(());
                said = true;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let count = body.len().to_string();
        let _ = s.write_all(format!("{:x}\r\n{count}\r\n0\r\n\r\n", count.len()).as_bytes());
    });
    (app, heard)
}

/// Sends 16 KiB of a 1 MiB body, waits for the backend's word, sends the rest, and returns the
/// answer as read until the proxy closes.
fn upload_around(mut s: TcpStream, heard: &Receiver<()>) -> String {
    s.write_all(&[b'x'; 16 << 10]).expect("first part");
    heard.recv_timeout(WAIT).expect("the backend's word");
    for _ in 1..64 {
        s.write_all(&[b'x'; 16 << 10]).expect("the rest");
    }
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The watch for a refusal ends at a 2xx: a backend that sends its `200` head as soon as it has
/// the request, then reads the whole body and answers with its length, gets every byte. The
/// client sends the rest of its body only once that head is out, so the proxy's look finds it.
#[test]
fn a_backend_streaming_its_200_while_it_reads_still_gets_the_whole_body() {
    let (app, heard) = streaming_backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"");
    let (_p, proxy) = http_proxy(&[app], "round-robin", "", "");
    let mut s = connect(proxy);
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n")
        .expect("head");
    let text = upload_around(s, &heard);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("\r\n\r\n7\r\n1048576\r\n0\r\n\r\n"), "{text}");
}

/// While the proxy waits on an uploading client it also watches the backend, and that shared
/// wait is the client read's own: a client that stalls mid-body is cut after `idle_ms`, as
/// nginx's `client_body_timeout` cuts it, not after twice that. As nginx, it gets no answer and
/// its access line says 408 (a client that left would be 499).
#[test]
fn a_client_stalling_mid_upload_is_cut_after_idle_ms_not_twice_that() {
    let app = backend(|mut s| {
        let _ = read_head(&mut s);
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    let (p, proxy) = http_proxy(&[app], "round-robin", "idle_ms = 2000", "");
    let mut s = connect(proxy);
    let started = std::time::Instant::now();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789").expect("send");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = s.read_to_end(&mut Vec::new());
    let waited = started.elapsed();
    let line = p.wait_for("\"POST /up\"");
    assert!(
        line.contains(" 408 10B in ") && line.contains("[client: sending the request: timed out]"),
        "{line}"
    );
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3500), "{waited:?}");
}

/// A backend that closes while the body is still on its way gets the client a 502 at once, as
/// HAProxy answers, not a wait of `idle_ms` for the rest of a body no one will read (before, the
/// client waited, and then got nothing, logged as a 408).
#[test]
fn a_backend_closing_mid_upload_gets_the_client_a_502_at_once_as_haproxy() {
    let app = backend(|mut s| {
        let _ = read_head(&mut s);
    });
    let (p, proxy) = http_proxy(&[app], "round-robin", "idle_ms = 600000", "");
    let answer = round_trip(proxy, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789");
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer:?}");
    assert!(answer.contains("the backend closed the connection before the whole body"), "{answer}");
    let line = p.wait_for("\"POST /up\"");
    assert!(line.contains(" 502 "), "{line}");
}

/// A crowd: more uploaders at once than workers (80 that stop to wait, 6 curls that never stop)
/// against a backend that refuses each upload, naming it, and then reads on or stops reading.
/// Each client gets its own refusal, none another's; a GET beside them is served; the backend is
/// not marked down.
#[test]
fn a_crowd_uploading_to_a_refusing_backend_gets_each_its_own_refusal_and_a_get_beside_it_is_served() {
    let app = backend(|mut s| {
        let (head, _) = read_head(&mut s);
        let path = head.split(' ').nth(1).unwrap_or("?").to_string();
        if !head.starts_with("POST") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            return;
        }
        let body = format!("too large {path}");
        let head = format!("HTTP/1.1 413 Content Too Large\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = s.write_all(format!("{head}{body}").as_bytes());
        if path.ends_with(['0', '2', '4', '6', '8']) {
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        } else {
            std::thread::sleep(Duration::from_secs(30));
        }
    });
    let (_p, proxy) = http_proxy(&[app], "round-robin", "", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 64 << 20]).expect("write");
    let waiters: Vec<_> = (0..80)
        .map(|i| std::thread::spawn(move || (i, upload_then_wait(proxy, &format!("/upload/w{i}")))))
        .collect();
    let curls: Vec<_> = (0..6)
        .map(|i| {
            let file = file.clone();
            std::thread::spawn(move || (i, curl_upload_to(&file, proxy, &format!("/upload/c{i}"))))
        })
        .collect();
    for round in 0..20 {
        let got = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("ok"),
            "GET {round} beside the crowd: {got}"
        );
    }
    for t in waiters {
        let (i, text) = t.join().expect("uploader");
        assert!(text.starts_with("HTTP/1.1 413 "), "uploader w{i}: {text}");
        assert!(text.ends_with(&format!("\r\n\r\ntoo large /upload/w{i}")), "uploader w{i}: {text}");
    }
    for t in curls {
        let (i, (status, sent, said)) = t.join().expect("curl");
        assert_eq!(status, 413, "curl c{i}: {said}");
        assert!(said.starts_with(&format!("too large /upload/c{i}\n413 ")), "curl c{i}: {said}");
        assert!(sent < 64 << 20, "curl c{i} sent the whole upload before its answer");
    }
    let after = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(after.starts_with("HTTP/1.1 200"), "the backend was marked down: {after}");
}

/// Starts nginx in the foreground on `port` with `server` as its one server block's body, and
/// waits until it accepts.
fn nginx(port: u16, server: &str) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log stderr;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p};\n  proxy_temp_path {p};\n\
         fastcgi_temp_path {p};\n  uwsgi_temp_path {p};\n  scgi_temp_path {p};\n\
         server {{\n    listen 127.0.0.1:{port};\n    {server}\n  }}\n}}\n",
        p = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
    let p = Proc::spawn(&mut cmd, Some(dir));
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx did not listen on {port}; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// The real nginx as the backend, compressing as it does by default for a direct client but not
/// for a request that says it was proxied (`gzip_proxied off` looks for `Via`): through the
/// proxy, as through HAProxy, the answer still comes gzipped.
#[test]
fn nginx_behind_the_proxy_still_gzips_as_behind_haproxy() {
    let port = crate::haproxy::free_port();
    let text = "compress me ".repeat(300);
    let server = format!(
        "gzip on;\n    gzip_types text/plain;\n    default_type text/plain;\n    \
                          location / {{ return 200 \"{text}\"; }}"
    );
    let _nginx = nginx(port, &server);
    let (_p, proxy) = http_proxy(&[([127, 0, 0, 1], port).into()], "round-robin", "", "");
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
    let direct = round_trip(([127, 0, 0, 1], port).into(), head);
    assert!(direct.contains("Content-Encoding: gzip\r\n"), "nginx gzips for a direct client: {direct}");
    let through = round_trip(proxy, head);
    assert!(through.starts_with("HTTP/1.1 200 "), "{through}");
    let head = through.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.contains("\r\nContent-Encoding: gzip"), "not gzipped through the proxy: {head}");
}

/// The real nginx as the backend, with `client_max_body_size 1k`: it answers a 64 MiB upload
/// with 413 as soon as it has the head, then reads on and discards. curl gets that 413 through
/// the proxy having sent a few MiB, as through HAProxy, where before it sent all 64 first.
#[test]
fn nginx_refusing_an_upload_over_client_max_body_size_is_answered_before_the_upload_ends() {
    let port = crate::haproxy::free_port();
    let _nginx = nginx(port, "client_max_body_size 1k;\n    location / { return 200 \"ok\\n\"; }");
    let (_p, proxy) = http_proxy(&[([127, 0, 0, 1], port).into()], "round-robin", "", "");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big");
    std::fs::write(&file, vec![b'x'; 64 << 20]).expect("write");
    for round in 0..3 {
        let (status, sent, said) = curl_upload(&file, proxy);
        assert_eq!(status, 413, "upload {round}: {said}");
        assert!(sent < 32 << 20, "upload {round}: curl sent {sent} bytes before the answer");
    }
    let after = round_trip(proxy, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(after.starts_with("HTTP/1.1 200") && after.ends_with("ok\n"), "{after}");
}

/// A backend that says `100 Continue` and its streamed `200` head in one write, then sends a
/// first piece of its answer while it reads the body: the socket then holds the middle of that
/// answer, which must not be taken for a refusal. The whole body reaches it, and the client
/// gets the whole answer.
#[test]
fn a_backend_streaming_its_200_right_behind_its_100_continue_still_gets_the_whole_body() {
    let (app, heard) = streaming_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"6\r\nfirst \r\n",
    );
    let (_p, proxy) = http_proxy(&[app], "round-robin", "", "");
    let mut s = connect(proxy);
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .expect("head");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut continued = [0u8; 25];
    s.read_exact(&mut continued).expect("the 100");
    assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");
    let text = upload_around(s, &heard);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("\r\n\r\n6\r\nfirst \r\n7\r\n1048576\r\n0\r\n\r\n"), "{text}");
}
