//! Test harness: real binaries on 127.0.0.1:0 ports, readiness read from their logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

mod http;
pub use http::*;

pub const PROXY: &str = env!("CARGO_BIN_EXE_proxy_server");
pub const DUMMY: &str = env!("CARGO_BIN_EXE_dummy_server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_simulate_client");

/// Generous upper bound for anything a test waits on; tests normally finish far sooner.
pub const WAIT: Duration = Duration::from_secs(20);

/// A child process whose stderr lines are collected; killed (by pid) when dropped.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Set once stderr reached its end: every line is in `log`.
    read_all: Arc<std::sync::atomic::AtomicBool>,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, dir: Option<tempfile::TempDir>) -> Proc {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let (tx, rx) = crossbeam_channel::unbounded();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let read_all = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = read_all.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Proc { child, lines: rx, log, read_all, _dir: dir }
    }

    /// Waits for a stderr line containing `needle`; panics with the log so far on timeout.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} within {WAIT:?}; log:\n{}", self.log_text()),
            }
        }
    }

    /// Waits for a stderr line containing `needle` logged at or after `mark` (see
    /// [`Proc::mark`]), whatever earlier waits skipped: two waits may be satisfied in either
    /// order. Panics with the log on timeout.
    pub fn wait_for_since(&self, mark: usize, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) =
                self.log.lock().expect("log lock").iter().skip(mark).find(|l| l.contains(needle))
            {
                return line.clone();
            }
            // A line arriving wakes this wait (the channel carries every line too).
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no line with {needle:?} within {WAIT:?}; log:\n{}", self.log_text());
            }
            let _ = self.lines.recv_timeout(left.min(Duration::from_millis(50)));
        }
    }

    /// The directory the process runs in (its config.ini lives there).
    pub fn dir(&self) -> &Path {
        self._dir.as_ref().map(|d| d.path()).expect("process has a directory")
    }

    /// Number of stderr lines so far; pair with [`Proc::lines_from`].
    pub fn mark(&self) -> usize {
        self.log.lock().expect("log lock").len()
    }

    /// The stderr lines logged after `mark`.
    pub fn lines_from(&self, mark: usize) -> Vec<String> {
        self.log.lock().expect("log lock")[mark..].to_vec()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The address after "listening on " in the line announcing it.
    pub fn listening_addr(&self) -> SocketAddr {
        let line = self.wait_for("listening on ");
        let rest = line.split("listening on ").nth(1).expect("address");
        rest.split_whitespace().next().expect("address").parse().expect("socket address")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("kill").success());
    }

    /// Waits for the process to exit, at most `WAIT`; then every line it wrote is in the log.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Its last lines may still be in the pipe: read to its end.
                while !self.read_all.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit; log:\n{}", self.log_text());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a dummy server named `name` on `port` (0: a free one) with `extra` flags.
pub fn dummy_with(name: &str, port: u16, extra: &[&str]) -> (Proc, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(DUMMY);
    cmd.arg(port.to_string()).args(["--name", name]).args(extra).arg("--log-dir").arg(dir.path());
    let p = Proc::spawn(&mut cmd, Some(dir));
    let addr = p.listening_addr();
    (p, addr)
}

/// Starts a dummy server named `name` on a free port.
pub fn dummy(name: &str) -> (Proc, SocketAddr) {
    dummy_with(name, 0, &[])
}

/// Starts a dummy server named `name` on `port` (to restart one where it was).
pub fn dummy_on(name: &str, port: u16) -> (Proc, SocketAddr) {
    dummy_with(name, port, &[])
}

/// The admin address the proxy announced (found in the whole log: other waits may have passed
/// its line already).
pub fn admin_addr(p: &Proc) -> SocketAddr {
    let line = p.wait_for_since(0, "admin listening on ");
    let rest = line.split("admin listening on ").nth(1).expect("address");
    rest.split_whitespace().next().expect("address").parse().expect("socket address")
}

/// GET `path` on a new connection.
pub fn http_get(addr: SocketAddr, path: &str) -> Resp {
    send_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(), "GET").0
}

/// Starts a dummy named `name` that drains for `drain_ms` (failing /health) when stopped.
pub fn draining_dummy(name: &str, drain_ms: u64) -> (Proc, SocketAddr) {
    dummy_with(name, 0, &["--drain-ms", &drain_ms.to_string()])
}

/// Starts `n` dummies named app1..appN.
pub fn dummies(n: usize) -> Vec<(Proc, SocketAddr)> {
    (1..=n).map(|i| dummy(&format!("app{i}"))).collect()
}

/// The byte count an access line gives just before `unit` (`"B in"` or `"B out"`).
pub fn logged_bytes(line: &str, unit: &str) -> u64 {
    line.split(unit)
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{unit}` count in {line:?}"))
}

/// A `[backends]` section for `addrs`, named app1..appN.
pub fn backends_section(addrs: &[SocketAddr]) -> String {
    let mut s = String::from("[backends]\n");
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!("app{} = {a}\n", i + 1));
    }
    s
}

/// Starts the proxy with `config` under the shell's `ulimit` command `limit` (e.g. `ulimit -n 40`).
pub fn proxy_under(limit: &str, config: &str) -> (Proc, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.ini"), config).expect("write");
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir.path())
        .args(["-c", &format!("{limit} && exec {PROXY} --config config.ini --listen 127.0.0.1:0")]);
    let p = Proc::spawn(&mut cmd, Some(dir));
    let addr = p.listening_addr();
    (p, addr)
}

/// Writes `config` into a fresh directory and starts the proxy on 127.0.0.1:0 with `extra` flags.
pub fn proxy_with(config: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.ini");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(PROXY);
    cmd.current_dir(dir.path()).arg("--config").arg(&path).args(["--listen", "127.0.0.1:0"]).args(extra);
    let p = Proc::spawn(&mut cmd, Some(dir));
    let addr = p.listening_addr();
    (p, addr)
}

/// Starts the proxy over `addrs` with `algorithm` and otherwise default settings, but no active
/// health checks (they would use up the single connection some test backends accept).
pub fn proxy(addrs: &[SocketAddr], algorithm: &str) -> (Proc, SocketAddr) {
    let config = format!(
        "[proxy]\nalgorithm = {algorithm}\nworkers = 64\n[health]\nenabled = false\n{}",
        backends_section(addrs)
    );
    proxy_with(&config, &[])
}

/// Connects with read/write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_write_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Runs simulate_client against `target` with `args` to its end: its exit code, stdout and
/// stderr.
pub fn simulate(target: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(CLIENT)
        .arg("--target")
        .arg(target.to_string())
        .args(args)
        .output()
        .expect("simulate_client");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Reads one line (without the newline), byte by byte so nothing past it is consumed.
pub fn read_line(s: &mut impl Read) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("read_line: {e} after {:?}", String::from_utf8_lossy(&line)),
        }
    }
    String::from_utf8_lossy(&line).trim_end_matches('\r').to_string()
}

/// Sends `msg` and returns the backend name from the `[name] msg` reply, checking the echo.
pub fn exchange(s: &mut TcpStream, msg: &str) -> String {
    s.write_all(format!("{msg}\n").as_bytes()).expect("send");
    let reply = read_line(s);
    let (name, echoed) =
        reply.strip_prefix('[').and_then(|r| r.split_once("] ")).unwrap_or_else(|| panic!("reply {reply:?}"));
    assert_eq!(echoed, msg, "reply {reply:?} does not echo {msg:?}");
    name.to_string()
}

/// A connection to `to` from the loopback source address `from` (bound before connect), with
/// read timeouts set: distinct clients on one machine.
pub fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into()).expect("bind the source address");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// A port that refuses connections: bound (so no one else takes it) but not listening.
/// Keep the socket alive as long as the port must stay dead.
pub fn dead_addr() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let addr = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, addr)
}

/// The repository's shipped config.ini.
pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.ini")
}

/// Raises this process's soft descriptor limit to the hard one; the proxy and dummies started
/// afterwards inherit it.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0, "getrlimit");
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit");
    }
    lim.rlim_cur
}

/// A `/proc/<pid>/status` field as a number (VmRSS in KiB, Threads).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("number")
}

/// Client threads sending requests until stopped (each for at most 120 s): thread `i` runs the
/// request closure `make(i)` returns, over and over, counting successes and keeping failures.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start<F>(threads: usize, make: impl Fn(usize) -> F) -> Load
    where
        F: FnMut() -> Result<(), String> + Send + 'static,
    {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|i| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let mut request = make(i);
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        match request() {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures.lock().expect("failures").push(e),
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, failures, threads }
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    pub fn wait_ok(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + WAIT;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "load stalled; failures: {:?}", self.failures.lock());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the load; returns (requests that succeeded, failures).
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.ok.load(std::sync::atomic::Ordering::SeqCst), failures)
    }

    /// Stops the load and asserts that no request failed; returns how many succeeded.
    pub fn finish_without_failures(self) -> u64 {
        let (ok, failures) = self.finish();
        assert!(
            failures.is_empty(),
            "{} failed of {}: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(5)]
        );
        ok
    }
}

/// `[proxy] workers` as shipped: the default every scale test measures against.
pub fn default_workers() -> u64 {
    lbproxy::config::keys::WORKERS.default.parse().expect("a number")
}

/// The admin listener's /stats document.
pub fn proxy_stats(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(admin, "/stats").text()).expect("/stats is JSON")
}

/// The /stats entry of backend `name`.
pub fn backend_stats(admin: SocketAddr, name: &str) -> serde_json::Value {
    let stats = proxy_stats(admin);
    let found = stats["backends"].as_array().expect("backends").iter().find(|b| b["name"] == name).cloned();
    found.unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// Waits (bounded by `WAIT`) until `ready` says yes, polling every 10 ms: for a counter or gauge
/// read from /stats, where no log line says so.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A backend that accepts one connection and never reads from it, until told through the
/// sender (or `WAIT` passes); join the handle once done.
pub fn deaf_backend() -> (SocketAddr, crossbeam_channel::Sender<()>, thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (done, end) = crossbeam_channel::bounded::<()>(1);
    let h = thread::spawn(move || {
        let (_s, _) = l.accept().expect("accept");
        let _ = end.recv_timeout(WAIT);
    });
    (addr, done, h)
}

/// Sends on `s`, made non-blocking, until every buffer on the way is full (bounded: loopback
/// buffers are a few MiB, the loop stops at 256 MiB); returns how much went.
pub fn send_until_full(s: &TcpStream) -> usize {
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![b'x'; 65536];
    let mut sent = 0usize;
    while sent < (256 << 20) {
        match (&*s).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("send: {e}"),
        }
    }
    sent
}

/// Resets `s` (a relay's client whose upload waits on [`deaf_backend`]) and checks that the
/// proxy lets the relay go at once, not at `idle_ms`; then lets the backend go.
pub fn reset_is_seen(
    p: &Proc,
    admin: SocketAddr,
    s: TcpStream,
    backend: (crossbeam_channel::Sender<()>, thread::JoinHandle<()>),
) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(s);
    wait_until("the relay let go", || backend_stats(admin, "app1")["active"] == 0);
    assert!(!p.log_text().contains("idle timeout"), "{}", p.log_text());
    backend.0.send(()).expect("backend");
    backend.1.join().expect("backend");
}

/// A proxy in `mode` with four workers (two taking connections) in front of `backend`, health
/// checks off, and its admin listener: `(proxy, address, admin)`. `tls`: a `[tls]` section, or
/// empty. For crowds ten or a hundred times the workers.
pub fn four_workers(mode: &str, backend: SocketAddr, tls: &str) -> (Proc, SocketAddr, SocketAddr) {
    let config = format!(
        "[proxy]\nmode = {mode}\nworkers = 4\nactive_workers = 2\n[health]\nenabled = false\n\
         [admin]\nlisten = 127.0.0.1:0\n{tls}{}",
        backends_section(&[backend])
    );
    let (p, addr) = proxy_with(&config, &[]);
    let admin = admin_addr(&p);
    (p, addr, admin)
}
