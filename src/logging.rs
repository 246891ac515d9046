//! Log set-up: simplelog to the terminal (stderr) and, when configured, to a log file.

use std::fs::{self, OpenOptions};
use std::io::IsTerminal;
use std::path::Path;

use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};

use crate::error::Error;

/// Logs at `level` to stderr and, if `file` is given, appends to it (its directory is created).
pub fn init(level: LevelFilter, file: Option<&Path>) -> Result<(), Error> {
    let config = ConfigBuilder::new()
        .set_time_format_custom(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
        ))
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let color = if std::io::stderr().is_terminal() { ColorChoice::Auto } else { ColorChoice::Never };
    // The loggers pass everything; `log::set_max_level` filters, so a reload can change it.
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![TermLogger::new(LevelFilter::Trace, config.clone(), TerminalMode::Stderr, color)];
    if let Some(path) = file {
        let log_error = |source| Error::LogFile { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(log_error)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(log_error)?;
        loggers.push(WriteLogger::new(LevelFilter::Trace, config, file));
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
        use std::sync::atomic::Ordering;
        let now = crate::clock::now_ms() + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now - last >= 1000
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
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
