//! The crate's one error type: what went wrong, and whose fault it was.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

/// Who caused a failure. It decides how the proxy answers (in HTTP mode 400 vs 502 vs 504)
/// and whether a backend's failure counters move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong, went away, or was too slow.
    Client,
    /// A backend refused, reset, timed out or answered wrongly.
    Backend,
    /// This process: configuration, resources (descriptors, threads), bugs.
    Proxy,
}

/// Every error the library returns.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The configuration has one or more problems; each names its file:line (or flag) and key.
    Config(Vec<ConfigError>),
    /// The listening socket could not be set up.
    Listen { addr: SocketAddr, source: io::Error },
    /// A log file could not be opened.
    LogFile { path: String, source: io::Error },
    /// Connecting to a backend failed or timed out.
    Connect { backend: String, source: io::Error },
    /// No backend could take the connection: all down, all tried, or all full.
    Unavailable(Unavailable),
    /// Reading from or writing to the client failed.
    Client(io::Error),
    /// Reading from or writing to a backend failed.
    Backend(io::Error),
    /// A local resource ran out or a thread could not be started.
    Resource(io::Error),
}

impl Error {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Client(_) => Fault::Client,
            Error::Connect { .. } | Error::Unavailable(_) | Error::Backend(_) => Fault::Backend,
            Error::Config(_) | Error::Listen { .. } | Error::LogFile { .. } | Error::Resource(_) => {
                Fault::Proxy
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(errors) => {
                write!(f, "configuration has {} error(s)", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            Error::Listen { addr, source } => write!(f, "listen on {addr}: {source}"),
            Error::LogFile { path, source } => write!(f, "log file {path}: {source}"),
            Error::Connect { backend, source } => write!(f, "connect to {backend}: {source}"),
            Error::Unavailable(why) => write!(f, "{why}"),
            Error::Client(e) => write!(f, "client: {e}"),
            Error::Backend(e) => write!(f, "backend: {e}"),
            Error::Resource(e) => write!(f, "resource: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Listen { source, .. } | Error::LogFile { source, .. } | Error::Connect { source, .. } => {
                Some(source)
            }
            Error::Client(e) | Error::Backend(e) | Error::Resource(e) => Some(e),
            Error::Config(_) | Error::Unavailable(_) => None,
        }
    }
}

/// Why no backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No backend is up (or every one that is was already tried).
    NoneUp { tried: usize },
    /// Every available backend stayed at `max_conns` for the whole queue timeout.
    AllFull,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoneUp { tried: 0 } => f.write_str("no backend is up"),
            Unavailable::NoneUp { tried } => write!(f, "no backend available ({tried} tried)"),
            Unavailable::AllFull => f.write_str("every backend is at max_conns (queue timeout)"),
        }
    }
}
