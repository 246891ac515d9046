//! The gate: how many of a pool's workers take jobs at once, and the watch thread that lets a
//! reserve worker in for one stuck waiting on a peer while jobs queue.
//!
//! A thread per request in flight makes a slow backend cheap to wait for. But when hundreds of
//! threads all take connections, the queue is empty whenever one looks, so every request costs
//! a sleep on the queue as well as the one on the backend, and hundreds of runnable threads
//! share two cores with the clients and backends. With few takers the queue stays full: a
//! worker that finishes takes the next ready connection without sleeping, and sleeps only on
//! its backend. So the gate admits `active` takers and keeps the rest of the pool in reserve,
//! asleep.
//!
//! A taker marks each blocking wait on a peer ([`waiting`]). Every tick while jobs queue, the
//! watch thread looks at every worker, and hands the place of a taker stuck in one wait to a
//! reserve worker: Go's runtime does the same for a thread blocked in a system call. Stuck
//! means seen in the same wait at two looks, while some CPU is idle; or for [`LONG_WAIT`],
//! however busy the CPUs (a slow backend, not a backend waiting for its turn on a busy CPU).
//! The worker back from that wait finishes what it was doing (a keep-alive client goes back
//! to the queue between requests: [`stepped_aside`]) and queues for a place again. So fast
//! backends cause almost no hand-over, and a slow one gets every worker of the pool, as
//! before: `workers` bounds the requests in flight, `active` the threads taking work.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How often the watch looks while jobs queue. A wait seen at two looks in a row (one to two
/// ticks long) is stuck if some CPU is idle.
pub const TICK: Duration = Duration::from_millis(1);

/// A wait this long is on a slow peer, not on a busy CPU: its place is handed on even when no
/// CPU is idle.
pub const LONG_WAIT: Duration = Duration::from_millis(10);

/// The longest the watch sleeps while nothing queues (it backs off from [`TICK`]): a hand-over
/// needs a queue, and an idle proxy should not wake a thousand times a second.
const IDLE_TICK: Duration = Duration::from_millis(16);

/// A slot's word: the worker is in a wait.
const WAITING: u64 = 1;
/// A slot's word: the worker's place was handed on; it is not counted among the takers.
const HANDED: u64 = 2;
/// A slot's word: the wait's sequence number, above the flags.
const SEQ: u64 = 4;

/// One worker's state, alone on its cache lines (its worker writes it twice a wait).
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A pool's gate: its takers, its reserve, and what each worker is waiting on.
pub struct Gate {
    sizing: Sizing,
    /// Takers admitted at once now: `sizing.many` or `sizing.few`.
    limit: AtomicUsize,
    /// Takers to retire at their next job, after the limit fell.
    excess: AtomicUsize,
    /// The system's idle CPUs, looked at only when a hand-over is in question.
    idle: IdleCpus,
    inside: Mutex<Inside>,
    /// Reserve workers wait here for a place.
    reserve: Condvar,
    /// The watch thread sleeps here between looks.
    ticks: Condvar,
    slots: Box<[Slot]>,
    handoffs: AtomicU64,
}

#[derive(Default)]
struct Inside {
    /// Workers admitted and not handed on.
    takers: usize,
    /// Waiting in the reserve now.
    reserve: usize,
    /// The pool is stopping: everyone is let in, to drain the queue and see it closed.
    closed: bool,
}

thread_local! {
    /// This thread's gate and slot, while it runs a gated pool's loop.
    static MINE: RefCell<Option<(Arc<Gate>, usize)>> = const { RefCell::new(None) };
}

impl Gate {
    /// A gate for `workers` workers, as many taking jobs at once as `sizing` says.
    pub fn new(workers: usize, sizing: Sizing) -> Gate {
        let top = workers.max(1);
        let sizing =
            Sizing { few: sizing.few.clamp(1, top), many: sizing.many.clamp(sizing.few.clamp(1, top), top) };
        Gate {
            limit: AtomicUsize::new(sizing.many),
            excess: AtomicUsize::new(0),
            sizing,
            idle: IdleCpus::open(),
            inside: Mutex::new(Inside::default()),
            reserve: Condvar::new(),
            ticks: Condvar::new(),
            slots: (0..workers).map(|_| Slot::default()).collect(),
            handoffs: AtomicU64::new(0),
        }
    }

    /// Takers admitted at once now.
    pub fn active(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Places handed on so far.
    pub fn handoffs(&self) -> u64 {
        self.handoffs.load(Ordering::Relaxed)
    }

    /// Workers asleep in the reserve now.
    pub fn reserve(&self) -> usize {
        self.inside.lock().reserve
    }

    /// Makes the calling thread worker `index` of this gate, until the guard drops.
    pub fn adopt(self: &Arc<Gate>, index: usize) -> Adopted {
        MINE.with_borrow_mut(|mine| *mine = Some((self.clone(), index)));
        Adopted(())
    }

    /// Before worker `index` takes a job: keeps its place if it has one, else waits in the
    /// reserve for one, calling `trim` if that wait outlasts `trim_after`.
    pub fn admit(&self, index: usize, admitted: &mut bool, trim_after: Duration, mut trim: impl FnMut()) {
        let slot = &self.slots[index].0;
        let kept = *admitted && slot.load(Ordering::Acquire) & HANDED == 0;
        if kept && self.excess.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut inside = self.inside.lock();
        if kept {
            // The limit fell: retire if there are still more takers than it.
            let over = inside.takers.saturating_sub(self.limit.load(Ordering::Relaxed));
            self.excess.store(over.saturating_sub(1), Ordering::Relaxed);
            if over == 0 {
                return;
            }
            inside.takers -= 1;
        }
        // Not in a wait now, so the watch does not write this word: a plain store clears it.
        slot.store(slot.load(Ordering::Relaxed) & !HANDED, Ordering::Release);
        let mut trimmed = false;
        while inside.takers >= self.limit.load(Ordering::Relaxed) && !inside.closed {
            inside.reserve += 1;
            let timed_out = if trimmed {
                self.reserve.wait(&mut inside);
                false
            } else {
                self.reserve.wait_for(&mut inside, trim_after).timed_out()
            };
            inside.reserve -= 1;
            if timed_out {
                drop(inside);
                trim();
                trimmed = true;
                inside = self.inside.lock();
            }
        }
        inside.takers += 1;
        *admitted = true;
    }

    /// Lets everyone in (the pool is stopping) and ends the watch.
    pub fn close(&self) {
        self.inside.lock().closed = true;
        self.reserve.notify_all();
        self.ticks.notify_all();
    }

    /// The watch thread's loop, until [`Gate::close`]: every tick while jobs queue (`queued`),
    /// hands on the places of takers stuck in a wait (see [`Gate::look`]); at every look, sets
    /// the number of takers for the connections open (`demand`).
    pub fn watch(&self, queued: impl Fn() -> usize, demand: impl Fn() -> usize) {
        let mut seen = Seen::new(self.slots.len());
        let mut tick = TICK;
        let mut inside = self.inside.lock();
        while !inside.closed {
            self.ticks.wait_for(&mut inside, tick);
            if inside.closed {
                break;
            }
            drop(inside);
            let queued = queued();
            let limit = if demand() <= self.sizing.many { self.sizing.many } else { self.sizing.few };
            let handed = self.look(&mut seen, queued, Instant::now());
            tick = if queued > 0 { TICK } else { (tick * 2).min(IDLE_TICK) };
            self.limit.store(limit, Ordering::Relaxed);
            inside = self.inside.lock();
            inside.takers = inside.takers.saturating_sub(handed);
            // Too many takers (the limit fell): some retire at their next job. Too few (places
            // handed on, or the limit rose): the reserve comes in.
            self.excess.store(inside.takers.saturating_sub(limit), Ordering::Relaxed);
            for _ in 0..limit.saturating_sub(inside.takers).min(inside.reserve) {
                self.reserve.notify_one();
            }
        }
    }

    /// One look at every slot, at `now`: how many places it handed on, at most one per job
    /// `queued`. Only takers in the same wait as at the last look: at once if that wait has
    /// lasted [`LONG_WAIT`] (a slow peer), else only while a CPU is idle (when every CPU is
    /// busy, a wait is often the peer's turn for a CPU, and another thread would only share
    /// them).
    fn look(&self, seen: &mut Seen, queued: usize, now: Instant) -> usize {
        seen.long.clear();
        seen.short.clear();
        for (index, slot) in self.slots.iter().enumerate() {
            let word = slot.0.load(Ordering::Acquire);
            if word != seen.words[index] {
                (seen.words[index], seen.since[index]) = (word, now);
            } else if queued > 0 && word & (WAITING | HANDED) == WAITING {
                let stuck =
                    if now - seen.since[index] >= LONG_WAIT { &mut seen.long } else { &mut seen.short };
                stuck.push(index);
            }
        }
        if !seen.short.is_empty() && self.idle.any() {
            seen.long.append(&mut seen.short);
        }
        let mut handed = 0;
        // No more than the jobs queued: each place handed on is for one of them.
        for &index in seen.long.iter().take(queued) {
            let word = seen.words[index];
            let slot = &self.slots[index].0;
            if slot.compare_exchange(word, word | HANDED, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                handed += 1;
            }
        }
        self.handoffs.fetch_add(handed as u64, Ordering::Relaxed);
        handed
    }
}

/// How many workers take jobs at once: `many` while no more connections than that are open
/// (each can have its own worker, and none waits in the queue), `few` beyond (then the queue
/// is deep, and a worker that finishes finds the next connection ready there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub few: usize,
    pub many: usize,
}

/// What the watch remembers of each slot between looks: its word, and since when it reads so;
/// and the stuck slots of a look, long and short waits (kept to reuse their room).
struct Seen {
    words: Vec<u64>,
    since: Vec<Instant>,
    long: Vec<usize>,
    short: Vec<usize>,
}

impl Seen {
    fn new(slots: usize) -> Seen {
        let room = || Vec::with_capacity(slots);
        Seen { words: vec![0; slots], since: vec![Instant::now(); slots], long: room(), short: room() }
    }
}

/// Whether a CPU of the system is idle now: fewer tasks runnable than CPUs online, as the
/// fourth field of `/proc/loadavg` counts them (this thread, reading it, among them). Host-wide,
/// as both counts are: in a container with a CPU quota the host's idle CPUs are no promise of
/// ours, but a busy host then still lets slow backends have their workers. Unreadable: yes.
struct IdleCpus {
    loadavg: Option<std::fs::File>,
    online: usize,
}

impl IdleCpus {
    fn open() -> IdleCpus {
        // SAFETY: sysconf only reads a system value.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        IdleCpus { loadavg: std::fs::File::open("/proc/loadavg").ok(), online: online.max(1) as usize }
    }

    fn any(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.loadavg else { return true };
        let mut buf = [0u8; 128];
        let Ok(n) = file.read_at(&mut buf, 0) else { return true };
        // "0.52 0.58 0.59 3/1024 12345": runnable / all.
        let running = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|text| text.split_whitespace().nth(3))
            .and_then(|field| field.split('/').next())
            .and_then(|running| running.parse::<usize>().ok());
        running.is_none_or(|running| running <= self.online)
    }
}

/// The calling thread belongs to a gate until this drops.
pub struct Adopted(());

impl Drop for Adopted {
    fn drop(&mut self) {
        MINE.with_borrow_mut(|mine| *mine = None);
    }
}

/// Runs `wait`, a blocking wait on a peer (a read, a write, a connect, a `poll`), marked as one
/// so that the watch can hand this worker's place on if it lasts. Outside a gated pool, just
/// runs it.
pub fn waiting<T>(wait: impl FnOnce() -> T) -> T {
    let marked = MINE.with_borrow(|mine| {
        mine.as_ref().map(|(gate, index)| {
            let slot = &gate.slots[*index].0;
            let word = slot.load(Ordering::Relaxed);
            // Not in a wait, so the watch does not write this word: a plain store suffices.
            slot.store((word & HANDED) | ((word & !(SEQ - 1)) + SEQ) | WAITING, Ordering::Release);
        })
    });
    let _ends = marked.map(|()| Marked);
    wait()
}

/// A brief wait for a client's first bytes ([`crate::net::readable_within`]), marked as a wait
/// on a peer.
pub fn readable_within(sock: &std::net::TcpStream, d: std::time::Duration) -> std::io::Result<bool> {
    waiting(|| crate::net::readable_within(sock, d))
}

/// A wait in progress; it ends when this drops (a panic ends it too).
struct Marked;

impl Drop for Marked {
    fn drop(&mut self) {
        MINE.with_borrow(|mine| {
            if let Some((gate, index)) = mine {
                gate.slots[*index].0.fetch_and(!WAITING, Ordering::AcqRel);
            }
        });
    }
}

/// Whether the calling worker's place was handed on during this job: a keep-alive client
/// between requests should then go back to the queue rather than keep this worker.
pub fn stepped_aside() -> bool {
    MINE.with_borrow(|mine| {
        mine.as_ref().is_some_and(|(gate, index)| gate.slots[*index].0.load(Ordering::Acquire) & HANDED != 0)
    })
}
