//! The thread budget: whether `workers` plus the service threads fit this system's limits on
//! threads, memory mappings and memory, checked before anything is bound. A pool thread the
//! system refuses only fails the start after the threads before it were made, and says nothing
//! of which limit it hit (see [`crate::threads::pool`]); checked first, the proxy refuses to
//! start with a line naming the limit and the largest `workers` that fits.
//!
//! [`Limits::read`] reads the real limits; everything else is pure, so tests feed fake ones.
//! A limit that cannot be read is not checked (the kernel still enforces it).

use std::fmt;
use std::path::{Path, PathBuf};

pub use super::cgroup::Cap;
use super::cgroup::{read_number, tightest, MEMORY, PIDS};
use crate::config::Config;

/// Memory mappings per thread: its stack and guard page, plus a share of malloc arenas and
/// large allocations (a measured thread costs 2-3; 4 leaves room).
pub const MAPPINGS_PER_THREAD: u64 = 4;
/// Mappings kept free beyond those in use now, for libraries loaded later, arenas and buffers.
pub const MAPPING_MARGIN: u64 = 1024;
/// Resident memory per thread. The stack is 128 KiB ([`crate::threads::pool::STACK_SIZE`]) but only
/// touched pages are resident; 64 KiB covers the stack in use plus per-thread buffers.
pub const RESIDENT_KIB_PER_THREAD: u64 = 64;
/// Threads of the admin listener's pool.
pub const ADMIN_THREADS: usize = 4;

/// The limits a new thread counts against; `None`: unlimited, not enforced, or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NPROC` (soft) and the threads this user runs now. It counts every thread of the
    /// user, not just ours. `None` for root, which the kernel exempts.
    pub nproc: Option<Cap>,
    /// `kernel.threads-max` and the threads running on the system now.
    pub threads_max: Option<Cap>,
    /// `vm.max_map_count` and this process's mappings now.
    pub max_map_count: Option<Cap>,
    /// The tightest cgroup `pids.max` of this process's cgroup or its ancestors, its
    /// `pids.current`, and the file it came from.
    pub pids: Option<(Cap, PathBuf)>,
    /// The tightest cgroup `memory.max` (v1: `memory.limit_in_bytes`) and its usage, in bytes,
    /// and the file it came from: a container's limit, which `MemAvailable` does not show.
    pub memory: Option<(Cap, PathBuf)>,
    /// `MemAvailable` from /proc/meminfo, in KiB.
    pub mem_available_kib: Option<u64>,
}

/// Why `workers` does not fit: the tightest limit, and the largest value that fits them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub workers: usize,
    /// The largest `workers` that fits every limit (0 if not even the service threads fit).
    pub fit: usize,
    /// What `workers` needs of the limit, e.g. "~80,044 memory mappings (4 per thread)".
    pub needs: String,
    /// The limit and its use, e.g. "vm.max_map_count is 65530 and 1,062 are in use".
    pub limit: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs {}; {}; at most {} fit",
            self.workers,
            self.needs,
            self.limit,
            grouped(self.fit as u64)
        )
    }
}

/// The threads the proxy runs besides its workers: acceptor, resolver, the workers' gate,
/// health checker (and a check thread per backend address while a round runs), two signal
/// threads, a drain timer after a reload, the housekeeping (backend pool sweeps, stats lines),
/// and the admin pool when configured. A relayed connection uses one thread, its worker, in
/// both modes.
pub fn service_threads(c: &Config) -> usize {
    let checks = if c.health.enabled { c.every_backend().map(|b| b.addrs.len()).sum() } else { 0 };
    let admin = if c.admin.is_some() { ADMIN_THREADS } else { 0 };
    let housekeeping = 1;
    1 + 1 + 1 + 1 + checks + 2 + 1 + housekeeping + admin
}

/// One limit as a thread budget: threads that fit, and how to describe the shortfall.
struct Budget {
    threads: u64,
    needs: Box<dyn Fn(u64) -> String>,
    limit: String,
}

fn budgets(limits: &Limits) -> Vec<Budget> {
    let mut out = Vec::new();
    if let Some(c) = &limits.nproc {
        out.push(Budget {
            threads: c.max.saturating_sub(c.used),
            needs: Box::new(|t| format!("{} threads", grouped(t))),
            limit: format!(
                "RLIMIT_NPROC (ulimit -u) is {} and this user runs {} thread(s)",
                c.max,
                grouped(c.used)
            ),
        });
    }
    if let Some(c) = &limits.threads_max {
        out.push(Budget {
            threads: c.max.saturating_sub(c.used),
            needs: Box::new(|t| format!("{} threads", grouped(t))),
            limit: format!("kernel.threads-max is {} and {} threads are running", c.max, grouped(c.used)),
        });
    }
    if let Some(c) = &limits.max_map_count {
        out.push(Budget {
            threads: c.max.saturating_sub(c.used + MAPPING_MARGIN) / MAPPINGS_PER_THREAD,
            needs: Box::new(|t| {
                format!(
                    "~{} memory mappings ({MAPPINGS_PER_THREAD} per thread)",
                    grouped(t * MAPPINGS_PER_THREAD)
                )
            }),
            limit: format!(
                "vm.max_map_count is {} and {} are in use (plus {MAPPING_MARGIN} kept free)",
                c.max,
                grouped(c.used)
            ),
        });
    }
    if let Some((c, path)) = &limits.pids {
        out.push(Budget {
            threads: c.max.saturating_sub(c.used),
            needs: Box::new(|t| format!("{} threads", grouped(t))),
            limit: format!(
                "the cgroup's pids.max is {} and {} are in use ({})",
                c.max,
                grouped(c.used),
                path.display()
            ),
        });
    }
    if let Some(kib) = limits.mem_available_kib {
        out.push(Budget {
            threads: kib / RESIDENT_KIB_PER_THREAD,
            needs: Box::new(memory_needs),
            limit: format!("MemAvailable is {} MiB", grouped(kib / 1024)),
        });
    }
    if let Some((c, path)) = &limits.memory {
        out.push(Budget {
            threads: c.max.saturating_sub(c.used) / 1024 / RESIDENT_KIB_PER_THREAD,
            needs: Box::new(memory_needs),
            limit: format!(
                "the cgroup's memory limit is {} MiB and {} MiB are in use ({})",
                grouped(c.max / (1 << 20)),
                grouped(c.used / (1 << 20)),
                path.display()
            ),
        });
    }
    out
}

fn memory_needs(threads: u64) -> String {
    format!(
        "~{} MiB of memory ({RESIDENT_KIB_PER_THREAD} KiB per thread)",
        grouped(threads * RESIDENT_KIB_PER_THREAD / 1024)
    )
}

/// Checks that `workers` plus `service` threads fit every limit. On refusal, names the tightest
/// limit and the largest `workers` that fits them all.
pub fn check(workers: usize, service: usize, limits: &Limits) -> Result<(), Refusal> {
    let needed = (workers + service) as u64;
    let Some(tightest) = budgets(limits).into_iter().min_by_key(|b| b.threads) else {
        return Ok(());
    };
    if needed <= tightest.threads {
        return Ok(());
    }
    Err(Refusal {
        workers,
        fit: usize::try_from(tightest.threads).unwrap_or(usize::MAX).saturating_sub(service),
        needs: (tightest.needs)(needed),
        limit: tightest.limit,
    })
}

/// [`check`] for a configuration, against `limits`.
pub fn check_config(c: &Config, limits: &Limits) -> Result<(), Refusal> {
    check(c.workers, service_threads(c), limits)
}

/// `12345` as `12,345`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Limits {
    /// Reads this system's limits (Linux /proc and /sys; elsewhere only RLIMIT_NPROC).
    pub fn read() -> Limits {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
        Limits {
            nproc: read_nproc(),
            threads_max: read_number("/proc/sys/kernel/threads-max").zip(running_threads()).map(cap),
            max_map_count: read_number("/proc/sys/vm/max_map_count")
                .zip(std::fs::read_to_string("/proc/self/maps").ok().map(|m| m.lines().count() as u64))
                .map(cap),
            pids: cgroup.as_deref().and_then(|text| tightest(text, Path::new("/sys/fs/cgroup"), &PIDS)),
            memory: cgroup.as_deref().and_then(|text| tightest(text, Path::new("/sys/fs/cgroup"), &MEMORY)),
            mem_available_kib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| meminfo_kib(&m, "MemAvailable")),
        }
    }
}

fn cap((max, used): (u64, u64)) -> Cap {
    Cap { max, used }
}

/// Threads on the system: the denominator of /proc/loadavg's fourth field ("1/734").
fn running_threads() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()
}

/// `key:   12345 kB` from /proc/meminfo.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RLIMIT_NPROC and this user's threads, unless unlimited or not enforced for this process.
fn read_nproc() -> Option<Cap> {
    // `None`: unlimited.
    let current = rustix::process::getrlimit(rustix::process::Resource::Nproc).current?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status_field(&status, "Uid")?;
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if nproc_exempt(uid, status_field(&status, "CapEff").unwrap_or(0), &uid_map) {
        return None;
    }
    Some(Cap { max: current, used: user_threads(uid) })
}

/// The kernel skips RLIMIT_NPROC for the initial namespace's root user and for holders of
/// CAP_SYS_ADMIN or CAP_SYS_RESOURCE (checked in the initial user namespace, so only when our
/// user namespace is the initial one: uid_map maps all of 0..2^32 onto itself).
pub fn nproc_exempt(uid: u64, cap_eff: u64, uid_map: &str) -> bool {
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_SYS_RESOURCE: u64 = 24;
    let initial = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    let capable = cap_eff & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_RESOURCE) != 0;
    initial && (uid == 0 || capable)
}

/// The first number of a /proc status line: `Uid:` (real uid), `Threads:`, or `CapEff:` (hex).
fn status_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    let value = line.split(':').nth(1)?.split_whitespace().next()?;
    if key.starts_with("Cap") {
        u64::from_str_radix(value, 16).ok()
    } else {
        value.parse().ok()
    }
}

/// Threads of every process whose real uid is `uid` (what RLIMIT_NPROC counts).
fn user_threads(uid: u64) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut total = 0;
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may exit while we look; skip it.
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            if status_field(&status, "Uid") == Some(uid) {
                total += status_field(&status, "Threads").unwrap_or(1);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(max: u64, used: u64) -> Limits {
        Limits { max_map_count: Some(Cap { max, used }), ..Limits::default() }
    }

    #[test]
    fn no_known_limit_accepts_anything() {
        assert_eq!(check(20_000, 10, &Limits::default()), Ok(()));
    }

    #[test]
    fn memory_mappings_refuse_with_the_largest_value_that_fits() {
        // (65530 - 38 - 1024) / 4 = 16117 threads, 10 of them service threads.
        let refusal = check(20_000, 10, &maps(65530, 38)).expect_err("too many");
        assert_eq!(refusal.fit, 16_107);
        assert_eq!(
            refusal.to_string(),
            "20000 needs ~80,040 memory mappings (4 per thread); vm.max_map_count is 65530 and 38 are \
             in use (plus 1024 kept free); at most 16,107 fit"
        );
        assert_eq!(check(16_107, 10, &maps(65530, 38)), Ok(()));
        assert!(check(16_108, 10, &maps(65530, 38)).is_err());
    }

    #[test]
    fn the_tightest_limit_is_named_and_the_fit_satisfies_every_limit() {
        let limits = Limits {
            nproc: Some(Cap { max: 4096, used: 96 }),
            threads_max: Some(Cap { max: 192_731, used: 500 }),
            max_map_count: Some(Cap { max: 65530, used: 100 }),
            pids: Some((Cap { max: 3000, used: 20 }, PathBuf::from("/sys/fs/cgroup/app/pids.max"))),
            memory: None,
            mem_available_kib: Some(1024 * 1024),
        };
        let r = check(9256, 10, &limits).expect_err("over the cgroup");
        assert_eq!(r.fit, 2970);
        assert!(r.limit.starts_with("the cgroup's pids.max is 3000 and 20 are in use"), "{r}");
        assert_eq!(check(r.fit, 10, &limits), Ok(()));
        assert!(check(r.fit + 1, 10, &limits).is_err());

        let user = Limits { nproc: Some(Cap { max: 100, used: 40 }), ..limits.clone() };
        let r = check(9256, 10, &user).expect_err("over RLIMIT_NPROC");
        assert_eq!(r.to_string(), "9256 needs 9,266 threads; RLIMIT_NPROC (ulimit -u) is 100 and this user runs 40 thread(s); at most 50 fit");

        let memory = Limits { mem_available_kib: Some(64 * 1024), ..Limits::default() };
        let r = check(2000, 10, &memory).expect_err("over memory");
        assert_eq!(
            r.to_string(),
            "2000 needs ~125 MiB of memory (64 KiB per thread); MemAvailable is 64 MiB; at most 1,014 fit"
        );

        // A container's limit, which MemAvailable (the host's) does not show.
        let file = PathBuf::from("/sys/fs/cgroup/pod/memory.max");
        let pod = Limits { memory: Some((Cap { max: 64 << 20, used: 32 << 20 }, file)), ..memory };
        let r = check(2000, 10, &pod).expect_err("over the cgroup's memory");
        assert_eq!(
            r.to_string(),
            "2000 needs ~125 MiB of memory (64 KiB per thread); the cgroup's memory limit is 64 MiB and \
             32 MiB are in use (/sys/fs/cgroup/pod/memory.max); at most 502 fit"
        );
    }

    #[test]
    fn not_even_the_service_threads_fit() {
        let r = check(1, 10, &Limits { nproc: Some(Cap { max: 5, used: 3 }), ..Limits::default() })
            .expect_err("full");
        assert_eq!(r.fit, 0);
    }

    #[test]
    fn root_is_exempt_from_rlimit_nproc_only_in_the_initial_user_namespace() {
        let initial = "         0          0 4294967295\n";
        let container = "         0     100000      65536\n";
        assert!(nproc_exempt(0, 0, initial));
        assert!(!nproc_exempt(1000, 0, initial));
        assert!(nproc_exempt(1000, 1 << 24, initial), "CAP_SYS_RESOURCE");
        assert!(!nproc_exempt(0, u64::MAX, container));
    }

    #[test]
    fn service_threads_count_checks_and_admin() {
        let mut raw =
            crate::config::RawConfig::parse(&b"[backends]\na = 127.0.0.1:1\nb = 127.0.0.1:2\n"[..], "t")
                .expect("parse");
        let plain = raw.validate().expect("valid");
        assert_eq!(service_threads(&plain), 8 + 2);
        raw.set_flag("proxy", "stats_interval_ms", "1000", "--x");
        raw.set_flag("admin", "listen", "127.0.0.1:0", "--y");
        assert_eq!(service_threads(&raw.validate().expect("valid")), 8 + 2 + ADMIN_THREADS);
    }

    #[test]
    fn the_real_limits_can_be_read() {
        let limits = Limits::read();
        assert!(limits.max_map_count.as_ref().is_some_and(|c| c.max > 0 && c.used > 0), "{limits:?}");
        assert!(limits.threads_max.as_ref().is_some_and(|c| c.used > 0), "{limits:?}");
        assert!(limits.mem_available_kib.is_some_and(|k| k > 0), "{limits:?}");
        assert_eq!(meminfo_kib("MemTotal: 10 kB\nMemAvailable:   2048 kB\n", "MemAvailable"), Some(2048));
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(999), "999");
    }
}
