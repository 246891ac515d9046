//! Fixed pools of long-lived worker threads fed by a bounded crossbeam channel.
//!
//! Each thread of a [`threadpool::ThreadPool`] runs one loop that receives jobs until every
//! sender is gone. A panicking job is caught and logged, so the thread (and the pool's size)
//! survives. Stacks are small so that thousands of workers fit in memory.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::Receiver;
use threadpool::ThreadPool;

/// Stack size of every pool thread. Relay buffers live on the heap, so 128 KiB is ample even
/// for debug builds, and only the touched pages are resident.
pub const STACK_SIZE: usize = 128 * 1024;

/// A fixed set of threads each running `handle` on jobs from one channel.
pub struct WorkerPool {
    pool: ThreadPool,
}

impl WorkerPool {
    /// Starts `size` threads named `name` that receive from `jobs`. Each thread owns a scratch
    /// value made by `State::default()` (a reusable buffer, say) passed to every call.
    pub fn start<J, S, F>(name: &str, size: usize, jobs: Receiver<J>, handle: F) -> WorkerPool
    where
        J: Send + 'static,
        S: Default,
        F: Fn(J, &mut S) + Send + Sync + Clone + 'static,
    {
        let pool = threadpool::Builder::new()
            .num_threads(size)
            .thread_name(name.to_string())
            .thread_stack_size(STACK_SIZE)
            .build();
        for _ in 0..size {
            let jobs = jobs.clone();
            let handle = handle.clone();
            pool.execute(move || {
                let mut state = S::default();
                while let Ok(job) = jobs.recv() {
                    if catch_unwind(AssertUnwindSafe(|| handle(job, &mut state))).is_err() {
                        log::error!("a job panicked; the worker carries on");
                        state = S::default();
                    }
                }
            });
        }
        WorkerPool { pool }
    }

    /// Waits until every thread has finished, that is until the channel is closed and drained.
    pub fn join(&self) {
        self.pool.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_every_job_survives_panics_and_joins_when_closed() {
        let (tx, rx) = crossbeam_channel::bounded::<usize>(4);
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let pool = WorkerPool::start("test", 3, rx, move |job, _: &mut ()| {
            if job % 10 == 0 {
                panic!("job {job} fails on purpose");
            }
            counter.fetch_add(1, Ordering::SeqCst);
        });
        for job in 1..=100 {
            tx.send(job).expect("send");
        }
        drop(tx);
        pool.join();
        assert_eq!(done.load(Ordering::SeqCst), 90);
    }
}
