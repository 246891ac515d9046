//! proxy_server: load the configuration, set up logs and signals, run the proxy.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::cli::ProxyArgs;
use lbproxy::logging::{self, out};
use lbproxy::server::signals;
use lbproxy::server::Server;

fn main() -> ExitCode {
    let args = match ProxyArgs::try_parse() {
        Ok(args) => args,
        // --help and --version: printed to stdout, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's own message, and a hint for flags other proxies use.
            let _ = e.print();
            if let Some(hint) = lbproxy::cli::flag_hint(std::env::args().skip(1)) {
                out::err_line(format_args!("hint: {hint}"));
            }
            return ExitCode::from(2);
        }
    };
    let config = match args.load_checked() {
        Ok(config) => config,
        Err(errors) => {
            out::err_line(format_args!("proxy_server: configuration has {} error(s):", errors.len()));
            for e in &errors {
                out::err_line(format_args!("  {e}"));
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        // As `nginx -t` says `[warn]`: valid, but probably not what was meant.
        for w in &config.warnings {
            out::err_line(format_args!("proxy_server: warning: {w}"));
        }
        let printed = out::text(&config.to_string())
            .and_then(|()| out::line(format_args!("configuration {} is valid", config.file)));
        return printed.map_or_else(|e| out::failed("proxy_server", &e), |()| ExitCode::SUCCESS);
    }
    let reload_args = args.clone();
    let loader = Box::new(move || reload_args.load());
    let started = logging::init(config.log_level, config.log_file.as_deref())
        .and_then(|()| logging::access::start(&config.access_log, config.access_format))
        .and_then(|()| signals::install())
        .and_then(|signals| {
            let server = match &args.takeover {
                Some(socket) => Server::take_over(config, socket),
                None => Server::bind(config),
            };
            server.map(|server| (server, signals))
        })
        .and_then(|(server, signals)| server.run(signals, loader));
    match started {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            if log::max_level() == log::LevelFilter::Off {
                out::err_line(format_args!("proxy_server: {e}"));
            } else {
                log::error!("{e}");
            }
            ExitCode::from(2)
        }
    }
}
