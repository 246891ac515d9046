//! dummy_server: a test backend that echoes lines and speaks HTTP/1.1.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::companions::dummy::{describe, DummyArgs, DummyServer};
use lbproxy::logging::{self, out};
use lbproxy::server::signals;

fn main() -> ExitCode {
    let args = DummyArgs::parse();
    let result = DummyServer::bind(&args).and_then(|server| {
        let level = if args.verbose { log::LevelFilter::Debug } else { log::LevelFilter::Info };
        logging::init(level, server.log_file())?;
        let signals = signals::install()?;
        server.run(signals.stop, std::time::Duration::from_secs(5))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out::err_line(format_args!("dummy_server: {}", describe(&e)));
            ExitCode::from(2)
        }
    }
}
