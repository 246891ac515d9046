//! `--mode ws`: each client opens one WebSocket to `/ws` through the proxy and sends its
//! messages on it, reading each `[name] message` echo (the dummy server's), so the table shows
//! how the WebSocket connections were balanced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tungstenite::Message;

use super::{ClientArgs, Dialer, Report};
use crate::logging::out;

/// One WebSocket client: `args.requests` messages on one connection.
pub(super) fn client(args: &ClientArgs, target: SocketAddr, dialer: &Dialer, done: &AtomicU64) -> Report {
    let mut report = Report::default();
    let stream = match dialer.dial(target) {
        Ok(s) => s,
        Err(e) => {
            for _ in 0..args.requests {
                report.fail(format!("connect: {e}"));
            }
            done.fetch_add(args.requests as u64, Ordering::Relaxed);
            return report;
        }
    };
    let scheme = if dialer.is_tls() { "wss" } else { "ws" };
    let mut ws = match tungstenite::client::client(format!("{scheme}://{}/ws", args.target), stream) {
        Ok((ws, _)) => ws,
        Err(e) => {
            for _ in 0..args.requests {
                report.fail(format!("WebSocket handshake: {e}"));
            }
            done.fetch_add(args.requests as u64, Ordering::Relaxed);
            return report;
        }
    };
    for i in 0..args.requests {
        if out::gone() {
            break;
        }
        let started = Instant::now();
        let message = format!("{} {i}", args.message);
        let reply = match ws.send(Message::Text(message.clone())) {
            Ok(()) => ws.read(),
            Err(e) => Err(e),
        };
        match reply {
            Ok(Message::Text(t)) => match t.strip_prefix('[').and_then(|r| r.split_once("] ")) {
                Some((name, echoed)) if echoed == message => {
                    report.latencies.push(started.elapsed());
                    if args.verbose {
                        let _ = out::line(format_args!("{t}"));
                    }
                    *report.per_backend.entry(name.to_string()).or_default() += 1;
                }
                _ => report.fail(format!("unexpected reply {t:?}")),
            },
            Ok(other) => report.fail(format!("unexpected message {other:?}")),
            Err(e) => {
                report.fail(format!("WebSocket: {e}"));
                done.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    let _ = ws.close(None);
    // Bounded: the echo server answers the close at once, and reads time out.
    for _ in 0..16 {
        if ws.read().is_err() {
            break;
        }
    }
    report
}
