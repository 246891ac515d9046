//! simulate_client: send concurrent requests through the proxy and report the distribution.

use std::process::ExitCode;

use clap::Parser;
use lbproxy::simulate::{self, ClientArgs};

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    match simulate::run(&args) {
        Ok(mut report) => {
            print!("{}", report.table(&args));
            if report.failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("simulate_client: {e}");
            ExitCode::from(2)
        }
    }
}
