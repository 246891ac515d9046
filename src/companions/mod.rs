//! The companions the classic projects ship beside the proxy: `dummy_server`, the backend and
//! fault lab, and `simulate_client`, the load and interactive client. The proxy never imports
//! them.

pub mod dummy;
pub mod simulate;
