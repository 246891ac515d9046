//! PROXY protocol interop with the real HAProxy (installed by .ci/run): HAProxy in front of us
//! with `send-proxy-v2`, and HAProxy behind us with `accept-proxy`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use lbproxy::net::proxy_protocol::{self, Addresses, Version};

use crate::util::*;

/// A loopback port free right now (HAProxy binds it itself).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts `haproxy -db` with `config` and waits until `addr` accepts.
fn haproxy(config: &str, addr: SocketAddr) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let p = Proc::spawn(&mut cmd, Some(dir));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not listen on {addr}; log:\n{}", p.log_text());
        thread::sleep(Duration::from_millis(20));
    }
    p
}

const DEFAULTS: &str = "defaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n";

#[test]
fn haproxy_in_front_with_send_proxy_v2_gives_us_each_clients_source_address_as_haproxy_does() {
    let (_d, backend) = dummy("app1");
    let config = format!(
        "[proxy]\nmode = http\naccept_proxy = v2\nworkers = 8\n[health]\nenabled = false\n{}",
        backends_section(&[backend])
    );
    let (_p, ours) = proxy_with(&config, &[]);
    let front: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = format!(
        "global\n  log stderr format raw local0\n{DEFAULTS}  mode tcp\nfrontend f\n  bind {front}\n  default_backend b\n\
         backend b\n  server ours {ours} send-proxy-v2\n"
    );
    let _h = haproxy(&cfg, front);
    for from in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        let mut s = connect_from(from, front);
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
        let r = read_response(&mut lbproxy::h1::Wire::new(s), "GET");
        let text = r.text();
        let xff: Vec<&str> =
            text.lines().filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:")).collect();
        let want = format!("X-Forwarded-For: {}", std::net::Ipv4Addr::from(from));
        assert_eq!(xff, [want.as_str()], "{text}");
    }
}

#[test]
fn haproxy_behind_us_with_accept_proxy_sees_and_logs_the_client_address_we_send() {
    let back: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = format!(
        "global\n  log stderr format raw local0\n{DEFAULTS}  mode http\n  log global\n\
         frontend f\n  bind {back} accept-proxy\n  log-format \"haproxy saw client=%ci:%cp path %HP\"\n\
         http-request return status 200 content-type text/plain lf-string \"src=%[src]\\n\"\n"
    );
    let h = haproxy(&cfg, back);
    for (version, client) in [("v1", "10.1.2.3:40001"), ("v2", "10.1.2.4:40002")] {
        // Health checks on, going down at the first failure: a check without a PROXY header
        // would be refused by HAProxy and take the backend down. Ours send LOCAL/UNKNOWN.
        let config = format!(
            "[proxy]\nmode = http\naccept_proxy = v1\nworkers = 8\n[health]\ninterval_ms = 50\nfall = 1\n\
             path = /health-{version}\n[backends]\nha = {back} send_proxy={version}\n"
        );
        let (_p, ours) = proxy_with(&config, &[]);
        h.wait_for(&format!("path /health-{version}"));
        h.wait_for(&format!("path /health-{version}"));
        let mut s = connect(ours);
        let header =
            Addresses { src: client.parse().expect("client"), dst: "10.0.0.1:80".parse().expect("dst") };
        s.write_all(&proxy_protocol::encode(Version::V1, header)).expect("header");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
        let r = read_response(&mut lbproxy::h1::Wire::new(s), "GET");
        let ip = client.rsplit_once(':').expect("port").0;
        assert_eq!((r.status, r.text()), (200, format!("src={ip}\n")), "{version}");
        h.wait_for(&format!("haproxy saw client={client}"));
    }
}
