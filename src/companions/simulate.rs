//! simulate_client: concurrent clients that send lines (TCP mode) or HTTP requests through the
//! proxy, then report replies per backend, failures, and latency percentiles.
//!
//! In TCP mode each request is a new connection (so the proxy balances each one): send the
//! message, read the `[name] message` reply, optionally hold the connection open, close. In
//! HTTP mode each client keeps one keep-alive connection and reads `X-Served-By`. In ws mode
//! each client opens one WebSocket to `/ws` and sends its messages on it (see [`ws`]).
//! [`interactive`] is the one-connection, type-a-line mode (`nc` for machines without it).

pub mod interactive;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::backend::latency::Latencies;
use crate::h1::{self as h, Wire, MAX_HEAD};
use crate::logging::out;

mod dial;
mod ws;

pub use dial::{Dialed, Dialer};

/// A count from 1 to `most`: 0 clients or requests would print an empty table and exit 0.
fn count(most: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=most)
}

/// Sends concurrent requests through the proxy and shows how they were balanced.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "simulate_client",
    version,
    about = "simulate_client: load for lbproxy. Concurrent clients send lines (tcp) or requests (http) \
             through the proxy, then a table shows which backend answered how often, with latency \
             percentiles. --interactive: type lines yourself, like nc."
)]
pub struct ClientArgs {
    /// The proxy's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// Concurrent clients (threads), 1 to 10,000.
    #[arg(long, default_value_t = 10, value_parser = count(10_000))]
    pub clients: usize,
    /// Requests per client.
    #[arg(long, default_value_t = 10, value_parser = count(1_000_000_000))]
    pub requests: usize,
    /// tcp (a line per connection), http (keep-alive GET /) or ws (a WebSocket to /ws per
    /// client, a message per request).
    #[arg(long, value_enum, default_value_t = ClientMode::Tcp)]
    pub mode: ClientMode,
    /// The line sent in TCP mode.
    #[arg(long, default_value = "hello")]
    pub message: String,
    /// Keep each connection open this long after its reply (shows least-connections at work).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub hold_ms: u64,
    /// Give up on a reply after this long.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print a line per reply.
    #[arg(long)]
    pub verbose: bool,
    /// One connection: send the lines typed on stdin, print the replies (what `nc` would do).
    #[arg(long, short)]
    pub interactive: bool,
    /// Speak TLS to the proxy (its listener terminates TLS): https in http mode, wss in ws mode.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: trust this CA (PEM), e.g. certs/ca.pem from scripts/make_cert.sh; else the
    /// bundled Mozilla roots.
    #[arg(long, value_name = "PATH")]
    pub cacert: Option<std::path::PathBuf>,
    /// With --tls: accept any certificate (as curl -k), for trying things on your own machine.
    #[arg(long)]
    pub insecure: bool,
    /// With --tls: the name to ask for and verify (SNI); default: the target's address.
    #[arg(long, value_name = "NAME")]
    pub servername: Option<String>,
}

/// The mode's name as written on the command line (`tcp`, not `Tcp`).
fn mode_name(mode: ClientMode) -> String {
    mode.to_possible_value().map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_string())
}

/// The target address, parsed.
fn target(args: &ClientArgs) -> io::Result<SocketAddr> {
    crate::net::addr::parse_socket_addr(&args.target, false)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A refused connect to the proxy is the newcomer's most likely mistake: say what to check.
fn not_running_hint(target: SocketAddr, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        io::Error::new(
            e.kind(),
            format!("cannot connect to {target}: {e}; is proxy_server running on {target}?"),
        )
    } else {
        io::Error::new(e.kind(), format!("cannot connect to {target}: {e}"))
    }
}

/// The protocol spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientMode {
    Tcp,
    Http,
    Ws,
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Replies per backend name.
    pub per_backend: BTreeMap<String, u64>,
    /// HTTP status counts (HTTP mode).
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without a valid reply.
    pub failures: u64,
    /// The first failure's description.
    pub first_error: Option<String>,
    /// Latency of successful requests.
    pub latencies: Latencies,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    fn merge(&mut self, other: Report) {
        for (k, v) in other.per_backend {
            *self.per_backend.entry(k).or_default() += v;
        }
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(&other.latencies);
    }

    fn fail(&mut self, e: String) {
        self.failures += 1;
        self.first_error.get_or_insert(e);
    }

    /// The table printed at the end.
    pub fn table(&mut self, args: &ClientArgs) -> String {
        let total = (args.clients * args.requests) as f64;
        let mut out = format!(
            "target {}  mode {}  {} clients x {} requests in {:.2} s\n\n{:<24} {:>8} {:>7}\n",
            args.target,
            mode_name(args.mode),
            args.clients,
            args.requests,
            self.elapsed.as_secs_f64(),
            "backend",
            "replies",
            "share"
        );
        for (name, n) in &self.per_backend {
            out.push_str(&format!("{name:<24} {n:>8} {:>6.1}%\n", *n as f64 * 100.0 / total.max(1.0)));
        }
        for (status, n) in &self.statuses {
            out.push_str(&format!("status {status:<17} {n:>8}\n"));
        }
        out.push_str(&format!("{:<24} {:>8}\n", "failures", self.failures));
        out.push_str(&format!("latency ms: {}\n", self.latencies.summary_ms()));
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        if let Some(hint) = self.hint() {
            out.push_str(&format!("hint: {hint}\n"));
        }
        out
    }

    /// Nothing at all got through because nothing listens on the target: the run says only
    /// that, with what to check, instead of an empty table.
    pub fn nobody_listening(&self, args: &ClientArgs) -> Option<String> {
        let refused =
            self.first_error.as_deref().is_some_and(|e| e.starts_with("connect: ") && e.contains("refused"));
        (refused && self.per_backend.is_empty() && self.statuses.is_empty()).then(|| {
            format!(
                "cannot connect to {t}: connection refused; is proxy_server running on {t}?",
                t = args.target
            )
        })
    }

    /// Where to look when the proxy accepted but answered with a close, reset or error status:
    /// typically every backend is down, and the proxy's log names each failed connect.
    fn hint(&self) -> Option<&'static str> {
        let e = self.first_error.as_deref()?;
        let proxy_gave_up = e.contains("closed without a reply")
            || e.contains("reset")
            || e.contains("closed before a response")
            || e.starts_with("status 502")
            || e.starts_with("status 503")
            || e.starts_with("status 504");
        proxy_gave_up.then_some(
            "the proxy accepted and then closed the connection (or answered an error): its log \
             (its terminal, or logs/proxy.log) says why, e.g. no backend is up or every connect failed",
        )
    }
}

/// Runs the clients; the report says what happened (the caller decides the exit status).
/// With `--verbose`, the clients stop early once stdout's reader has gone ([`out::gone`]):
/// the rest of the run could no longer be shown.
pub fn run(args: &ClientArgs) -> io::Result<Report> {
    let target = target(args)?;
    let dialer = Dialer::new(args, target)?;
    let done = Arc::new(AtomicU64::new(0));
    let total = (args.clients * args.requests) as u64;
    let started = Instant::now();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let progress = {
        let done = done.clone();
        thread::spawn(move || {
            let tick = Duration::from_secs(1);
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(tick) {
                out::err_line(format_args!("progress: {}/{total} requests", done.load(Ordering::Relaxed)));
            }
        })
    };
    let mut handles = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let (args, dialer) = (args.clone(), dialer.clone());
        let done = done.clone();
        let spawned = thread::Builder::new().stack_size(256 * 1024).spawn(move || match args.mode {
            ClientMode::Tcp => tcp_client(&args, target, &dialer, &done),
            ClientMode::Http => http_client(&args, target, &dialer, client, &done),
            ClientMode::Ws => ws::client(&args, target, &dialer, &done),
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                drop(stop_tx);
                let _ = progress.join();
                return Err(e);
            }
        }
    }
    let mut report = Report::default();
    for handle in handles {
        match handle.join() {
            Ok(r) => report.merge(r),
            Err(_) => report.fail("a client thread panicked".to_string()),
        }
    }
    drop(stop_tx);
    let _ = progress.join();
    report.elapsed = started.elapsed();
    Ok(report)
}

fn tcp_client(args: &ClientArgs, target: SocketAddr, dialer: &Dialer, done: &AtomicU64) -> Report {
    let mut report = Report::default();
    for _ in 0..args.requests {
        if out::gone() {
            break;
        }
        let started = Instant::now();
        match tcp_exchange(target, &args.message, dialer) {
            Ok((name, stream)) => {
                report.latencies.push(started.elapsed());
                if args.verbose {
                    let _ = out::line(format_args!("[{name}] {}", args.message));
                }
                *report.per_backend.entry(name).or_default() += 1;
                if args.hold_ms > 0 {
                    thread::sleep(Duration::from_millis(args.hold_ms));
                }
                drop(stream);
            }
            Err(e) => report.fail(e),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    report
}

/// One connection: send the line, read `[name] line`, return the name.
fn tcp_exchange(target: SocketAddr, message: &str, dialer: &Dialer) -> Result<(String, Dialed), String> {
    let stream = dialer.dial(target).map_err(|e| format!("connect: {e}"))?;
    let mut wire = Wire::new(stream);
    wire.stream.write_all(format!("{message}\n").as_bytes()).map_err(|e| format!("send: {e}"))?;
    let n = match wire.line_len(MAX_HEAD) {
        Ok(Some(n)) => n,
        Ok(None) => return Err("connection closed without a reply".to_string()),
        Err(e) => return Err(format!("read: {e}")),
    };
    let line = String::from_utf8_lossy(&wire.buffered()[..n]).trim_end().to_string();
    let parsed = line.strip_prefix('[').and_then(|rest| rest.split_once("] "));
    match parsed {
        Some((name, echoed)) if echoed == message => Ok((name.to_string(), wire.stream)),
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

fn http_client(
    args: &ClientArgs,
    target: SocketAddr,
    dialer: &Dialer,
    client: usize,
    done: &AtomicU64,
) -> Report {
    let mut report = Report::default();
    let mut conn: Option<Wire<Dialed>> = None;
    for i in 0..args.requests {
        if out::gone() {
            break;
        }
        let started = Instant::now();
        let wire = match conn.take() {
            Some(w) => Ok(w),
            None => dialer.dial(target).map(Wire::new),
        };
        let result = wire.map_err(|e| format!("connect: {e}")).and_then(|mut wire| {
            let outcome = http_exchange(&mut wire, &args.target, client, i)?;
            Ok((outcome, wire))
        });
        match result {
            Ok(((status, name, keep), wire)) => {
                report.latencies.push(started.elapsed());
                *report.statuses.entry(status).or_default() += 1;
                if args.verbose {
                    let _ = out::line(format_args!("{status} from {name}"));
                }
                if (200..400).contains(&status) {
                    *report.per_backend.entry(name).or_default() += 1;
                } else {
                    report.fail(format!("status {status} from {name}"));
                }
                if keep {
                    conn = Some(wire);
                }
            }
            Err(e) => report.fail(e),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    report
}

/// One GET: returns (status, X-Served-By, whether the connection stays open).
fn http_exchange(
    wire: &mut Wire<Dialed>,
    host: &str,
    client: usize,
    i: usize,
) -> Result<(u16, String, bool), String> {
    wire.stream
        .write_all(format!("GET /?client={client}&n={i} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let head = wire.read_head(MAX_HEAD, |buf| {
        Ok(h::head::parse_response(buf, "GET")?.map(|(len, r)| {
            let name = r.fields.get("x-served-by").unwrap_or_else(|| "(no X-Served-By)".to_string());
            (len, (r.status, name, r.body, r.keep_alive))
        }))
    });
    let (status, name, kind, keep) = match head {
        Ok(head) => head,
        Err(h::HeadError::Closed) => return Err("connection closed before a response".to_string()),
        Err(h::HeadError::Io(e)) => return Err(format!("read: {e}")),
        Err(h::HeadError::Invalid(why)) => return Err(why),
    };
    wire.copy_body(kind, &mut io::sink()).map_err(|e| format!("body: {e}"))?;
    Ok((status, name, keep && kind != h::BodyKind::UntilClose))
}
