//! Integration tests: the real proxy_server, dummy_server and simulate_client binaries, on
//! loopback ports chosen by the kernel.

mod faultlab;
mod http;
mod ops;
mod tcp;
mod util;
