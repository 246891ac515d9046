//! HTTPS termination and TCP over TLS, end to end, with certificates made by rcgen at test time
//! (never checked in).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::util::*;

/// A test CA and certificates it signs.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    /// A leaf for `names` (DNS names or IP literals): (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA as `ca.pem` and a leaf as `NAME.pem` + `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str, names: &[&str]) {
        let (cert, key) = self.leaf(names);
        std::fs::write(dir.join("ca.pem"), self.cert.pem()).expect("write ca");
        std::fs::write(dir.join(format!("{name}.pem")), cert).expect("write cert");
        std::fs::write(dir.join(format!("{name}.key")), key).expect("write key");
    }

    /// Writes the CA and `proxy.pem`/`proxy.key` for localhost (and 127.0.0.1) into a fresh
    /// directory; returns it (keep it while the proxy runs) and the `[tls]` lines naming them.
    pub fn proxy_tls(&self) -> (tempfile::TempDir, String) {
        let certs = tempfile::tempdir().expect("tempdir");
        self.write(certs.path(), "proxy", &["localhost", "127.0.0.1"]);
        let d = certs.path().display();
        let section = format!("[tls]\ncert = {d}/proxy.pem\nkey = {d}/proxy.key\n");
        (certs, section)
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// A rustls client trusting `ca`, for TLS 1.2 and 1.3 or only `version`.
pub fn client_config(
    ca: &Ca,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match version {
        Some(v) => builder.with_protocol_versions(&[v]),
        None => builder.with_safe_default_protocol_versions(),
    };
    Arc::new(builder.expect("versions").with_root_certificates(roots).with_no_client_auth())
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` over TLS as `name`, completing the handshake.
pub fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> std::io::Result<Tls> {
    let sock = connect(addr);
    let server = ServerName::try_from(name.to_string()).expect("server name");
    let conn = ClientConnection::new(config, server).expect("client");
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Writes a CA and `proxy.pem`/`proxy.key` for localhost into a fresh directory, and starts an
/// HTTP (or TCP) proxy over `addrs` with `[tls]` pointing at them plus `extra_tls` lines.
pub fn tls_proxy(
    ca: &Ca,
    mode: &str,
    addrs: &[SocketAddr],
    extra_tls: &str,
    timeouts: &str,
) -> (Proc, SocketAddr, tempfile::TempDir) {
    let (certs, tls) = ca.proxy_tls();
    let config = format!(
        "[proxy]\nmode = {mode}\nalgorithm = round-robin\nworkers = 16\n[admin]\nlisten = 127.0.0.1:0\n\
         [health]\nenabled = false\n[timeouts]\n{timeouts}\n{tls}{extra_tls}\n{}",
        backends_section(addrs)
    );
    let (p, addr) = proxy_with(&config, &[]);
    (p, addr, certs)
}

/// `GET path` with `Connection: close` over `tls`; the whole answer as text.
pub fn get_over(tls: &mut Tls, path: &str) -> String {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn stats(p: &Proc) -> serde_json::Value {
    serde_json::from_str(&http_get(admin_addr(p), "/stats").text()).expect("/stats is JSON")
}

#[test]
fn curl_https_keep_alive_spreads_over_backends_on_one_handshake_with_forwarded_proto_https() {
    let ds = dummies(3);
    let addrs: Vec<SocketAddr> = ds.iter().map(|d| d.1).collect();
    let ca = Ca::new("test CA");
    let (p, addr, certs) = tls_proxy(&ca, "http", &addrs, "", "");
    let port = addr.port();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(certs.path().join("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), "-v"])
        .args([url("/echo"), url("/"), url("/"), url("/")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // /echo shows the head the backend received.
    assert!(text.contains("X-Forwarded-Proto: https"), "{text}");
    for name in ["app1", "app2", "app3"] {
        assert!(text.contains(name), "{name} not reached: {text}");
    }
    assert!(err.contains("http/1.1"), "ALPN http/1.1 not negotiated: {err}");
    // Four requests, one connection, one handshake; /metrics says the same.
    let admin = admin_addr(&p);
    let s = proxy_stats(admin);
    assert_eq!(s["tls_handshakes"], 1, "{s}");
    assert_eq!(s["tls_handshake_failures"], 0, "{s}");
    let metrics = http_get(admin, "/metrics").text();
    assert!(metrics.contains("\nlb_tls_handshakes_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nlb_tls_handshake_failures_total 0\n"), "{metrics}");
}

#[test]
fn tls_1_2_and_1_3_both_work_and_min_version_1_3_refuses_1_2() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("test CA");
    let (_p, addr, _c) = tls_proxy(&ca, "http", &[backend], "", "");
    for (v, expect) in [(&rustls::version::TLS12, "TLSv1_2"), (&rustls::version::TLS13, "TLSv1_3")] {
        let mut tls = tls_connect(addr, client_config(&ca, Some(v)), "localhost").expect("handshake");
        assert_eq!(format!("{:?}", tls.conn.protocol_version().expect("version")), expect);
        let text = get_over(&mut tls, "/");
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("Hello from app1"), "{text}");
    }
    let (p, addr, _c) = tls_proxy(&ca, "http", &[backend], "min_version = 1.3", "");
    assert!(tls_connect(addr, client_config(&ca, Some(&rustls::version::TLS12)), "localhost").is_err());
    let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("1.3 handshake");
    assert!(get_over(&mut tls, "/").starts_with("HTTP/1.1 200"));
    assert_eq!(stats(&p)["tls_handshake_failures"], 1);
}

#[test]
fn sni_chooses_the_matching_certificate_and_the_default_otherwise() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("test CA");
    let sni = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.leaf(&["other.example"]);
    std::fs::write(sni.path().join("other.example.pem"), cert).expect("write");
    std::fs::write(sni.path().join("other.example.key"), key).expect("write");
    let (_p, addr, _c) =
        tls_proxy(&ca, "http", &[backend], &format!("sni_dir = {}", sni.path().display()), "");
    let leaf_names = |tls: &Tls| {
        let certs = tls.conn.peer_certificates().expect("certs");
        String::from_utf8_lossy(certs[0].as_ref()).into_owned()
    };
    let other = tls_connect(addr, client_config(&ca, None), "other.example").expect("SNI other.example");
    assert!(leaf_names(&other).contains("other.example"));
    // No match: the default (localhost) certificate, which verifies as localhost.
    let default = tls_connect(addr, client_config(&ca, None), "localhost").expect("SNI localhost");
    assert!(!leaf_names(&default).contains("other.example"));
    // An unknown name gets the default, which does not verify for that name.
    assert!(tls_connect(addr, client_config(&ca, None), "unknown.example").is_err());
}

#[test]
fn plain_http_on_the_tls_port_gets_nginx_400_and_garbage_and_stalls_are_closed() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("test CA");
    let (p, addr, _c) = tls_proxy(&ca, "http", &[backend], "", "header_ms = 500");
    // As nginx: plaintext 400 "The plain HTTP request was sent to HTTPS port", then close.
    let resp = http_get(addr, "/");
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("The plain HTTP request was sent to HTTPS port"), "{}", resp.text());
    // Garbage: closed without an answer.
    let mut s = connect(addr);
    s.write_all(b"\x00\x01\x02garbage\r\n\r\n").expect("send");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        // Closed with our bytes unread: a reset is a close too.
        Ok(_) => assert!(got.is_empty(), "{got:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // A client that stalls mid-handshake is closed at header_ms.
    // Timed from before the connect: header_ms runs from the accept.
    let started = Instant::now();
    let mut s = connect(addr);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01]).expect("send");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(5), "{took:?}");
    // The proxy is fine: a real client still gets through.
    let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    assert!(get_over(&mut tls, "/").starts_with("HTTP/1.1 200"));
    assert_eq!(stats(&p)["tls_handshake_failures"], 3);
}

#[test]
fn sighup_reloads_certificates_and_a_broken_one_is_refused_keeping_the_running_one() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("first CA");
    let (p, addr, certs) = tls_proxy(&ca, "http", &[backend], "", "");
    let mut open = tls_connect(addr, client_config(&ca, None), "localhost").expect("first CA");
    let second = Ca::new("second CA");
    second.write(certs.path(), "proxy", &["localhost"]);
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "TLS certificates reloaded");
    assert!(tls_connect(addr, client_config(&ca, None), "localhost").is_err(), "old cert still served");
    tls_connect(addr, client_config(&second, None), "localhost").expect("new cert");
    // The connection opened before the reload goes on.
    assert!(get_over(&mut open, "/").starts_with("HTTP/1.1 200"));
    std::fs::write(certs.path().join("proxy.pem"), "not a certificate").expect("break");
    let mark = p.mark();
    p.signal("HUP");
    p.wait_for_since(mark, "TLS certificates not reloaded");
    let errors = p.lines_from(mark).join("\n");
    assert!(errors.contains("config.ini:") && errors.contains("[tls] cert"), "{errors}");
    tls_connect(addr, client_config(&second, None), "localhost").expect("running cert kept");
}

#[test]
fn check_loads_the_pair_and_names_the_config_line_of_a_bad_file() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write(dir.path(), "a", &["localhost"]);
    ca.write(dir.path(), "b", &["localhost"]);
    let d = dir.path().display();
    let run = |cert: &str, key: &str| {
        let config = format!("[backends]\napp1 = 127.0.0.1:9\n[tls]\ncert = {d}/{cert}\nkey = {d}/{key}\n");
        std::fs::write(dir.path().join("config.ini"), config).expect("write");
        Command::new(PROXY)
            .arg("--config")
            .arg(dir.path().join("config.ini"))
            .arg("--check")
            .output()
            .expect("run")
    };
    let ok = run("a.pem", "a.key");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("cert = "));
    let mismatched = run("a.pem", "b.key");
    let err = String::from_utf8_lossy(&mismatched.stderr);
    assert_eq!(mismatched.status.code(), Some(2), "{err}");
    assert!(err.contains("config.ini:4: [tls] cert") && err.contains("do not belong together"), "{err}");
    let missing = run("nope.pem", "a.key");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("config.ini:4: [tls] cert") && err.contains("nope.pem"), "{err}");
    // The flags override the file and are named in errors.
    let out = Command::new(PROXY)
        .arg("--config")
        .arg(dir.path().join("config.ini"))
        .args(["--check", "--tls-cert"])
        .arg(dir.path().join("a.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("a.key"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tcp_mode_over_tls_relays_plaintext_to_the_backend_as_haproxy_ssl() {
    let (_d, backend) = dummy("app1");
    let ca = Ca::new("test CA");
    let (_p, addr, _c) = tls_proxy(&ca, "tcp", &[backend], "", "");
    let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
    for i in 0..50 {
        tls.write_all(format!("line {i}\n").as_bytes()).expect("send");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while tls.read(&mut byte).expect("read") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        assert_eq!(String::from_utf8_lossy(&line), format!("[app1] line {i}"));
    }
    // Half-close: close_notify reaches the backend as EOF, which closes its side too.
    tls.conn.send_close_notify();
    tls.flush().expect("flush");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_tls_client_gets_close_notify_before_the_close_as_nginx_sends_it() {
    // RFC 9112 9.8: the closure alert lets a client tell an answer read to its end from one cut
    // short (rustls reports a TCP close without it as an unexpected EOF).
    let ds = dummies(1);
    let ca = Ca::new("test CA");
    let (_p, addr, _certs) = tls_proxy(&ca, "http", &[ds[0].1], "", "");
    let requests: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for (request, status) in requests.into_iter().zip(["200", "200", "400"]) {
        let mut tls = tls_connect(addr, client_config(&ca, None), "localhost").expect("handshake");
        tls.write_all(request).expect("send");
        let mut out = Vec::new();
        let end = tls.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(end.is_ok(), "closed without close_notify ({end:?}) after {text}");
    }
}

/// A client whose handshake is under way, its Finished due: the proxy's flight is read.
pub fn mid_handshake(addr: SocketAddr, ca: &Ca) -> (ClientConnection, TcpStream) {
    let server = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(client_config(ca, None), server).expect("client");
    let mut sock = connect(addr);
    client.write_tls(&mut sock).expect("ClientHello");
    while !client.wants_write() {
        client.read_tls(&mut sock).expect("the proxy's flight");
        client.process_new_packets().expect("a valid flight");
    }
    (client, sock)
}

/// A handshake parked mid-way when the proxy stops goes on from its saved state within
/// `SHUTDOWN_GRACE`, and the request that follows it is answered (as nginx and HAProxy answer
/// a connection that was already theirs at a graceful stop), with `Connection: close`. One
/// whose client stays silent is closed then, counted and logged as a failed handshake.
#[test]
fn an_https_handshake_parked_at_a_stop_goes_on_from_its_state_and_is_answered() {
    let ds = dummies(1);
    let ca = Ca::new("test CA");
    let (p, addr, _certs) = tls_proxy(&ca, "http", &[ds[0].1], "", "header_ms = 600000");
    let (client, sock) = mid_handshake(addr, &ca);
    let (_silent, mut silent_sock) = mid_handshake(addr, &ca);
    wait_until("the handshakes wait in the parker", || stats(&p)["parked"].as_u64() >= Some(2));
    p.signal("TERM");
    p.wait_for("stopped accepting");
    let mut tls = StreamOwned::new(client, sock);
    let text = get_over(&mut tls, "/");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    p.wait_for("TLS handshake failed: not complete when the proxy stopped; closing");
    let mut rest = Vec::new();
    assert_eq!(silent_sock.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0), "{rest:?}");
}
