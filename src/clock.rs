//! The process clock: milliseconds since start, cheap enough to store in atomics.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process started (monotonic), counted from 1: a stored 0 means
/// "never" or "no deadline" wherever these are kept, so no real moment may read as 0.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
