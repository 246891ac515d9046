//! proxy_server's command line: flags that override the config file, and `--check`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError, RawConfig, DEFAULT_PATH};

/// A load-balancing TCP and HTTP/1.1 proxy: a thread pool of blocking workers, least-connections or
/// round-robin.
#[derive(Debug, Clone, Parser)]
#[command(name = "proxy_server", version, about)]
pub struct ProxyArgs {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8080 (overrides [proxy] listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// A backend address; repeat for several. Replaces the file's [backends].
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    pub backends: Vec<String>,
    /// least-connections, round-robin, random-two or source-hash (overrides [proxy] algorithm).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Number of worker threads (overrides [proxy] workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// tcp or http (overrides [proxy] mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// error, warn, info, debug or trace (overrides [proxy] log_level).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log file; empty for terminal only (overrides [proxy] log_file).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<String>,
    /// Check the configuration, print the effective settings, and exit.
    #[arg(long)]
    pub check: bool,
}

impl ProxyArgs {
    /// Loads the config file and applies the flags over it.
    pub fn load(&self) -> Result<Config, Vec<ConfigError>> {
        let mut raw = RawConfig::load(&self.config)?;
        let flags: [(&str, &Option<String>, &'static str); 6] = [
            ("listen", &self.listen, "--listen"),
            ("algorithm", &self.algorithm, "--algorithm"),
            ("workers", &self.workers, "--workers"),
            ("mode", &self.mode, "--mode"),
            ("log_level", &self.log_level, "--log-level"),
            ("log_file", &self.log_file, "--log-file"),
        ];
        for (key, value, flag) in flags {
            if let Some(value) = value {
                raw.set_flag("proxy", key, value, flag);
            }
        }
        if !self.backends.is_empty() {
            raw.set_backends(&self.backends);
        }
        raw.validate()
    }
}
