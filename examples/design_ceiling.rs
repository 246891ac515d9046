//! The blocking design's ceiling: the least a thread-per-connection blocking HTTP relay can do.
//!
//! A yardstick for issue #18, not a proxy: each client connection gets a thread of its own
//! (no channel, no pool, no parker) and a backend connection of its own (no pooling lock). A
//! request is read until its blank line (bodies are not handled), written to the backend as
//! it came, and the response is read by its `Content-Length` and written back. No balancing,
//! no header rewriting, no logging, no timeouts. It pays exactly the design's own costs per
//! request: two blocking waits (the client's request, the backend's response), two reads and
//! two writes. Threads run under `SCHED_BATCH`, as `proxy_server`'s workers do.
//!
//! ```text
//! cargo build --release --example design_ceiling
//! scripts/ab.sh target/release/examples/design_ceiling target/release/proxy_server
//! ```
//!
//! It takes `--config FILE` (so `scripts/ab.sh` can start it) and reads only `listen = ADDR`
//! and the first member (`NAME = HOST:PORT`) of `[backends]` or of a `[pool.*]`; routes are
//! ignored. Never expose it: it trusts its peers.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => &args[i + 1],
        _ => return Err(io::Error::other("usage: design_ceiling --config FILE")),
    };
    let (listen, backend) = addresses(&std::fs::read_to_string(path)?)?;
    let listener = TcpListener::bind(&listen)?;
    eprintln!("design_ceiling: listening on {listen}, relaying to {backend}");
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let backend = backend.clone();
        let spawned = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || {
            batch_scheduling();
            if let Err(e) = relay(client, &backend) {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("design_ceiling: {e}");
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("design_ceiling: no thread: {e}");
        }
    }
    Ok(())
}

/// `listen` from `[proxy]` and the first member of `[backends]` (or of the first `[pool.*]`).
fn addresses(ini: &str) -> io::Result<(String, String)> {
    let (mut section, mut listen, mut backend) = (String::new(), None, None);
    for line in ini.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            let (key, value) = (key.trim(), value.trim().to_string());
            if section == "[proxy]" && key == "listen" {
                listen = Some(value);
            } else if (section == "[backends]" || section.starts_with("[pool.")) && backend.is_none() {
                // A member is `NAME = HOST:PORT [weight=N …]`; settings (`resolve_ms = …`) are not.
                let addr = value.split_whitespace().next().unwrap_or("");
                if addr.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
                    backend = Some(addr.to_string());
                }
            }
        }
    }
    match (listen, backend) {
        (Some(l), Some(b)) => Ok((l, b)),
        _ => Err(io::Error::other("the config needs [proxy] listen and one [backends] member")),
    }
}

/// Serves one client's requests in order over one backend connection of its own.
fn relay(mut client: TcpStream, backend: &str) -> io::Result<()> {
    let mut upstream = TcpStream::connect(backend)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (mut request, mut response) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let len = read_head(&mut client, &mut request)?;
        upstream.write_all(&request[..len])?;
        let len = read_response(&mut upstream, &mut response)?;
        client.write_all(&response[..len])?;
    }
}

/// Reads until a blank line ends the head; returns its length.
fn read_head(from: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    read_until(from, buf, |bytes| bytes.windows(4).any(|w| w == b"\r\n\r\n").then_some(bytes.len()))
}

/// Reads one response, framed by `Content-Length`; returns its length.
fn read_response(from: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    read_until(from, buf, |bytes| {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = parsed.parse(bytes) else { return None };
        let body = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())?;
        (bytes.len() >= head + body).then_some(head + body)
    })
}

/// Reads into `buf` until `done` finds a whole message in what has arrived (its length); a
/// response it cannot frame (malformed, no `Content-Length`) ends only at the buffer's end.
fn read_until(
    from: &mut TcpStream,
    buf: &mut [u8],
    done: impl Fn(&[u8]) -> Option<usize>,
) -> io::Result<usize> {
    let mut len = 0;
    loop {
        let n = from.read(&mut buf[len..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        if let Some(whole) = done(&buf[..len]) {
            return Ok(whole);
        }
        if len == buf.len() {
            return Err(io::Error::other("message too large or unframed"));
        }
    }
}

/// `SCHED_BATCH`, as `proxy_server`'s workers: a wake-up does not preempt the running thread.
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param for SCHED_BATCH (priority 0); pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}
