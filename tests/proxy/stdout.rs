//! Output into a pipe whose reader goes away (`| head`): every binary exits 0 quietly, as
//! ripgrep does, and never panics with "failed printing to stdout".

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// Runs `cmd` with stdout into a pipe that is closed after `lines` lines have been read (at once
/// for 0); returns whether it exited successfully and its stderr.
fn run_until_reader_leaves(cmd: &mut Command, lines: usize) -> (bool, String) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    for i in 0..lines {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "stdout ended after {i} of {lines} lines");
    }
    drop(out);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {WAIT:?} after its reader left");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status.success(), errors.join().expect("stderr reader"))
}

fn assert_quiet(what: &str, (success, stderr): (bool, String)) {
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert!(success, "{what} did not exit 0 on a closed stdout; stderr:\n{stderr}");
}

#[test]
fn proxy_check_into_a_closed_pipe_exits_0_without_a_panic() {
    let config = shipped_config();
    for lines in [0, 1] {
        let mut cmd = Command::new(PROXY);
        cmd.arg("--check").arg("--config").arg(&config);
        assert_quiet(
            &format!("proxy_server --check, reader gone after {lines} line(s)"),
            run_until_reader_leaves(&mut cmd, lines),
        );
    }
}

#[test]
fn help_and_version_into_a_closed_pipe_exit_0_without_a_panic() {
    for bin in [PROXY, DUMMY, CLIENT] {
        for flag in ["--help", "--version"] {
            let what = format!("{bin} {flag}");
            assert_quiet(&what, run_until_reader_leaves(Command::new(bin).arg(flag), 0));
        }
    }
}

#[test]
fn simulate_client_verbose_into_a_closed_pipe_exits_0_without_a_panic() {
    let (_d, backend) = dummy("app1");
    let (_p, addr) = proxy(&[backend], "round-robin");
    let mut cmd = Command::new(CLIENT);
    cmd.args(["--target", &addr.to_string(), "--clients", "8", "--requests", "200", "--verbose"]);
    let (success, stderr) = run_until_reader_leaves(&mut cmd, 1);
    assert_quiet("simulate_client --verbose, reader gone after 1 line", (success, stderr));
}
