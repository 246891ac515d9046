//! Fixed pools of long-lived worker threads fed by a bounded crossbeam channel.
//!
//! The Rust Book's pool: a `Vec` of join handles and the channel's sender, which [`Drop`] (or
//! [`WorkerPool::join`]) closes before joining, so every thread finishes the jobs already queued
//! and returns. Threads start with `std::thread::Builder`, so a spawn failure (thread or memory
//! map limits) is an `io::Error` for the caller, not a panic; the threads already started are
//! then stopped and joined. A panicking job is caught and logged, so the thread (and the pool's
//! size) survives. Stacks are small so that thousands of workers fit in memory, and every pool
//! thread runs under `SCHED_BATCH` (see [`batch_scheduling`]).

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Stack size of every pool thread. Relay buffers live on the heap, so 128 KiB is ample even
/// for debug builds, and only the touched pages are resident.
pub const STACK_SIZE: usize = 128 * 1024;

/// A fixed set of threads each running a handler on jobs of type `J` from one bounded channel.
pub struct WorkerPool<J> {
    threads: Vec<JoinHandle<()>>,
    /// The pool's own sender; the threads end when every sender is gone and the queue is empty.
    jobs: Sender<J>,
    /// A receiver, for the queue's length.
    queue: Receiver<J>,
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `size` threads named `name-<n>` receiving from a new channel that holds up to
    /// `queue` waiting jobs. Each thread owns a scratch value made by `S::default()` (reusable
    /// buffers, say) passed to every call. Every thread is running when this returns; if one
    /// cannot be started, those already started are stopped and joined and the error returned.
    pub fn start<S, F>(name: &str, size: usize, queue: usize, handle: F) -> io::Result<WorkerPool<J>>
    where
        S: Default,
        F: Fn(J, &mut S) + Send + Clone + 'static,
    {
        Self::start_with(name, size, queue, handle, |_| STACK_SIZE)
    }

    fn start_with<S, F>(
        name: &str,
        size: usize,
        queue: usize,
        handle: F,
        stack: impl Fn(usize) -> usize,
    ) -> io::Result<WorkerPool<J>>
    where
        S: Default,
        F: Fn(J, &mut S) + Send + Clone + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded::<J>(queue);
        let mut pool = WorkerPool { threads: Vec::with_capacity(size), jobs: tx, queue: rx.clone() };
        for i in 0..size {
            let (jobs, handle) = (rx.clone(), handle.clone());
            let spawned =
                thread::Builder::new().name(format!("{name}-{i}")).stack_size(stack(i)).spawn(move || {
                    batch_scheduling();
                    let mut state = S::default();
                    loop {
                        let job = match jobs.recv_timeout(crate::stack::TRIM_AFTER) {
                            Ok(job) => job,
                            Err(RecvTimeoutError::Timeout) => {
                                // Idle: give back the scratch buffers and the stack pages the
                                // last jobs touched, then wait as long as it takes.
                                state = S::default();
                                crate::stack::give_back();
                                match jobs.recv() {
                                    Ok(job) => job,
                                    Err(_) => break,
                                }
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        };
                        run_job(&handle, job, &mut state);
                    }
                });
            match spawned {
                Ok(t) => pool.threads.push(t),
                // `pool` drops here: its sender closes the channel and the threads started so
                // far return from `recv` and are joined.
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start thread {i} of {size} ({name}): {e}"),
                    ))
                }
            }
        }
        Ok(pool)
    }

    /// A sender for the pool's jobs (the acceptor's). The threads end once every sender,
    /// this pool's own included, is gone.
    pub fn sender(&self) -> Sender<J> {
        self.jobs.clone()
    }

    /// A receiver of the pool's jobs, to see how many wait (`len`); taking from it steals work.
    pub fn receiver(&self) -> Receiver<J> {
        self.queue.clone()
    }

    /// Closes the pool's own sender and waits until every thread has finished: once the other
    /// senders are gone too, that is when the queue is drained.
    pub fn join(self) {
        drop(self);
    }
}

/// Runs one job, catching a panic (the thread carries on, with fresh scratch state). Never
/// inlined: the job's deep frames stay out of the waiting loop's, so a waiting worker's stack
/// is shallow and [`crate::stack::release_unused`] can give the rest back.
#[inline(never)]
fn run_job<J, S: Default>(handle: &impl Fn(J, &mut S), job: J, state: &mut S) {
    if catch_unwind(AssertUnwindSafe(|| handle(job, state))).is_err() {
        log::error!("a job panicked; the worker carries on");
        *state = S::default();
    }
}

/// Puts the calling thread under `SCHED_BATCH`: the kernel then never lets its wake-up preempt
/// the thread running on the CPU. With one thread per connection, every request wakes a worker
/// twice (the request arrives, the response arrives); without this each wake preempted whoever
/// ran, the client, the backend or another worker, mid-work. Measured same-run with
/// `scripts/ab.sh`: +21% requests/s at c=16 and 256, +26–30% at c=64 and 1000, and 7% fewer
/// at c=1, where nothing competes for the CPU. The acceptor runs so too (+6% in
/// `Connection: close`). Best effort: a refusal changes only speed.
pub fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for SCHED_BATCH (priority 0); pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        log::debug!("SCHED_BATCH refused: {}", std::io::Error::last_os_error());
    }
}

impl<J> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        // Swapping in the sender of a channel nobody receives from drops ours, closing the
        // pool's channel once the other senders are gone.
        drop(std::mem::replace(&mut self.jobs, crossbeam_channel::bounded(0).0));
        for t in self.threads.drain(..) {
            // Jobs' panics are caught in the thread, so there is no join error to report.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_every_job_survives_panics_and_joins_when_closed() {
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let pool = WorkerPool::start("test", 3, 4, move |job: usize, _: &mut ()| {
            if job.is_multiple_of(10) {
                panic!("job {job} fails on purpose");
            }
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .expect("start");
        let tx = pool.sender();
        for job in 1..=100 {
            tx.send(job).expect("send");
        }
        drop(tx);
        pool.join();
        assert_eq!(done.load(Ordering::SeqCst), 90);
    }

    static ENDED: AtomicUsize = AtomicUsize::new(0);

    /// Counts the pool threads that returned (each drops its scratch state on the way out).
    #[derive(Default)]
    struct Ends;

    impl Drop for Ends {
        fn drop(&mut self) {
            ENDED.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_thread_that_cannot_start_is_an_error_and_the_started_ones_are_joined() {
        // A 64 TiB stack cannot be mapped, so the fourth thread fails to start.
        let huge = 1usize << 46;
        let started = WorkerPool::start_with(
            "doomed",
            6,
            4,
            |_: (), _: &mut Ends| {},
            |i| {
                if i < 3 {
                    STACK_SIZE
                } else {
                    huge
                }
            },
        );
        let err = started.err().expect("the fourth thread cannot start");
        assert!(err.to_string().starts_with("cannot start thread 3 of 6 (doomed): "), "{err}");
        // Joined before the error came back: all three started threads have already ended.
        assert_eq!(ENDED.load(Ordering::SeqCst), 3);
    }
}
