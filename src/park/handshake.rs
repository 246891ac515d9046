//! A TLS handshake waiting in the parker for the client's next flight: its state parked with
//! the connection, and a handshake that never finishes counted and logged as failed.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Parker;
use crate::conn::{Conn, PartialHead};
use crate::tls::stream::Pending;

impl Parker {
    /// Parks `conn` in the middle of its TLS handshake (`state`), its `header_ms` clock started
    /// at `started`, until the client's next flight arrives; at `deadline`, or when a stop's
    /// grace ends, it fails and is closed. Refused (the drain is over, or the socket cannot be
    /// watched), it fails and is closed at once.
    pub fn park_handshake(
        &self,
        mut conn: Conn,
        state: Pending,
        started: Instant,
        deadline: Option<Instant>,
    ) {
        conn.head = Some(PartialHead { started, bytes: Vec::new(), hello: false });
        conn.handshake = Some(state);
        if let Some(conn) = self.park_head(conn, deadline) {
            self.handshake_failed(&conn, "not complete, and it cannot wait for the client's next flight");
        }
    }

    /// Counts and logs a handshake that did not finish (the caller closes it), as a worker's
    /// failed handshake is.
    pub(super) fn handshake_failed(&self, conn: &Conn, why: &str) {
        if let Some(c) = self.counters.get() {
            c.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
        log::info!("conn {} from {}: TLS handshake failed: {why}; closing", conn.id, conn.peer);
    }
}
