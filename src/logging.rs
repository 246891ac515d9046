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
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![TermLogger::new(level, config.clone(), TerminalMode::Stderr, color)];
    if let Some(path) = file {
        let log_error = |source| Error::LogFile { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(log_error)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(log_error)?;
        loggers.push(WriteLogger::new(level, config, file));
    }
    // A second init (tests, embedding) keeps the first logger; that is not an error.
    let _ = CombinedLogger::init(loggers);
    Ok(())
}
