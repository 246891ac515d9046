//! lbproxy: the classic load-balancing proxy, as a thread pool of blocking workers.
//!
//! One acceptor thread accepts connections and sends them on a bounded channel; a fixed pool
//! of workers receives them, asks the [`balancer`] for a backend (choose-and-count in one
//! locked step), connects through [`upstream`] (trying the next backend on failure) and relays
//! bytes with blocking reads and writes ([`relay`], [`http`]). See [`server`] for the picture.
//!
//! Modules, in layers; each imports only from its own layer or those below it, and no two
//! import each other. This list is the one statement of the layers: `scripts/check_layers.py`
//! reads it and checks every import of every file against it in the test command.
//! - base: [`clock`], [`config`] (INI and flags -> validated settings, from one table of keys),
//!   [`addr`] (`host:port` parsing, resolution), [`budget`] (whether the threads fit the
//!   system's limits), [`error`] (the process's errors and one failure model for both modes),
//!   [`events`] (the dashboard's event bus), [`latency`], [`logging`], [`out`] (stdout, quiet
//!   when its reader has gone), [`net`] (sockets), [`h1`] (the HTTP/1.1 wire format), [`tls`]
//!   (certificates, SNI, reload, the backend CA), [`tls_stream`] (a plain-or-TLS stream and the
//!   handshakes), [`proxy_protocol`] (PROXY protocol v1/v2 headers, read and written),
//!   [`stack`] (idle threads give their stack pages back).
//! - health state: [`health`] (rise/fall hysteresis, passive failures, slow start).
//! - backend: [`backend`] (identity, limits, counters, idle connections).
//! - selection: [`balancer`] (five algorithms; the one place where choosing meets health).
//! - reaching backends, checking, rendering: [`upstream`] (the one connect path),
//!   [`checker`] (the health-check thread), [`stats`], [`registry`], [`pool`], [`park`] (idle
//!   connections wait in one epoll set), [`relay`],
//!   [`tunnel`] (the relay with TLS on either side), [`tls_accept`] (the listener's handshake),
//!   [`signals`].
//! - modes and operations: [`tcp`], [`http`], [`admin`], [`discovery`] (reload, DNS),
//!   [`dummy`] and [`simulate`] (the companions).
//! - process: [`acceptor`], [`takeover`] (handing the listeners to a new process), [`server`],
//!   [`cli`].

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod acceptor;
pub mod addr;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod budget;
pub mod checker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod dummy;
pub mod error;
pub mod events;
pub mod h1;
pub mod health;
pub mod http;
pub mod latency;
pub mod logging;
pub mod net;
pub mod out;
pub mod park;
pub mod pool;
pub mod proxy_protocol;
pub mod registry;
pub mod relay;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod stack;
pub mod stats;
pub mod takeover;
pub mod tcp;
pub mod tls;
pub mod tls_accept;
pub mod tls_stream;
pub mod tunnel;
pub mod upstream;

pub use error::{Error, Failure};
