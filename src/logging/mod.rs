//! Log set-up: simplelog to the terminal (stderr) and, when configured, to a log file that
//! SIGUSR1 reopens ([`reopen`]); the [`access`] log and its [`line`] wordings; and [`out`], what
//! the binaries print for a user.

pub mod access;
pub mod line;
pub mod lines;
pub mod out;
pub mod reopen;

use std::io::IsTerminal;
use std::path::Path;

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

use crate::error::Error;

/// The main log's time format.
const STAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]");

/// `2026-12-05 23:03:48.123` (UTC), as the main log stamps its lines.
pub fn stamp(now: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(now).format(STAMP).unwrap_or_default()
}

/// Logs at `level` to stderr and, if `file` is given, appends to it (its directory is created;
/// SIGUSR1 reopens it).
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let config = ConfigBuilder::new()
        .set_time_format_custom(STAMP)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // The loggers pass everything; `log::set_max_level` filters, so a reload can change it.
    // The terminal logger buffers a line and writes it whole; the file's writer does not, so
    // `lines` does it there.
    let color = if std::io::stderr().is_terminal() { ColorChoice::Auto } else { ColorChoice::Never };
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![TermLogger::new(LevelFilter::Trace, config.clone(), TerminalMode::Stderr, color)];
    if let Some(path) = file {
        let log_error = |source| Error::LogFile { path: path.display().to_string(), source };
        let file = reopen::ReopenFile::open(path).map_err(log_error)?;
        loggers.push(WriteLogger::new(LevelFilter::Trace, config, lines::Lines::new(file)));
    }
    // A second init (tests, embedding) keeps the first logger; that is not an error.
    let _ = CombinedLogger::init(loggers);
    log::set_max_level(level);
    Ok(())
}

/// Lets a repeated log line through at most once a second, counting what it held back.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    /// A limiter that lets the first line through.
    pub const fn new() -> RateLimit {
        RateLimit {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one; `None` when this one should be held back.
    pub fn check(&self) -> Option<u64> {
        // Offset so that the very first check (last = 0) passes even right after boot.
        self.check_at(crate::clock::now_ms() + 1000)
    }

    /// [`RateLimit::check`] at time `now` (ms). Threads race: another may already have stored
    /// a `last` later than this thread's `now`, so the age saturates at 0 rather than
    /// underflowing into "long ago" (which let a second line through, or panicked in debug).
    fn check_at(&self, now: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let mut last = self.last_ms.load(Ordering::Relaxed);
        // Each failed exchange means another thread moved `last` forward, so this ends once
        // `last` is within a second of `now`.
        while now.saturating_sub(last) >= 1000 {
            match self.last_ms.compare_exchange_weak(last, now, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => last = seen,
            }
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// ` (N more like it in the last second)` when N > 0.
pub fn held_back(n: u64) -> String {
    if n > 0 {
        format!(" ({n} more like it since the last report)")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn one_line_a_second_with_the_held_back_count() {
        let limit = RateLimit::new();
        assert_eq!(limit.check_at(10_000), Some(0));
        assert_eq!(limit.check_at(10_500), None);
        assert_eq!(limit.check_at(10_999), None);
        assert_eq!(limit.check_at(11_000), Some(2));
        assert_eq!(limit.check_at(11_001), None);
    }

    #[test]
    fn an_earlier_now_than_the_stored_last_is_held_back_not_an_underflow() {
        // Thread B stored last = 6000 after thread A read its clock at 5000: A must hold back
        // (the old `now - last` wrapped to ~2^64, passed, and moved `last` backwards).
        let limit = RateLimit::new();
        assert_eq!(limit.check_at(6_000), Some(0));
        assert_eq!(limit.check_at(5_000), None);
        assert_eq!(limit.last_ms.load(Ordering::Relaxed), 6_000, "last never moves backwards");
        assert_eq!(limit.check_at(6_999), None);
        assert_eq!(limit.check_at(7_000), Some(2));
    }

    #[test]
    fn racing_threads_within_one_second_let_exactly_one_line_through() {
        // Sixteen threads whose clocks all fall within one second of each other, released
        // together, in any interleaving: one gets Some, the rest count as held back.
        for round in 0..50u64 {
            let limit = Arc::new(RateLimit::new());
            let passed = Arc::new(AtomicU64::new(0));
            let start = Arc::new(Barrier::new(16));
            let threads: Vec<_> = (0..16u64)
                .map(|i| {
                    let (limit, passed, start) = (limit.clone(), passed.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        // Later threads read earlier clocks, so a stored `last` is often ahead.
                        if let Some(held) = limit.check_at(50_000 - i * 60) {
                            // Held-back checks that landed before the winner's swap are
                            // reported by it: count them with the winner.
                            passed.fetch_add(1 + (held << 32), Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
            let passed = passed.load(Ordering::Relaxed);
            assert_eq!(passed & 0xffff_ffff, 1, "round {round}: exactly one line through");
            let reported = passed >> 32;
            assert_eq!(reported + limit.suppressed.load(Ordering::Relaxed), 15, "round {round}: none lost");
        }
    }
}
