//! The admin listener (`[admin] listen`): `GET /stats` (JSON), `GET /metrics` (Prometheus text)
//! and `GET /health` (the proxy's own liveness). One thread, one request per connection.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::balancer::Balancer;
use crate::h1::{HeadError, Wire, MAX_HEADERS};
use crate::stats::{metrics_text, stats_json, ProxyCounters};

/// What the admin endpoints read.
pub struct Admin {
    pub balancer: Arc<Balancer>,
    pub counters: Arc<ProxyCounters>,
}

/// Serves `listener` until `stopping` is set and the listener is shut down.
pub fn spawn(
    listener: Arc<TcpListener>,
    admin: Admin,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("admin".into()).spawn(move || {
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            match stream {
                Ok(s) => serve(s, &admin),
                Err(e) => log::debug!("admin accept: {e}"),
            }
        }
    })
}

fn serve(stream: TcpStream, admin: &Admin) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a: SocketAddr| a.to_string());
    let head = Wire::new(&stream).read_head(16 * 1024, |buf| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                Ok(Some((len, (req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string()))))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    });
    let (method, path) = match head {
        Ok(head) => head,
        Err(HeadError::Invalid(_)) => {
            respond(&stream, 400, "text/plain", "bad request\n");
            return;
        }
        Err(_) => return,
    };
    let path = path.split('?').next().unwrap_or("");
    log::debug!("admin: {peer} {method} {path}");
    match (method.as_str(), path) {
        ("GET", "/stats") => {
            respond(&stream, 200, "application/json", &stats_json(&admin.balancer, &admin.counters))
        }
        ("GET", "/metrics") => respond(
            &stream,
            200,
            "text/plain; version=0.0.4",
            &metrics_text(&admin.balancer, &admin.counters),
        ),
        ("GET", "/health") => respond(&stream, 200, "text/plain", "ok\n"),
        ("GET", _) => respond(&stream, 404, "text/plain", "try /stats, /metrics or /health\n"),
        _ => respond(&stream, 405, "text/plain", "GET only\n"),
    }
}

fn respond(mut stream: &TcpStream, status: u16, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::h1::reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
}
