//! Integration tests: the real proxy_server, dummy_server and simulate_client binaries, on
//! loopback ports chosen by the kernel.

mod access_log;
mod admin;
mod backend_tls;
mod bursts;
mod capacity;
mod dashboard;
mod faultlab;
mod fidelity;
mod first_hour;
mod haproxy;
mod health;
mod hostile;
mod http;
mod idle;
mod interim;
mod least_time;
mod limits;
mod ops;
mod outlier;
mod policy;
mod proxy_protocol;
mod quiet;

mod robust;
mod routing;
mod scale;
mod sizing;
mod slow_readers;
mod stdout;
mod streaming;
mod tcp;
mod tcp_waits;
mod terminal;
mod tls;
mod uploads;
mod util;
mod waits;
mod ws;
