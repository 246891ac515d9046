//! dummy_server: a test backend. It echoes lines as `[<name>] <line>`, and speaks HTTP/1.1 with
//! keep-alive when a connection opens with an HTTP request line (see [`http`]).

pub mod http;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;

use crate::error::Error;
use crate::http::Wire;

/// A dummy backend for the proxy: line echo and HTTP/1.1.
#[derive(Debug, Clone, Parser)]
#[command(name = "dummy_server", version, about)]
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
    /// Directory for backend_<port>.log; empty for terminal only.
    #[arg(long, value_name = "DIR", default_value = "logs")]
    pub log_dir: PathBuf,
}

/// What every connection handler needs.
#[derive(Debug)]
pub struct Dummy {
    /// The server's name.
    pub name: String,
    /// Delay before each reply.
    pub delay: Duration,
}

/// A bound dummy server.
pub struct DummyServer {
    listener: TcpListener,
    addr: SocketAddr,
    dummy: Arc<Dummy>,
    log_file: Option<PathBuf>,
}

impl DummyServer {
    /// Binds the port given in `args`.
    pub fn bind(args: &DummyArgs) -> Result<DummyServer, Error> {
        let addr = crate::config::parse_socket_addr(&format!("{}:{}", args.host, args.port), true)
            .map_err(|e| Error::Resource(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = crate::server::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        let name = args.name.clone().unwrap_or_else(|| format!("dummy-{}", addr.port()));
        let log_file = (!args.log_dir.as_os_str().is_empty())
            .then(|| args.log_dir.join(format!("backend_{}.log", addr.port())));
        let dummy = Arc::new(Dummy { name, delay: Duration::from_millis(args.delay_ms) });
        Ok(DummyServer { listener, addr, dummy, log_file })
    }

    /// The log file this server should write, if any.
    pub fn log_file(&self) -> Option<&std::path::Path> {
        self.log_file.as_deref()
    }

    /// Accepts forever, one thread per connection.
    pub fn run(self) -> Result<(), Error> {
        log::info!("{} listening on {}", self.dummy.name, self.addr);
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("accept: {e}");
                    if crate::error::is_fd_exhaustion(&e) {
                        thread::sleep(Duration::from_millis(50));
                    }
                    continue;
                }
            };
            let dummy = self.dummy.clone();
            let spawned = thread::Builder::new()
                .stack_size(crate::pool::STACK_SIZE)
                .spawn(move || serve(stream, peer, &dummy));
            if let Err(e) = spawned {
                log::error!("cannot start a thread for {peer}: {e}");
            }
        }
    }
}

/// Serves one connection: HTTP if it opens with a request line, line echo otherwise.
fn serve(stream: TcpStream, peer: SocketAddr, dummy: &Dummy) {
    let _ = stream.set_nodelay(true);
    let mut wire = Wire::new(stream);
    let first = match wire.line_len(crate::http::MAX_HEAD) {
        Ok(Some(n)) => n,
        Ok(None) => {
            log::info!("connection from {peer} closed without data");
            return;
        }
        Err(e) => {
            log::info!("connection from {peer}: {e}");
            return;
        }
    };
    if http::is_request_line(&wire.buffered()[..first]) {
        log::info!("connection from {peer} (http)");
        http::serve(&mut wire, peer, dummy);
    } else {
        log::info!("connection from {peer} (lines)");
        serve_lines(&mut wire, peer, dummy);
    }
}

fn serve_lines(wire: &mut Wire<TcpStream>, peer: SocketAddr, dummy: &Dummy) {
    let mut count = 0u64;
    loop {
        let n = match wire.line_len(crate::http::MAX_HEAD) {
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
        if !dummy.delay.is_zero() {
            thread::sleep(dummy.delay);
        }
        if let Err(e) = wire.stream.write_all(format!("[{}] {line}\n", dummy.name).as_bytes()) {
            log::warn!("{peer}: reply failed: {e}");
            break;
        }
        count += 1;
    }
    log::info!("connection from {peer} closed after {count} message(s)");
}
