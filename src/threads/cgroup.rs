//! The tightest cgroup limit on this process (`pids.max`, `memory.max`): the one with the least
//! room left on the way from its cgroup up to the root, v1 or v2.

use std::path::{Path, PathBuf};

/// A limit and how much of it is already in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub max: u64,
    pub used: u64,
}

/// A cgroup controller's limit and usage files, by hierarchy.
pub(super) struct Controller {
    /// The v1 hierarchy's name in /proc/self/cgroup and under the root (`pids`, `memory`).
    pub v1: &'static str,
    /// The limit and usage files in v2 (`memory.max`, `memory.current`).
    pub v2_files: [&'static str; 2],
    /// The same in v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
    pub v1_files: [&'static str; 2],
    /// The keys of `memory.stat` (v2, v1) whose value the usage counts but the kernel can take
    /// back: page cache nobody used lately (`inactive_file`), as kubelet's working set leaves
    /// it out. A cgroup full of cache is not short of memory.
    pub reclaimable: Option<[&'static str; 2]>,
}

pub(super) const PIDS: Controller = Controller {
    v1: "pids",
    v2_files: ["pids.max", "pids.current"],
    v1_files: ["pids.max", "pids.current"],
    reclaimable: None,
};

/// In bytes.
pub(super) const MEMORY: Controller = Controller {
    v1: "memory",
    v2_files: ["memory.max", "memory.current"],
    v1_files: ["memory.limit_in_bytes", "memory.usage_in_bytes"],
    reclaimable: Some(["inactive_file", "total_inactive_file"]),
};

/// The limit with the least room left on the way from this process's cgroup up to `root`, and
/// the file it came from, from the text of /proc/self/cgroup: the v2 line `0::/path`, or a v1
/// line naming the controller. "max" (no limit) and missing files are skipped.
pub(super) fn tightest(proc_cgroup: &str, root: &Path, controller: &Controller) -> Option<(Cap, PathBuf)> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let reclaimable = controller.reclaimable;
        if controllers.is_empty() {
            dirs.push((
                root.join(path),
                root.to_path_buf(),
                controller.v2_files,
                reclaimable.map(|[v2, _]| v2),
            ));
        } else if controllers.split(',').any(|c| c == controller.v1) {
            let top = root.join(controller.v1);
            dirs.push((top.join(path), top, controller.v1_files, reclaimable.map(|[_, v1]| v1)));
        }
    }
    let mut best: Option<(Cap, PathBuf)> = None;
    for (leaf, top, [max_file, used_file], reclaimable) in dirs {
        for dir in leaf.ancestors().take_while(|d| d.starts_with(&top)) {
            let file = dir.join(max_file);
            let (Some(max), Some(used)) = (read_number(&file), read_number(dir.join(used_file))) else {
                continue;
            };
            let cache = reclaimable.and_then(|key| stat(&dir.join("memory.stat"), key)).unwrap_or(0);
            let used = used.saturating_sub(cache);
            if best.as_ref().is_none_or(|(b, _)| max.saturating_sub(used) < b.max.saturating_sub(b.used)) {
                best = Some((Cap { max, used }, file));
            }
        }
    }
    best
}

/// The value of `key` in a `memory.stat` file (`inactive_file 123`).
fn stat(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A file holding one number (`max` and other words: `None`).
pub fn read_number(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: [&str; 2], max: &str, current: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(files[0]), max).expect("write");
        std::fs::write(dir.join(files[1]), current).expect("write");
    }

    #[test]
    fn cgroup_v1_and_v2_pids_limits_are_found_up_the_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        write(&r.join("svc"), PIDS.v2_files, "500\n", "10\n");
        write(&r.join("svc/proxy"), PIDS.v2_files, "max\n", "4\n");
        let (cap, file) = tightest("0::/svc/proxy\n", r, &PIDS).expect("v2 limit");
        assert_eq!((cap, file), (Cap { max: 500, used: 10 }, r.join("svc/pids.max")));
        write(&r.join("pids/box"), PIDS.v1_files, "64\n", "60\n");
        let (cap, _) = tightest("9:memory:/x\n8:pids:/box\n0::/\n", r, &PIDS).expect("v1 limit");
        assert_eq!(cap, Cap { max: 64, used: 60 });
        assert_eq!(tightest("0::/elsewhere\n", r, &PIDS), None);
    }

    #[test]
    fn the_memory_limit_with_least_room_is_found_in_either_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        write(&r.join("pod"), MEMORY.v2_files, "1073741824\n", "900000000\n");
        write(&r.join("pod/proxy"), MEMORY.v2_files, "536870912\n", "1000\n");
        let (cap, file) = tightest("0::/pod/proxy\n", r, &MEMORY).expect("v2 limit");
        assert_eq!((cap, file), (Cap { max: 1073741824, used: 900000000 }, r.join("pod/memory.max")));
        // Page cache the kernel can take back is not counted as used.
        std::fs::write(r.join("pod/memory.stat"), "active_file 5\ninactive_file 800000000\n").expect("stat");
        let (cap, _) = tightest("0::/pod/proxy\n", r, &MEMORY).expect("v2 limit");
        assert_eq!(cap, Cap { max: 536870912, used: 1000 }, "the pod has room; the leaf is now tightest");
        write(&r.join("memory/box"), MEMORY.v1_files, "268435456\n", "1000\n");
        let (cap, _) = tightest("4:memory:/box\n", r, &MEMORY).expect("v1 limit");
        assert_eq!(cap, Cap { max: 268435456, used: 1000 });
    }
}
