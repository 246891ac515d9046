//! proxy_server: load the configuration, set up logs and signals, run the proxy.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::cli::ProxyArgs;
use lbproxy::server::Server;
use lbproxy::{logging, signals};

fn main() -> ExitCode {
    let args = ProxyArgs::parse();
    let config = match args.load_checked() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("proxy_server: configuration has {} error(s):", errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        print!("{config}");
        println!("configuration {} is valid", config.file);
        return ExitCode::SUCCESS;
    }
    let loader = Box::new(move || args.load());
    let started = logging::init(config.log_level, config.log_file.as_deref())
        .and_then(|()| signals::install())
        .and_then(|signals| Server::bind(config).map(|server| (server, signals)))
        .and_then(|(server, signals)| server.run(signals, loader));
    match started {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            if log::max_level() == log::LevelFilter::Off {
                eprintln!("proxy_server: {e}");
            } else {
                log::error!("{e}");
            }
            ExitCode::from(2)
        }
    }
}
