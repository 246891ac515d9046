//! Running out of threads and memory mappings: a `workers` value the system cannot hold is
//! refused by `--check` and at start (exit 2, the limit named, the largest value that fits),
//! before anything listens, rather than aborting half-started.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use crate::util::*;

/// proxy_server with no config file (`/dev/null`, readable by any user), one backend and `args`.
fn proxy_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(PROXY);
    cmd.args(["--config", "/dev/null", "--backend", "127.0.0.1:9", "--log-file", ""]).args(args);
    cmd
}

/// Runs `cmd` to its end with its output; kills it (by pid) if it outlives [`WAIT`].
fn run(mut cmd: Command) -> Output {
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("proxy_server did not exit within {WAIT:?}");
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// "at most N fit" from a refusal, with the whole stderr for failure messages.
fn largest_fit(out: &Output) -> usize {
    let err = String::from_utf8_lossy(&out.stderr);
    let n = err.split("at most ").nth(1).and_then(|rest| rest.split(" fit").next());
    n.map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'at most N fit' in:\n{err}"))
}

fn assert_refused(out: &Output, workers: &str, limit: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2 (not an abort or a start):\n{err}");
    let needle = format!("--workers: [proxy] workers: {workers} needs ");
    assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    assert!(err.contains(limit), "the refusal does not name {limit}:\n{err}");
    assert!(!err.contains("listening on"), "it started listening:\n{err}");
}

fn assert_nothing_listens(addr: SocketAddr) {
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused), "something listens on {addr}");
}

#[test]
fn twenty_thousand_workers_are_refused_by_check_and_at_start_with_the_limit_and_what_fits() {
    // Each thread costs ~4 memory mappings, and vm.max_map_count is 65530 by default, so 20,000
    // workers (the config's maximum) cannot all start here.
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").expect("read");
    assert!(
        max_map_count.trim().parse::<u64>().expect("number") < 80_000,
        "this test needs a system where 20000 workers do not fit; vm.max_map_count is {max_map_count}"
    );
    let check = run(proxy_cmd(&["--check", "--workers", "20000"]));
    assert_refused(&check, "20000", "vm.max_map_count is ");
    assert!(check.stdout.is_empty(), "--check printed a config it refused");
    let fit = largest_fit(&check);
    assert!((1000..20_000).contains(&fit), "implausible fit {fit}");

    // The largest value that fits is accepted, so the message's number is usable as given.
    let ok = run(proxy_cmd(&["--check", "--workers", &fit.to_string()]));
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&format!("\nworkers = {fit}  # --workers\n")));

    // Starting: the same refusal, before the listening socket is bound.
    let addr = free_port();
    let start = run(proxy_cmd(&["--listen", &addr.to_string(), "--workers", "20000"]));
    assert_refused(&start, "20000", "vm.max_map_count is ");
    assert_eq!(largest_fit(&start), fit);
    assert_nothing_listens(addr);
}

/// RLIMIT_NPROC counts every thread of the user and is not enforced for root, so the proxy is
/// run as `nobody` (when the tests run as root) under a limit of 64 processes/threads.
fn under_nproc_limit(mut cmd: Command) -> Command {
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (setrlimit, setgroups, setgid, setuid) and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_low_rlimit_nproc_is_named_and_its_largest_fit_is_accepted() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let check = run(under_nproc_limit(proxy_cmd(&["--check", "--workers", "100"])));
    assert_refused(&check, "100", "RLIMIT_NPROC (ulimit -u) is 64 and this user runs ");
    let fit = largest_fit(&check);
    assert!(fit < 64, "{fit} cannot fit under 64");
    if as_root {
        // `nobody` runs (almost) nothing else, so most of the 64 are left for the proxy.
        assert!(fit >= 40, "only {fit} fit:\n{}", String::from_utf8_lossy(&check.stderr));
        let ok = run(under_nproc_limit(proxy_cmd(&["--check", "--workers", &fit.to_string()])));
        assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    let addr = free_port();
    let start = run(under_nproc_limit(proxy_cmd(&["--listen", &addr.to_string(), "--workers", "100"])));
    assert_refused(&start, "100", "RLIMIT_NPROC (ulimit -u) is 64");
    assert_nothing_listens(addr);
}
