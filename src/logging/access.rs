//! The access log: where each request's (or tcp connection's) line goes, in which wording, and
//! the logger thread that writes a file so that a slow or full disk never stalls a worker.
//!
//! Each worker formats its lines into a batch of its own (an uncontended lock, no allocation
//! per line); a full batch goes to the logger thread over a channel, and the logger collects
//! the others once they are [`BATCH_AGE`] old, so a line reaches the file within a fraction of
//! a second however the worker is occupied. When more than a budget of bytes waits, a batch is
//! dropped and its lines counted ([`dropped`]); the thread says how many in the main log, at
//! most once a minute. The file is a [`ReopenFile`], so SIGUSR1 moves it to a new file between
//! two lines. [`finish`] writes what is left at exit.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::line::{self, Entry};
use super::reopen::ReopenFile;
use crate::config::access::{Destination, Format};
use crate::error::Error;

/// Bytes of lines waiting for the logger thread (some 20,000 lines); beyond this, lines are
/// dropped and counted.
const QUEUE_BYTES: usize = 4 << 20;
static QUEUED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The access log in force: set once at start.
struct Sink {
    format: Format,
    to: Option<Sender<Lines>>,
    to_main_log: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Sets the access log up: opens the file (creating its directory) and starts its logger
/// thread. Called once; later calls keep the first.
pub fn start(to: &Destination, format: Format) -> Result<(), Error> {
    let sink = match to {
        Destination::MainLog => Sink { format, to: None, to_main_log: true },
        Destination::Off => Sink { format, to: None, to_main_log: false },
        Destination::File(path) => {
            let file = ReopenFile::open(path)
                .map_err(|source| Error::LogFile { path: path.display().to_string(), source })?;
            let (tx, rx) = crossbeam_channel::unbounded();
            *WRITER.lock() = Some(Writer { rx, out: file, pending: Pending::default() });
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(write_lines)
                .map_err(Error::Resource)?;
            Sink { format, to: Some(tx), to_main_log: false }
        }
    };
    let _ = SINK.set(sink);
    Ok(())
}

/// The wording in force.
pub fn format() -> Format {
    SINK.get().map_or(Format::Main, |s| s.format)
}

/// Whether a line would be written now: worth building.
pub fn enabled() -> bool {
    match SINK.get() {
        Some(s) if s.to.is_some() => true,
        Some(s) if !s.to_main_log => false,
        _ => log::log_enabled!(log::Level::Info),
    }
}

/// Whether access lines carry the balancer's reason whatever the main log's level: a JSON file
/// of their own.
pub fn wants_reason() -> bool {
    SINK.get().is_some_and(|s| s.to.is_some() && s.format == Format::Json)
}

/// Whether an access line says more than the main log's own lines already do: it goes to a
/// file of its own, or it is in a standard wording. (A `main` line in the main log would only
/// repeat what a refusal or an error has logged.)
pub fn adds_to_main_log() -> bool {
    SINK.get().is_some_and(|s| s.to.is_some() || s.format != Format::Main)
}

/// Lines dropped: the logger thread was behind, or the file refused them.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Lines written to the access log file.
pub fn written() -> u64 {
    WRITTEN.load(Ordering::Relaxed)
}

/// Writes `entry` in the wording in force; `main` gives the proxy's own line (built only when
/// that is the wording).
pub fn write(entry: &Entry<'_>, main: impl FnOnce() -> String) {
    let Some(sink) = SINK.get() else {
        log::info!("{}", main());
        return;
    };
    match &sink.to {
        Some(tx) => MINE.with(|b| {
            let mut b = b.lock();
            // In a file of its own, the proxy's wording carries the main log's time stamp.
            render(&mut b.text, sink.format, entry, main, true);
            b.text.push('\n');
            b.lines += 1;
            b.started.get_or_insert_with(Instant::now);
            if b.text.len() >= BATCH_BYTES {
                // A busy worker: the next batch gets a buffer of full size at once.
                let lines = b.take(String::with_capacity(BATCH_BYTES + 1024));
                drop(b);
                hand_over(tx, lines);
            }
        }),
        None if !sink.to_main_log => {}
        None => {
            let mut line = String::new();
            render(&mut line, sink.format, entry, main, false);
            log::info!("{line}");
        }
    }
}

/// The line of a request head refused before any backend was asked (`answer`, the whole
/// response sent), with no request to name, as nginx logs its 400s and 408s. Only a standard
/// access log gets one: the main log has said it already.
pub fn refused(
    client: std::net::IpAddr,
    status: u16,
    answer: &[u8],
    duration: Duration,
    why: &dyn std::fmt::Display,
    main: impl FnOnce(&str) -> String,
) {
    if !adds_to_main_log() {
        return;
    }
    let note = why.to_string();
    let entry = Entry {
        client: Some(client),
        status,
        bytes_out: answer.len() as u64,
        body_bytes: (answer.len() - crate::h1::respond::head_len(answer)) as u64,
        duration,
        note: &note,
        ..Entry::default()
    };
    write(&entry, || main(&note));
}

/// Appends `entry`'s line in `format` to `text`; the proxy's own wording (`main`) with the main
/// log's time stamp ahead if `stamped`.
fn render(
    text: &mut String,
    format: Format,
    entry: &Entry<'_>,
    main: impl FnOnce() -> String,
    stamped: bool,
) {
    let now = SystemTime::now();
    match format {
        // Into an empty line, the wording itself, not a copy of it.
        Format::Main if !stamped && text.is_empty() => *text = main(),
        Format::Main => {
            if stamped {
                text.push_str(&super::stamp(now));
                text.push(' ');
            }
            text.push_str(&main());
        }
        Format::Combined => line::combined_into(text, entry, now),
        Format::Json => line::json_into(text, entry, now),
    }
}

/// A worker's lines not yet handed over: one channel message (and one allocation) carries many
/// requests' lines, and the logger frees them in one go.
#[derive(Default)]
struct Batch {
    text: String,
    lines: u64,
    /// When its first line came.
    started: Option<Instant>,
}

/// A batch handed over: its lines, whole, newline-terminated.
struct Lines {
    text: String,
    count: u64,
}

/// A batch goes to the logger at this size; the logger takes it at this age.
const BATCH_BYTES: usize = 16 * 1024;
pub const BATCH_AGE: Duration = Duration::from_millis(50);

type Shared = std::sync::Arc<parking_lot::Mutex<Batch>>;

/// Every thread's batch, for the logger to collect.
static BATCHES: parking_lot::Mutex<Vec<Shared>> = parking_lot::Mutex::new(Vec::new());

thread_local! {
    static MINE: Shared = {
        let batch = Shared::default();
        BATCHES.lock().push(batch.clone());
        batch
    };
}

impl Batch {
    /// Takes the lines, leaving `next` to write into.
    fn take(&mut self, next: String) -> Lines {
        self.started = None;
        let text = std::mem::replace(&mut self.text, next);
        Lines { text, count: std::mem::take(&mut self.lines) }
    }
}

/// Queues a full batch for the logger, or drops it (counted) when over the byte budget.
fn hand_over(tx: &Sender<Lines>, lines: Lines) {
    let size = lines.text.len();
    if QUEUED.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
        QUEUED.fetch_sub(size, Ordering::Relaxed);
        DROPPED.fetch_add(lines.count, Ordering::Relaxed);
        return;
    }
    if let Err(e) = tx.send(lines) {
        QUEUED.fetch_sub(size, Ordering::Relaxed);
        DROPPED.fetch_add(e.0.count, Ordering::Relaxed);
    }
}

/// The logger's side: the queue and the file.
struct Writer {
    rx: Receiver<Lines>,
    out: ReopenFile,
    /// Batches gathered for one write, so that a line counts as written only once the file
    /// took it (a full disk's refusals count as dropped, not written).
    pending: Pending,
}

/// Bytes of whole lines waiting for one write, and how many lines they are.
#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    lines: u64,
    /// The last write failed inside a line: the file ends in part of one.
    broken: bool,
}

/// How much is gathered before it is written.
const WRITE_BYTES: usize = 64 * 1024;

static WRITER: parking_lot::Mutex<Option<Writer>> = parking_lot::Mutex::new(None);
static WRITE_FAILED: super::RateLimit = super::RateLimit::new();

impl Writer {
    /// Writes the queued batches, and the workers' batches at least `age` old. Returns how many
    /// lines it wrote.
    fn round(&mut self, age: Duration) -> u64 {
        let mut n = 0u64;
        // At most a queue's worth, so drops are reported and the file followed in between.
        let mut budget = QUEUE_BYTES;
        while budget > 0 {
            let Ok(lines) = self.rx.try_recv() else { break };
            QUEUED.fetch_sub(lines.text.len(), Ordering::Relaxed);
            budget = budget.saturating_sub(lines.text.len());
            n += self.gather(&lines);
        }
        let batches: Vec<Shared> = BATCHES.lock().clone();
        for b in batches {
            let lines = {
                let mut b = b.lock();
                match b.started {
                    // Its worker may be idle from now on: its buffer is given back, not renewed.
                    Some(at) if at.elapsed() >= age => b.take(String::new()),
                    _ => continue,
                }
            };
            n += self.gather(&lines);
        }
        n += self.write();
        WRITTEN.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Adds a batch to the pending write, writing first when it is full. Returns how many
    /// lines were written.
    fn gather(&mut self, lines: &Lines) -> u64 {
        let written = if self.pending.text.len() + lines.text.len() > WRITE_BYTES { self.write() } else { 0 };
        self.pending.text.extend_from_slice(lines.text.as_bytes());
        self.pending.lines += lines.count;
        written
    }

    /// Writes the pending lines. Those the file refused (a full disk, an I/O error) count as
    /// dropped, and the main log says why, at most once a second. Returns how many were written.
    fn write(&mut self) -> u64 {
        let count = std::mem::take(&mut self.pending.lines);
        if count == 0 {
            return 0;
        }
        // Half a line a failed write left in the file is ended first: the next starts afresh.
        let ended = self.pending.broken;
        if ended {
            self.pending.text.insert(0, b'\n');
        }
        let text = &self.pending.text;
        let mut done = 0;
        let failed = loop {
            if done == text.len() {
                break None;
            }
            match self.out.write(&text[done..]) {
                Ok(0) => break Some(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if done > 0 {
            self.pending.broken = text[done - 1] != b'\n';
        }
        let newlines = text[..done].iter().filter(|&&b| b == b'\n').count() as u64;
        let written = newlines.saturating_sub(u64::from(ended && done > 0)).min(count);
        self.pending.text.clear();
        if let Some(e) = failed {
            DROPPED.fetch_add(count - written, Ordering::Relaxed);
            if let Some(n) = WRITE_FAILED.check() {
                let path = self.out.path().display();
                log::error!("access log: writing {path}: {e}; lines dropped{}", super::held_back(n));
            }
        }
        written
    }
}

/// Writes every line still waiting (in the queue and in the workers' batches): at exit, after
/// the workers have stopped.
pub fn finish() {
    // Bounded: a logger stuck on a dead disk must not keep the process from exiting.
    if let Some(mut writer) = WRITER.try_lock_for(Duration::from_secs(2)) {
        if let Some(w) = writer.as_mut() {
            w.round(Duration::ZERO);
        }
    }
}

/// The logger thread: every pause, writes what the workers queued and flushes it; reopens the
/// file after SIGUSR1 within a pause even when no line comes; reports drops.
///
/// It polls rather than blocking on the channel: a sleeping receiver would have every worker's
/// send wake it (a futex call per request), where a poll costs the workers nothing. The pause
/// is short while lines come and grows while none do; the queue holds far more than a pause's
/// worth at any rate the proxy serves.
fn write_lines() {
    const BUSY: Duration = Duration::from_millis(10);
    const IDLE: Duration = Duration::from_millis(100);
    // When drops were last reported, and the count then: the first drops are reported at once.
    let mut reported: (Option<Instant>, u64) = (None, 0);
    let mut pause = BUSY;
    loop {
        let mut writer = WRITER.lock();
        let Some(w) = writer.as_mut() else { return };
        if w.round(BATCH_AGE) > 0 {
            pause = BUSY;
        } else {
            pause = (pause * 2).min(IDLE);
            // An idle log still moves to the new file promptly, as logrotate expects.
            if let Err(e) = w.out.follow() {
                log::error!("access log: cannot reopen {}: {e}", w.out.path().display());
            }
        }
        let path = w.out.path().display().to_string();
        drop(writer);
        let dropped = dropped();
        if dropped > reported.1 && reported.0.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            log::warn!(
                "access log: {} line(s) dropped since the last report: {} is not keeping up or refuses writes",
                dropped - reported.1,
                path
            );
            reported = (Some(Instant::now()), dropped);
        }
        std::thread::sleep(pause);
    }
}
