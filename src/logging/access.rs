//! The access log: where each request's (or tcp connection's) line goes, in which wording, and
//! the logger thread that writes a file so that a slow or full disk never stalls a worker.
//!
//! Workers format the line and hand it to the logger thread over a bounded channel. When the
//! channel is full the line is dropped and counted ([`dropped`]); the thread says how many in the
//! main log, at most once a minute. The file is a [`ReopenFile`], so SIGUSR1 moves it to a new file
//! between two lines.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::line::{self, Entry};
use super::reopen::ReopenFile;
use crate::config::access::{Destination, Format};
use crate::error::Error;

/// Lines waiting for the logger thread; beyond this, lines are dropped and counted.
const BACKLOG: usize = 8192;

/// The access log in force: set once at start.
struct Sink {
    format: Format,
    to: Option<Sender<String>>,
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
            let (tx, rx) = crossbeam_channel::bounded(BACKLOG);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(&rx, BufWriter::with_capacity(64 * 1024, file), format))
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

/// Whether lines go to a file of their own (not the main log).
pub fn has_file() -> bool {
    SINK.get().is_some_and(|s| s.to.is_some())
}

/// Lines dropped because the logger thread was behind.
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
    let line = match format() {
        Format::Main => main(),
        Format::Combined => line::combined(entry, SystemTime::now()),
        Format::Json => line::json(entry, SystemTime::now()),
    };
    write_line(line);
}

/// Sends a whole line (no newline) to the access log.
pub fn write_line(line: String) {
    let Some(sink) = SINK.get() else {
        log::info!("{line}");
        return;
    };
    match &sink.to {
        Some(tx) => match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        },
        None if sink.to_main_log => log::info!("{line}"),
        None => {}
    }
}

/// The logger thread: writes lines as they come, a batch at a time, flushing when the channel
/// is empty; reopens the file after SIGUSR1 within a second even when no line comes; reports
/// drops once a minute.
fn write_lines(rx: &Receiver<String>, mut out: BufWriter<ReopenFile>, format: Format) {
    // When drops were last reported, and the count then: the first drops are reported at once.
    let mut reported: (Option<Instant>, u64) = (None, 0);
    // The proxy's own wording carries the main log's time stamp; the standard ones their own.
    let main_format = format == Format::Main;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => {
                let mut n = 0u64;
                for line in std::iter::once(first).chain(rx.try_iter().take(BACKLOG)) {
                    if main_format {
                        let _ = write!(out, "{} ", super::stamp(SystemTime::now()));
                    }
                    let _ = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
                    n += 1;
                }
                let _ = out.flush();
                WRITTEN.fetch_add(n, Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {
                // An idle log still moves to the new file promptly, as logrotate expects.
                if let Err(e) = out.get_mut().follow() {
                    log::error!("access log: cannot reopen {}: {e}", out.get_ref().path().display());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let dropped = dropped();
        if dropped > reported.1 && reported.0.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            log::warn!(
                "access log: {} line(s) dropped since the last report: {} is not keeping up",
                dropped - reported.1,
                out.get_ref().path().display()
            );
            reported = (Some(Instant::now()), dropped);
        }
    }
}
