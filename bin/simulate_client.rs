//! simulate_client: send concurrent requests through the proxy and report the distribution.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::out;
use lbproxy::simulate::{self, ClientArgs};

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    match simulate::run(&args) {
        // A reader gone before the table (`--verbose | head`) is a quiet success, as in ripgrep.
        Ok(mut report) => match out::text(&report.table(&args)) {
            Err(e) => out::failed("simulate_client", &e),
            Ok(()) if report.failures == 0 => ExitCode::SUCCESS,
            Ok(()) => ExitCode::from(1),
        },
        Err(e) => {
            out::err_line(format_args!("simulate_client: {e}"));
            ExitCode::from(2)
        }
    }
}
