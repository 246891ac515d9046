//! Everything the binaries print for a user (stdout, and their own error lines on stderr): quiet
//! on a closed pipe.
//!
//! `println!` panics when the reader has gone (`proxy_server --check | head -3`). Here output
//! goes through a locked handle, and the first `BrokenPipe` sets a process-wide flag: later
//! writes from any thread return the same error at once, worker threads can stop early
//! ([`gone`]), and the main maps it to exit status 0, as ripgrep does.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has gone: there is no point producing more output.
pub fn gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

fn broken_pipe() -> io::Error {
    io::Error::from(io::ErrorKind::BrokenPipe)
}

/// Writes `text` to stdout as is and flushes it. `Err(BrokenPipe)` once the reader has gone.
pub fn text(text: &str) -> io::Result<()> {
    write_with(|out| out.write_all(text.as_bytes()))
}

/// Writes `args` and a newline to stdout (use with `format_args!`) and flushes it.
/// `Err(BrokenPipe)` once the reader has gone.
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    write_with(|out| writeln!(out, "{args}"))
}

fn write_with(write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) -> io::Result<()> {
    if gone() {
        return Err(broken_pipe());
    }
    let mut out = io::stdout().lock();
    let result = write(&mut out).and_then(|()| out.flush());
    if let Err(e) = &result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
    }
    result
}

/// Writes `args` and a newline to stderr, ignoring failure: an error report with nowhere to go
/// must not become a panic.
pub fn err_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// The exit status for a failed write to stdout: success when the reader simply went away
/// (`| head`), otherwise the error is reported as `program: stdout: ...` and the status is 2.
pub fn failed(program: &str, e: &io::Error) -> ExitCode {
    if e.kind() == io::ErrorKind::BrokenPipe {
        ExitCode::SUCCESS
    } else {
        err_line(format_args!("{program}: stdout: {e}"));
        ExitCode::from(2)
    }
}
