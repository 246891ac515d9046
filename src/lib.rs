//! lbproxy: the classic load-balancing proxy, as a thread pool of blocking workers.
//!
//! One acceptor thread accepts connections and sends them on a bounded channel; a fixed pool
//! of workers receives them, asks the [`balancer`] for a backend (choose-and-count in one
//! locked step), connects through [`upstream`] (trying the next backend on failure) and relays
//! bytes with blocking reads and writes ([`relay`], [`http`]). See [`server`] for the picture.
//!
//! Modules, in layers; each imports only from its own layer or those below it, and no two
//! import each other, at any level (nor two files of one folder). This list is the one statement
//! of the layers: `scripts/check_layers.py` reads it and checks every import of every file
//! against it in the test command.
//! - base: [`clock`], [`config`] (INI and flags -> validated settings, from one table of keys),
//!   [`error`] (the process's errors and one failure model for both modes), [`events`] (the
//!   dashboard's event bus), [`logging`] (the main and access logs, reopened on SIGUSR1; and
//!   stdout, quiet when its reader has gone),
//!   [`net`] (sockets, `host:port` addresses, the PROXY protocol), [`h1`] (the HTTP/1.1 wire
//!   format), [`tls`] (certificates, SNI, reload, the backend CA; the plain-or-TLS stream and
//!   its handshakes), [`threads`] (worker pools, the thread budget, stack give-back).
//! - backend: [`backend`] (identity, limits, counters, idle connections; health hysteresis,
//!   latency).
//! - selection: [`balancer`] (six algorithms; the one place where choosing meets health; the
//!   health-check thread).
//! - routing: [`route`] (pools behind the listener, the routes between them, swapped whole).
//! - connections: [`upstream`] (the one connect path), [`conn`] (in-flight connections and the
//!   client's TLS handshake), [`stats`], [`park`] (idle connections wait in one epoll set),
//!   [`relay`] (bytes both ways, plain or TLS on either side).
//! - modes: [`context`] (what every worker shares), [`tcp`], [`http`], [`admin`].
//! - process: [`server`] (acceptor, signals, reload and DNS, takeover), [`cli`], [`companions`]
//!   ([`companions::dummy`] and [`companions::simulate`]).

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod backend;
pub mod balancer;
pub mod cli;
pub mod clock;
pub mod companions;
pub mod config;
pub mod conn;
pub mod context;
pub mod error;
pub mod events;
pub mod h1;
pub mod http;
pub mod logging;
pub mod net;
pub mod park;
pub mod relay;
pub mod route;
pub mod server;
pub mod stats;
pub mod tcp;
pub mod threads;
pub mod tls;
pub mod upstream;

pub use error::{Error, Failure};
