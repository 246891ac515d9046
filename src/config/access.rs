//! The access log's settings: where its lines go (`[proxy] access_log`) and in which wording
//! (`access_format`); `logging::access` writes them.

use std::path::{Path, PathBuf};

/// The wording of an access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The proxy's own wording, as the main log has always carried it.
    #[default]
    Main,
    /// Apache/nginx `combined`.
    Combined,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The names, as `[proxy] access_format` takes them.
    pub const NAMES: &'static [&'static str] = &["main", "combined", "json"];

    pub fn name(self) -> &'static str {
        match self {
            Format::Main => "main",
            Format::Combined => "combined",
            Format::Json => "json",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "main" => Some(Format::Main),
            "combined" => Some(Format::Combined),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Where access lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Destination {
    /// The main log, at level info (as before access logs had a file of their own).
    #[default]
    MainLog,
    /// Nowhere.
    Off,
    /// A file of their own, written by the logger thread.
    File(PathBuf),
}

/// The access log's path, for messages.
pub fn describe(to: &Destination) -> String {
    match to {
        Destination::MainLog => String::new(),
        Destination::Off => "off".to_string(),
        Destination::File(p) => p.display().to_string(),
    }
}

/// Parses `[proxy] access_log`: empty for the main log, `off`, or a path.
pub fn destination(s: &str) -> Destination {
    match s {
        "" => Destination::MainLog,
        "off" => Destination::Off,
        path => Destination::File(Path::new(path).to_path_buf()),
    }
}
