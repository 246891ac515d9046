//! Fixed pools of long-lived worker threads fed by a bounded crossbeam channel.
//!
//! The `threadpool` crate owns the threads (named, small stacks, joined at the end); each runs
//! one long job, the worker loop, which takes connections from the bounded crossbeam channel
//! that the acceptor and the parker fill. Dropping the pool (or [`WorkerPool::join`]) closes the
//! pool's sender, so every loop finishes the jobs already queued and returns. threadpool
//! unwraps a failed spawn: the thread budget ([`crate::threads::budget`]) is checked before anything
//! binds so that it never happens in practice, and if it does the panic is caught and becomes an
//! `io::Error` naming it. A panicking job is caught and counted, so the thread (and the pool's
//! size) survives. Stacks are small so that thousands of workers fit in memory, and every pool
//! thread runs under `SCHED_BATCH` (see [`batch_scheduling`]). A gated pool admits only some
//! of its threads to take jobs at once, and a watch thread lets reserve ones in for those
//! stuck on a peer ([`crate::threads::gate`]). [`Gauges`] reads what the threads are doing,
//! for `/stats`.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use threadpool::ThreadPool;

use super::gate::{Gate, Sizing};

/// Stack size of every pool thread. Relay buffers live on the heap, so 128 KiB is ample even
/// for debug builds, and only the touched pages are resident.
pub const STACK_SIZE: usize = 128 * 1024;

/// How many connections are open, for a gated pool's [`Sizing`].
pub type Demand = Box<dyn Fn() -> usize + Send>;

/// A fixed set of threads each running a handler on jobs of type `J` from one bounded channel.
pub struct WorkerPool<J> {
    threads: ThreadPool,
    /// The pool's own sender; the threads end when every sender is gone and the queue is empty.
    jobs: Sender<J>,
    /// A receiver, for the queue's length.
    queue: Receiver<J>,
    counts: Arc<Counts>,
    /// The gate and its watch thread, in a gated pool.
    gate: Option<(Arc<Gate>, JoinHandle<()>)>,
}

/// What a pool's threads are doing, counted as they go.
#[derive(Debug, Default)]
struct Counts {
    busy: AtomicUsize,
    panics: AtomicU64,
}

/// A pool's gauges, read when asked (for `/stats` and `/metrics`).
#[derive(Clone)]
pub struct Gauges {
    threads: ThreadPool,
    counts: Arc<Counts>,
    gate: Option<Arc<Gate>>,
}

impl Gauges {
    /// Threads in the pool (`workers`).
    pub fn size(&self) -> usize {
        self.threads.max_count()
    }

    /// Threads alive and taking jobs (threadpool's `active_count`: each runs the job loop).
    pub fn running(&self) -> usize {
        self.threads.active_count()
    }

    /// Threads serving a job now.
    pub fn busy(&self) -> usize {
        self.counts.busy.load(Ordering::Relaxed)
    }

    /// Jobs that panicked (caught: the thread carried on), and job loops threadpool lost to a
    /// panic (its `panic_count`; it starts a new thread for each).
    pub fn panics(&self) -> u64 {
        self.counts.panics.load(Ordering::Relaxed) + self.threads.panic_count() as u64
    }

    /// Threads admitted to take jobs at once (all of them in an ungated pool).
    pub fn active(&self) -> usize {
        self.gate.as_ref().map_or(self.size(), |g| g.active())
    }

    /// Threads asleep in the gate's reserve now.
    pub fn reserve(&self) -> usize {
        self.gate.as_ref().map_or(0, |g| g.reserve())
    }

    /// Places handed from a thread stuck on a peer to a reserve one.
    pub fn handoffs(&self) -> u64 {
        self.gate.as_ref().map_or(0, |g| g.handoffs())
    }
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `size` threads named `name` receiving from a new channel that holds up to
    /// `queue` waiting jobs. Each thread owns a scratch value made by `S::default()` (reusable
    /// buffers, say) passed to every call. If the system refuses a thread (threadpool then
    /// panics while building the pool), the panic is caught and returned as an error; the
    /// threads already started end, their job queue gone.
    pub fn start<S, F>(name: &str, size: usize, queue: usize, handle: F) -> io::Result<WorkerPool<J>>
    where
        S: Default,
        F: Fn(J, &mut S) + Send + Clone + 'static,
    {
        Self::start_with(name, (size, None), queue, handle, STACK_SIZE)
    }

    /// [`WorkerPool::start`], with only some threads taking jobs at once, as `sizing` says for
    /// the `demand` (connections open), and the rest in reserve for those stuck on a peer (see
    /// [`crate::threads::gate`]).
    pub fn start_gated<S, F>(
        name: &str,
        size: usize,
        (sizing, demand): (Sizing, Demand),
        queue: usize,
        handle: F,
    ) -> io::Result<WorkerPool<J>>
    where
        S: Default,
        F: Fn(J, &mut S) + Send + Clone + 'static,
    {
        Self::start_with(name, (size, Some((sizing, demand))), queue, handle, STACK_SIZE)
    }

    fn start_with<S, F>(
        name: &str,
        (size, gated): (usize, Option<(Sizing, Demand)>),
        queue: usize,
        handle: F,
        stack: usize,
    ) -> io::Result<WorkerPool<J>>
    where
        S: Default,
        F: Fn(J, &mut S) + Send + Clone + 'static,
    {
        let threads = build(name, size, stack)?;
        let (tx, rx) = crossbeam_channel::bounded::<J>(queue);
        let counts = Arc::new(Counts::default());
        let (gate, demand) = match gated {
            Some((sizing, demand)) => (Some(Arc::new(Gate::new(size, sizing))), Some(demand)),
            None => (None, None),
        };
        for index in 0..size {
            let (jobs, handle, counts, gate) = (rx.clone(), handle.clone(), counts.clone(), gate.clone());
            threads.execute(move || {
                batch_scheduling();
                let _adopted = gate.as_ref().map(|g| g.adopt(index));
                let mut admitted = false;
                let mut state = S::default();
                loop {
                    if let Some(gate) = &gate {
                        gate.admit(index, &mut admitted, crate::threads::stack::TRIM_AFTER, || {
                            idle(&mut state, &counts)
                        });
                    }
                    let job = match jobs.recv_timeout(crate::threads::stack::TRIM_AFTER) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            // Idle: give back, then wait as long as it takes.
                            idle(&mut state, &counts);
                            match jobs.recv() {
                                Ok(job) => job,
                                Err(_) => break,
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    counts.busy.fetch_add(1, Ordering::Relaxed);
                    run_job(&handle, job, &mut state, &counts);
                    counts.busy.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
        let gate = match gate.zip(demand) {
            Some((gate, demand)) => {
                let (watched, queued) = (gate.clone(), rx.clone());
                let watch = std::thread::Builder::new()
                    .name(format!("{name}-gate"))
                    .stack_size(stack.max(STACK_SIZE))
                    .spawn(move || watched.watch(|| queued.len(), demand));
                match watch {
                    Ok(watch) => Some((gate, watch)),
                    Err(e) => {
                        // The threads started end: their channel goes with `tx`, the gate opens.
                        gate.close();
                        return Err(io::Error::other(format!("cannot start the {name} gate's thread: {e}")));
                    }
                }
            }
            None => None,
        };
        Ok(WorkerPool { threads, jobs: tx, queue: rx, counts, gate })
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

    /// The pool's gauges.
    pub fn gauges(&self) -> Gauges {
        let gate = self.gate.as_ref().map(|(gate, _)| gate.clone());
        Gauges { threads: self.threads.clone(), counts: self.counts.clone(), gate }
    }

    /// Closes the pool's own sender and waits until every thread has finished: once the other
    /// senders are gone too, that is when the queue is drained.
    pub fn join(self) {
        drop(self);
    }
}

/// Builds the thread pool. threadpool unwraps a failed spawn, so a refusal is a panic here:
/// caught, and turned into the error it was, with the default panic message kept off stderr.
fn build(name: &str, size: usize, stack: usize) -> io::Result<ThreadPool> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let built = catch_unwind(|| {
        threadpool::Builder::new()
            .num_threads(size)
            .thread_name(name.to_string())
            .thread_stack_size(stack)
            .build()
    });
    std::panic::set_hook(quiet);
    built.map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the system refused a thread".to_string());
        io::Error::other(format!("cannot start {size} {name} threads: {why}"))
    })
}

/// An idle worker gives back the scratch buffers and the stack pages its last jobs touched,
/// whether it waits for a job or in the gate's reserve.
fn idle<S: Default>(state: &mut S, counts: &Counts) {
    fresh(state, counts);
    crate::threads::stack::give_back();
}

/// Replaces the worker's scratch state with a new one. Outside any job, so a panic here is
/// caught and counted as a job's is: it would otherwise end the worker loop, and threadpool's
/// replacement thread would run no loop, one worker fewer for good. The old state is kept then.
fn fresh<S: Default>(state: &mut S, counts: &Counts) {
    if catch_unwind(AssertUnwindSafe(|| *state = S::default())).is_err() {
        counts.panics.fetch_add(1, Ordering::Relaxed);
        log::error!("a worker's scratch state could not be renewed; the worker carries on");
    }
}

/// Runs one job, catching a panic (the thread carries on, with fresh scratch state). Never
/// inlined: the job's deep frames stay out of the waiting loop's, so a waiting worker's stack
/// is shallow and [`crate::threads::stack::release_unused`] can give the rest back.
#[inline(never)]
fn run_job<J, S: Default>(handle: &impl Fn(J, &mut S), job: J, state: &mut S, counts: &Counts) {
    if catch_unwind(AssertUnwindSafe(|| handle(job, state))).is_err() {
        counts.panics.fetch_add(1, Ordering::Relaxed);
        log::error!("a job panicked; the worker carries on");
        fresh(state, counts);
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
        if let Some((gate, _)) = &self.gate {
            // The reserve comes in to see the queue drained and closed.
            gate.close();
        }
        self.threads.join();
        if let Some((_, watch)) = self.gate.take() {
            let _ = watch.join();
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
