//! simulate_client: send concurrent requests through the proxy and report the distribution.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::companions::simulate::{self, ClientArgs};
use lbproxy::logging::out;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    if args.interactive {
        return simulate::interactive::run(&args).map_or_else(
            |e| {
                out::err_line(format_args!("simulate_client: {e}"));
                ExitCode::from(2)
            },
            |()| ExitCode::SUCCESS,
        );
    }
    match simulate::run(&args) {
        Ok(report) if report.nobody_listening(&args).is_some() => {
            out::err_line(format_args!(
                "simulate_client: {}",
                report.nobody_listening(&args).unwrap_or_default()
            ));
            ExitCode::from(2)
        }
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
