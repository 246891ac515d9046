//! proxy_server's command line: flags that override the config file, and `--check`.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::keys::{self, Key};
use crate::config::{Config, ConfigError, RawConfig, DEFAULT_PATH};
use crate::threads::budget;

/// A load-balancing TCP and HTTP/1.1 proxy: a thread pool of blocking workers and six balancing
/// algorithms (least-connections, round-robin, random-two, source-hash, header-hash, least-time).
#[derive(Debug, Clone, Parser)]
#[command(name = "proxy_server", version)]
pub struct ProxyArgs {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8080, or a bare port (overrides [proxy] listen).
    #[arg(long, value_name = "ADDR:PORT|PORT")]
    pub listen: Option<String>,
    /// A backend address; repeat for several. Replaces the file's [backends].
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    pub backends: Vec<String>,
    /// least-connections, round-robin, random-two, source-hash, header-hash or least-time (overrides [proxy] algorithm).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Number of worker threads (overrides [proxy] workers).
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// tcp or http (overrides [proxy] mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// error, warn, info, debug, trace or off (overrides [proxy] log_level).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log file; empty for terminal only (overrides [proxy] log_file).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<String>,
    /// PEM certificate chain for the listener (overrides [tls] cert); with --tls-cert and
    /// --tls-key the listener speaks TLS.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert (overrides [tls] key).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<String>,
    /// The admin listener (dashboard, /stats, /metrics), e.g. 127.0.0.1:8081 (overrides [admin] listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<String>,
    /// Any setting, checked as in the file: `--set timeouts.response_ms=1000`; repeatable, and
    /// applied after the other flags. `--check` shows where each value came from.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Check the configuration (certificates and keys loaded and matched), print the effective
    /// settings, and exit.
    #[arg(long)]
    pub check: bool,
    /// Upgrade in place: take the listening sockets of the proxy running with
    /// `[proxy] control_socket = SOCKET`; once this one accepts, that one stops accepting,
    /// drains and exits (see scripts/upgrade.sh).
    #[arg(long, value_name = "SOCKET")]
    pub takeover: Option<PathBuf>,
}

/// The files the start opens, opened here, so that `--check` fails where the start would (as
/// `nginx -t` opens its logs): the log files, appended to (created, with their directory, as
/// at start) and the error pages, read.
fn files_check(raw: &RawConfig, config: &Config) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut failed = |key: &Key, message: String| {
        errors.push(ConfigError {
            file: raw.file().to_string(),
            origin: raw.origin(key.section, key.name),
            key: key.label(),
            message,
        })
    };
    let access = match &config.access_log {
        crate::config::access::Destination::File(path) => Some(path),
        _ => None,
    };
    for (key, path) in [(&keys::LOG_FILE, config.log_file.as_ref()), (&keys::ACCESS_LOG, access)] {
        let Some(path) = path else { continue };
        let opened = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Err("is a directory".to_string()),
            // A FIFO or a device (`/dev/stdout`) is opened at start; a FIFO's open waits for
            // its reader, which `--check` must not.
            Ok(m) if !m.is_file() => Ok(()),
            _ => crate::logging::reopen::open_append(path).map(drop).map_err(|e| e.to_string()),
        };
        if let Err(e) = opened {
            failed(key, format!("{}: {e}", path.display()));
        }
    }
    if let Some(Err(message)) = config.error_pages.as_deref().map(crate::h1::respond::load_pages) {
        failed(&keys::ERROR_PAGES, message);
    }
    if let Some(Err(message)) = config.scale.control_socket.as_deref().map(socket_path_check) {
        failed(&keys::CONTROL_SOCKET, message);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether a unix socket can be bound at `path`: nothing there, or a stale socket (binding
/// replaces it). Anything else is refused, never replaced (a typo naming the config would
/// delete it), and so is a missing directory.
fn socket_path_check(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(m) => {
            let what = match m.file_type() {
                t if t.is_dir() => "a directory",
                t if t.is_symlink() => "a symbolic link",
                _ => "a file that is not a socket",
            };
            Err(format!("{shown} is {what}; binding the socket would replace it"))
        }
        Err(_) => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                Err(format!("{shown}: its directory {} does not exist", dir.display()))
            }
            _ => Ok(()),
        },
    }
}

impl ProxyArgs {
    /// Loads the config file and applies the flags over it.
    pub fn load(&self) -> Result<Config, Vec<ConfigError>> {
        self.raw()?.validate()
    }

    /// [`ProxyArgs::load`], then checks that `workers` fits the system's thread limits (see
    /// [`budget`]): for `--check` and start, before anything is bound. Reloads skip it, since
    /// they cannot change the pool and the running threads would count against it.
    pub fn load_checked(&self) -> Result<Config, Vec<ConfigError>> {
        let raw = self.raw()?;
        let config = raw.validate()?;
        crate::tls::check(&config.tls, &config.file, config.every_backend().any(|b| b.tls.is_some()))?;
        budget::check_config(&config, &budget::Limits::read()).map_err(|refusal| {
            vec![ConfigError {
                file: raw.file().to_string(),
                origin: raw.origin(keys::WORKERS.section, keys::WORKERS.name),
                key: keys::WORKERS.label(),
                message: refusal.to_string(),
            }]
        })?;
        files_check(&raw, &config)?;
        Ok(config)
    }

    fn raw(&self) -> Result<RawConfig, Vec<ConfigError>> {
        let mut raw = RawConfig::load(&self.config)?;
        let flags: [(&Key, &Option<String>); 9] = [
            (&keys::ADMIN_LISTEN, &self.admin),
            (&keys::TLS_CERT, &self.tls_cert),
            (&keys::TLS_KEY, &self.tls_key),
            (&keys::LISTEN, &self.listen),
            (&keys::ALGORITHM, &self.algorithm),
            (&keys::WORKERS, &self.workers),
            (&keys::MODE, &self.mode),
            (&keys::LOG_LEVEL, &self.log_level),
            (&keys::LOG_FILE, &self.log_file),
        ];
        for (key, value) in flags {
            if let (Some(value), Some(flag)) = (value, key.flag) {
                raw.set_flag(key.section, key.name, value, flag);
            }
        }
        if !self.backends.is_empty() {
            raw.set_backends(&self.backends);
        }
        for given in &self.set {
            raw.set_given(given);
        }
        Ok(raw)
    }
}

/// A hint for a flag proxy_server does not have but other tools do (`--port`), or `None`.
pub fn flag_hint(args: impl Iterator<Item = String>) -> Option<&'static str> {
    for arg in args {
        let flag = arg.split('=').next().unwrap_or_default();
        match flag {
            "--port" | "-p" | "--bind" | "--host" => {
                return Some("the address (or a bare port) is given with --listen, e.g. --listen 8080")
            }
            "--https" | "--ssl" | "--tls" => {
                return Some("HTTPS is --mode http with --tls-cert and --tls-key")
            }
            "--config-file" | "-c" => return Some("the configuration file is given with --config"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::config::keys::{Kind, KEYS};

    #[test]
    fn every_flag_in_the_key_table_exists_and_its_help_lists_every_choice() {
        let command = ProxyArgs::command();
        for key in KEYS {
            let Some(flag) = key.flag else { continue };
            let arg = command
                .get_arguments()
                .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag))
                .unwrap_or_else(|| panic!("{flag} (for {}) is not a flag", key.label()));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains(&key.label()), "{flag}'s help does not name {}: {help}", key.label());
            if let Kind::Choice(names) = key.kind {
                for name in names {
                    assert!(help.contains(name), "{flag}'s help does not list {name}: {help}");
                }
            }
        }
        let about = command.get_about().map(|a| a.to_string()).unwrap_or_default();
        for name in keys::ALGORITHMS {
            assert!(about.contains(name), "the about text does not list {name}: {about}");
        }
    }

    #[test]
    fn a_bare_listen_port_means_every_interface_and_flags_are_named_in_errors() {
        let args = |extra: &[&str]| {
            let base = ["proxy_server", "--config", "/dev/null", "--backend", "127.0.0.1:9"];
            ProxyArgs::parse_from(base.iter().chain(extra))
        };
        let config = args(&["--listen", "8080", "--algorithm", "random-two"]).load().expect("valid");
        assert_eq!(config.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(config.algorithm.name(), "random-two");
        let errors = args(&["--listen", "localhost"]).load().expect_err("no port");
        assert_eq!(
            errors[0].to_string(),
            "--listen: [proxy] listen: 'localhost' has no port (expected host:port or a port, e.g. 127.0.0.1:8080)"
        );
    }

    #[test]
    fn set_overrides_any_key_with_the_file_s_checks_and_check_says_where_values_came_from() {
        let args = |extra: &[&str]| {
            let base = ["proxy_server", "--config", "/dev/null", "--backend", "127.0.0.1:9"];
            ProxyArgs::parse_from(base.iter().chain(extra))
        };
        let config =
            args(&["--set", "timeouts.response_ms=1000", "--admin", "127.0.0.1:8081"]).load().expect("valid");
        assert_eq!(config.timeouts.response, std::time::Duration::from_secs(1));
        assert_eq!(config.admin, Some("127.0.0.1:8081".parse().expect("addr")));
        let shown = config.to_string();
        assert!(shown.contains("\nresponse_ms = 1000  # --set timeouts.response_ms=1000\n"), "{shown}");
        assert!(shown.contains("\nlisten = 127.0.0.1:8081  # --admin\n"), "{shown}");
        assert!(shown.contains("\nidle_ms = 60000  # default\n"), "{shown}");
        let errors: Vec<String> = args(&[
            "--set",
            "timeouts.response_ms=fast",
            "--set",
            "proxy.algoritm=x",
            "--set",
            "timeout.idle_ms=1",
            "--set",
            "proxy.idle_ms=4",
            "--set",
            "nodot",
        ])
        .load()
        .expect_err("bad")
        .iter()
        .map(ToString::to_string)
        .collect();
        for want in [
            "--set timeouts.response_ms=fast: [timeouts] response_ms: expected a whole number, got 'fast'",
            "--set proxy.algoritm=x: [proxy] algoritm: unknown key 'algoritm' in [proxy]; did you mean 'algorithm'?",
            "--set timeout.idle_ms=1: unknown section [timeout]; did you mean '[timeouts]'?",
            "--set proxy.idle_ms=4: [proxy] idle_ms: unknown key 'idle_ms' in [proxy]; 'idle_ms' is in [timeouts]",
            "--set nodot: expected SECTION.KEY=VALUE, e.g. timeouts.response_ms=1000",
        ] {
            assert!(errors.iter().any(|e| e == want), "no {want:?} in {errors:#?}");
        }
    }

    #[test]
    fn mistakes_get_a_hint_naming_what_the_user_gave() {
        let errors =
            ProxyArgs::parse_from(["proxy_server", "--config", "/dev/null", "--backend", "localhost"])
                .load()
                .expect_err("no port");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "--backend localhost: 'localhost' has no port (expected host:port, e.g. 127.0.0.1:8080)"
        );
        let https = ["proxy_server", "--config", "/dev/null", "--backend", "127.0.0.1:9", "--mode", "https"];
        let errors = ProxyArgs::parse_from(https).load().expect_err("no https mode");
        assert!(errors[0].to_string().contains("--tls-cert and --tls-key"), "{}", errors[0]);
        let hint = |args: &[&str]| flag_hint(args.iter().map(|a| a.to_string()));
        assert_eq!(
            hint(&["--port", "8080"]),
            Some("the address (or a bare port) is given with --listen, e.g. --listen 8080")
        );
        assert_eq!(hint(&["--port=8080"]), hint(&["--port", "8080"]));
        assert_eq!(hint(&["--workers", "4"]), None);
    }
}
