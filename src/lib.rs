//! lbproxy: the classic load-balancing proxy, as a thread pool of blocking workers.
//!
//! One acceptor thread accepts connections and sends them on a bounded channel; a fixed pool
//! of workers receives them, asks the [`balancer`] for a backend (choose-and-count in one
//! locked step), connects through [`upstream`] (trying the next backend on failure) and relays
//! bytes with blocking reads and writes ([`relay`]). See [`server`] for the picture.
//!
//! Modules, one question each:
//! - [`config`]: INI file and flags -> validated settings, from one table of keys.
//! - [`addr`]: `host:port` and bare-port parsing, name resolution.
//! - [`budget`]: whether the configured threads fit the system's limits.
//! - [`backend`]: backends, their counters, limits and idle connections.
//! - [`health`]: whether they are alive (active checks, passive failures, slow start).
//! - [`discovery`]: how the set changes while running (SIGHUP reload, DNS).
//! - [`balancer`]: which backend goes next (four algorithms), with queueing when all are full.
//! - [`stats`], [`admin`]: latency histograms, /stats JSON, /metrics Prometheus text.
//! - [`upstream`]: reaching a backend, with retries.
//! - [`relay`], [`tcp`]: how bytes move in TCP mode.
//! - [`pool`], [`server`], [`registry`]: threads, accepting, draining.
//! - [`h1`]: the HTTP/1.1 wire format (heads, bodies, framing), shared by every HTTP speaker.
//! - [`http`]: HTTP mode, per-request balancing over pooled backend connections.
//! - [`dummy`], [`simulate`]: the dummy backend and the load-generating client.

pub mod addr;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod dummy;
pub mod error;
pub mod h1;
pub mod health;
pub mod http;
pub mod latency;
pub mod logging;
pub mod pool;
pub mod registry;
pub mod relay;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod stats;
pub mod tcp;
pub mod upstream;

pub use error::{Error, Fault};
