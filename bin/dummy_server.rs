//! dummy_server: a test backend that echoes lines and speaks HTTP/1.1.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::dummy::{DummyArgs, DummyServer};
use lbproxy::logging;

fn main() -> ExitCode {
    let args = DummyArgs::parse();
    let result = DummyServer::bind(&args).and_then(|server| {
        logging::init(log::LevelFilter::Info, server.log_file())?;
        server.run()
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dummy_server: {e}");
            ExitCode::from(2)
        }
    }
}
