//! HTTP mode: per-request balancing over pooled backend connections. The wire format itself
//! (heads, bodies, framing) lives in [`crate::h1`].

mod answer;
mod client;
pub mod context;
mod download;
mod exchange;
mod interim;
pub mod proxy;
mod timers;
mod upgrade;
mod watch;
