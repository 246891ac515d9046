//! dummy_server: a test backend. It echoes lines as `[<name>] <line>`, and speaks HTTP/1.1 with
//! keep-alive when a connection opens with an HTTP request line (see [`http`]). As a fault lab
//! it misbehaves on request (see [`fault`]).

pub mod fault;
pub mod http;
pub mod reply;
pub mod ws;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};

use clap::builder::TypedValueParser;
use clap::Parser;

use crate::error::Error;
use crate::h1::Wire;
use fault::LineFault;

/// A dummy backend for the proxy: line echo and HTTP/1.1, and a fault lab of misbehaving
/// replies for testing how a proxy copes with broken backends.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dummy_server",
    version,
    about = "dummy_server: a test backend for lbproxy. Echoes each line as `[name] line` and speaks \
             HTTP/1.1 (X-Served-By: name); a fault lab of misbehaving replies on request.",
    after_long_help = fault::HELP
)]
pub struct DummyArgs {
    /// Port to listen on (0: any free port).
    #[arg(default_value_t = 9090)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Name shown in replies and `X-Served-By` (default: dummy-<port>).
    #[arg(long)]
    pub name: Option<String>,
    /// Simulated processing time per reply, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub delay_ms: u64,
    /// Fault lab: answer every Nth HTTP request (not `/health`) with 503, as a flaky
    /// application does (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fail_every: u64,
    /// On SIGTERM/SIGINT, keep serving this long with `/health` answering 503 (so load
    /// balancers take it out of rotation) before closing the listener.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub drain_ms: u64,
    /// Directory for backend_<port>.log; empty (`--log-dir ''`) for terminal only.
    // clap's PathBuf parser refuses an empty value, which is the documented "no file".
    #[arg(
        long,
        value_name = "DIR",
        default_value = "logs",
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    pub log_dir: PathBuf,
    /// Misbehave on every line (TCP echo) connection: `reset-after=N` resets each one right
    /// after echoing N lines. HTTP faults are chosen per request with `?fault=MODE` instead
    /// (listed in --help).
    #[arg(long, value_name = "NAME=VALUE", value_parser = LineFault::parse)]
    pub fault: Option<LineFault>,
    /// Log every health check too (`GET /health`, TCP connect-and-close); by default they are
    /// counted in one line a minute, so the terminal shows the traffic.
    #[arg(long, short)]
    pub verbose: bool,
}

/// What every connection handler needs.
#[derive(Debug)]
pub struct Dummy {
    /// The server's name.
    pub name: String,
    /// Delay before each reply.
    pub delay: Duration,
    /// Set while shutting down: `/health` answers 503.
    pub draining: AtomicBool,
    /// `--fail-every N`: every Nth request gets 503; and the requests counted for it.
    pub fail_every: u64,
    pub requests: std::sync::atomic::AtomicU64,
    /// The fault every line connection gets, if any.
    pub line_fault: Option<LineFault>,
    /// Health checks seen, summarised once a minute.
    pub checks: HealthChecks,
}

/// Counts health checks (a load balancer's `GET /health` or TCP connect-and-close, every few
/// seconds per balancer) so they are logged at debug level one by one and at info level only
/// as one line a minute: the terminal stays about the traffic.
#[derive(Debug)]
pub struct HealthChecks {
    since: Mutex<(Instant, u64)>,
}

impl Default for HealthChecks {
    fn default() -> HealthChecks {
        HealthChecks { since: Mutex::new((Instant::now(), 0)) }
    }
}

impl HealthChecks {
    /// How often the summary line is written (at most; only when checks keep coming).
    pub const EVERY: Duration = Duration::from_secs(60);

    /// Logs one health check (`what`, e.g. `GET /health from 127.0.0.1:40112`) at debug
    /// level, and the minute's count at info level once a minute has passed.
    pub fn seen(&self, what: std::fmt::Arguments<'_>) {
        log::debug!("health check: {what}");
        let mut since = self.since.lock();
        since.1 += 1;
        if since.0.elapsed() >= Self::EVERY {
            log::info!(
                "{} health check(s) in the last {} s (one by one with --verbose)",
                since.1,
                since.0.elapsed().as_secs()
            );
            *since = (Instant::now(), 0);
        }
    }
}

/// A bound dummy server.
pub struct DummyServer {
    listener: TcpListener,
    addr: SocketAddr,
    dummy: Arc<Dummy>,
    log_file: Option<PathBuf>,
    drain: Duration,
}

/// How dummy_server words an error: a port in use gets its own hint (the proxy's names
/// `--listen`, which dummy_server does not take: its port is an argument).
pub fn describe(e: &Error) -> String {
    match e {
        Error::Listen { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => format!(
            "listen on {addr}: {source}: is another dummy_server (or proxy_server) running there? \
             Pick another port: ./dummy_server {}",
            addr.port().checked_add(1).unwrap_or(9090)
        ),
        e => e.to_string(),
    }
}

impl DummyServer {
    /// Binds the port given in `args`.
    pub fn bind(args: &DummyArgs) -> Result<DummyServer, Error> {
        // Host and port come apart already: resolved as they are (`::1` or `[::1]`), never
        // joined into a `host:port` to be split again.
        let host = args.host.trim_start_matches('[').trim_end_matches(']');
        let addr = crate::net::addr::resolve(host, args.port)
            .map(|addrs| addrs[0])
            .map_err(|e| Error::Resource(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = crate::net::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        let name = args.name.clone().unwrap_or_else(|| format!("dummy-{}", addr.port()));
        let log_file = (!args.log_dir.as_os_str().is_empty())
            .then(|| args.log_dir.join(format!("backend_{}.log", addr.port())));
        let dummy = Arc::new(Dummy {
            name,
            delay: Duration::from_millis(args.delay_ms),
            draining: AtomicBool::new(false),
            fail_every: args.fail_every,
            requests: std::sync::atomic::AtomicU64::new(0),
            line_fault: args.fault,
            checks: HealthChecks::default(),
        });
        let drain = Duration::from_millis(args.drain_ms);
        Ok(DummyServer { listener, addr, dummy, log_file, drain })
    }

    /// The log file this server should write, if any.
    pub fn log_file(&self) -> Option<&std::path::Path> {
        self.log_file.as_deref()
    }

    /// Accepts, one thread per connection, until `stop` yields; then stops accepting (taking
    /// the connections already queued in the backlog first), lets open connections finish for
    /// up to `grace`, and returns.
    pub fn run(self, stop: Receiver<&'static str>, grace: Duration) -> Result<(), Error> {
        log::info!("{} listening on {}", self.dummy.name, self.addr);
        if let Some(f) = self.dummy.line_fault {
            log::info!("fault {f} on every line connection");
        }
        let open = Arc::new((Mutex::new(0usize), Condvar::new()));
        let listener = Arc::new(self.listener);
        let stopping = Arc::new(AtomicBool::new(false));
        // The address our own wake-up connection comes from: not a client, never counted.
        let wake_from = Arc::new(Mutex::new(None::<SocketAddr>));
        let dummy = self.dummy.clone();
        let acceptor = {
            let (listener, open, stopping, dummy, wake_from) =
                (listener.clone(), open.clone(), stopping.clone(), self.dummy, wake_from.clone());
            thread::Builder::new().name("accept".into()).spawn(move || {
                accept_loop(&listener, &dummy, &open, &stopping, &wake_from);
            })
        }
        .map_err(Error::Resource)?;
        let why = stop.recv().unwrap_or("shutdown");
        if !self.drain.is_zero() {
            log::info!("{why}: draining for {} ms (/health answers 503)", self.drain.as_millis());
            dummy.draining.store(true, Ordering::SeqCst);
            let _ = stop.recv_timeout(self.drain);
        }
        stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection of our own; the acceptor then takes what
        // already completed the handshake (closing a listener resets its backlog) and returns.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = wake_up(wake, &wake_from);
        let _ = acceptor.join();
        drop(listener);
        let (count, idle) = &*open;
        let mut n = count.lock();
        if *n == 0 {
            log::info!("{why}: stopped accepting; no connection open, exiting");
            return Ok(());
        }
        log::info!(
            "{why}: stopped accepting; waiting up to {} ms for {} open connection(s)",
            grace.as_millis(),
            *n
        );
        let deadline = Instant::now() + grace;
        while *n > 0 && !idle.wait_until(&mut n, deadline).timed_out() {}
        if *n == 0 {
            log::info!("every connection closed; exiting");
        } else {
            log::info!("exiting with {} connection(s) still open", *n);
        }
        Ok(())
    }
}

/// Connects to `to` from an address first noted in `from`, so the acceptor knows it for ours.
fn wake_up(to: SocketAddr, from: &Mutex<Option<SocketAddr>>) -> std::io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    let any: SocketAddr =
        if to.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
    sock.bind(&any.into())?;
    *from.lock() = sock.local_addr()?.as_socket();
    sock.connect_timeout(&to.into(), Duration::from_secs(1))
}

fn accept_loop(
    listener: &TcpListener,
    dummy: &Arc<Dummy>,
    open: &Arc<(Mutex<usize>, Condvar)>,
    stopping: &AtomicBool,
    wake_from: &Mutex<Option<SocketAddr>>,
) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                log::warn!("accept: {e}");
                if crate::net::is_fd_exhaustion(&e) {
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if stopping.load(Ordering::SeqCst) && *wake_from.lock() == Some(peer) {
            // Our own wake-up: not a client.
            let _ = listener.set_nonblocking(true);
            continue;
        }
        let _ = stream.set_nonblocking(false);
        *open.0.lock() += 1;
        let (dummy, open) = (dummy.clone(), open.clone());
        let spawned = thread::Builder::new().stack_size(crate::threads::pool::STACK_SIZE).spawn(move || {
            serve(stream, peer, &dummy);
            let mut n = open.0.lock();
            *n -= 1;
            if *n == 0 {
                open.1.notify_all();
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start a thread for {peer}: {e}");
        }
        if stopping.load(Ordering::SeqCst) {
            // Drain the backlog without blocking; WouldBlock ends the loop.
            let _ = listener.set_nonblocking(true);
        }
    }
}

/// Serves one connection: HTTP if it opens with a request line, line echo otherwise.
fn serve(stream: TcpStream, peer: SocketAddr, dummy: &Dummy) {
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(stream);
    let first = match wire.line_len(crate::h1::MAX_HEAD) {
        Ok(Some(n)) => n,
        Ok(None) => {
            // What a TCP health check looks like: connect, then close.
            dummy.checks.seen(format_args!("connection from {peer} closed without data"));
            return;
        }
        Err(e) => {
            log::info!("connection from {peer}: {e}");
            return;
        }
    };
    if http::is_request_line(&wire.buffered()[..first]) {
        if http::is_health_check(&wire.buffered()[..first]) {
            log::debug!("connection from {peer} (http)");
        } else {
            log::info!("connection from {peer} (http)");
        }
        http::serve(&mut wire, peer, dummy);
    } else {
        log::info!("connection from {peer} (lines)");
        serve_lines(&mut wire, peer, dummy);
    }
}

fn serve_lines(wire: &mut Wire<TcpStream>, peer: SocketAddr, dummy: &Dummy) {
    let mut count = 0u64;
    loop {
        let n = match wire.line_len(crate::h1::MAX_HEAD) {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                log::warn!("{peer}: {e}");
                break;
            }
        };
        let text = String::from_utf8_lossy(&wire.buffered()[..n]);
        let line = text.trim_end_matches(['\r', '\n']).to_string();
        wire.consume(n);
        log::info!("{peer} says: {line}");
        if line_fault_due(dummy, count) {
            // reset-after=0: this line is not echoed.
            reset_line_connection(wire, peer, dummy);
            return;
        }
        if !dummy.delay.is_zero() {
            thread::sleep(dummy.delay);
        }
        if let Err(e) = wire.stream.write_all(format!("[{}] {line}\n", dummy.name).as_bytes()) {
            log::warn!("{peer}: reply failed: {e}");
            break;
        }
        count += 1;
        if line_fault_due(dummy, count) {
            reset_line_connection(wire, peer, dummy);
            return;
        }
    }
    log::info!("connection from {peer} closed after {count} message(s)");
}

/// Whether the line fault fires once `echoed` lines have been echoed.
fn line_fault_due(dummy: &Dummy, echoed: u64) -> bool {
    matches!(dummy.line_fault, Some(LineFault::ResetAfter(n)) if echoed >= n)
}

fn reset_line_connection(wire: &Wire<TcpStream>, peer: SocketAddr, dummy: &Dummy) {
    if let Some(f) = dummy.line_fault {
        log::info!("fault {f} on line connection from {peer}");
    }
    // Let the last echo reach the peer first: a reset discards unsent bytes.
    thread::sleep(fault::PAUSE);
    fault::reset(&wire.stream);
}
