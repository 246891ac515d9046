//! The parker's thread while it runs: stopping it, at a stop or when the handle drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Parker;

/// The parker's running thread: dropping it (or [`Running::stop`]) stops parking, closes every
/// parked connection, and joins the thread, whose sender then no longer holds the workers'
/// channel open.
pub struct Running {
    pub(super) parker: Arc<Parker>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops parking: idle connections close now (those parked a moment ago, and new ones
    /// that sent nothing yet, after [`SHUTDOWN_GRACE`](crate::conn::SHUTDOWN_GRACE)); quiet
    /// relays stay watched, so they drain, until this drops.
    pub fn stop_parking(&self) {
        self.parker.stop();
    }

    /// Stops the parker and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.parker.stop();
        self.parker.finished.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}
