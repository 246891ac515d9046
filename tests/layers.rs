//! `scripts/check_layers.py` catches what it is there to catch: on a copy of `src/`, an upward
//! import injected into a submodule, in each import form (`crate::x`, `use crate::{..}`,
//! `super::`), or in test code, fails the check and is named; so does a cycle at the top or
//! inside a folder (through a re-export too); the untouched copy passes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of this crate's src/, to change and check.
fn copy_of_src() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &src);
    (dir, src)
}

/// Runs the check on `src`: (passed, stderr).
fn check(src: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_layers.py"))
        .arg("--root")
        .arg(src)
        .output()
        .expect("python3 runs scripts/check_layers.py");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A copy of src/ with `line` added to `file` (relative to src/; none when empty), checked.
fn check_with(file: &str, line: &str) -> (bool, String) {
    let (_dir, src) = copy_of_src();
    if !file.is_empty() {
        let path = src.join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, format!("{line}\n{text}")).expect("write");
    }
    check(&src)
}

#[test]
fn the_untouched_tree_passes() {
    let (ok, err) = check_with("", "");
    assert!(ok, "{err}");
}

#[test]
fn an_upward_import_in_a_submodule_fails_in_every_form() {
    let cases = [
        // A base-layer submodule reaching the process layer by its full path.
        ("h1/head.rs", "use crate::server::run as _x;", "`h1` (base) imports higher `server`"),
        // The same through a grouped import, the second name upward.
        ("config/raw.rs", "use crate::{clock, tcp};", "`config` (base) imports higher `tcp`"),
        // From a submodule, `super::super` is the crate: `super::super::http` from the balancer.
        (
            "balancer/round_robin.rs",
            "use super::super::http as _h;",
            "`balancer` (selection) imports higher `http`",
        ),
    ];
    for (file, line, named) in cases {
        let (ok, err) = check_with(file, line);
        assert!(!ok, "{line} in {file} passed the check");
        assert!(err.contains(named), "{line} in {file}: expected {named:?} in:\n{err}");
    }
}

#[test]
fn a_cycle_fails_at_the_top_and_inside_a_folder() {
    let cases = [
        // `config` already imports `net` (both base): the reverse closes a cycle within a layer.
        ("net/addr.rs", "use crate::config::Config as _c;", "import cycle: config -> net -> config"),
        // Inside http/: `exchange` already calls `upgrade`; the reverse closes a cycle one level
        // down, which the top-level graph cannot see.
        (
            "http/upgrade.rs",
            "use super::exchange::Served as _s;",
            "import cycle: http::exchange -> http::upgrade -> http::exchange",
        ),
        // A name h1/mod.rs re-exports counts as the file it comes from: `h1::BodyError` is
        // `h1::body`'s, and `body` already imports `trailers`.
        (
            "h1/trailers.rs",
            "use super::BodyError as _b;",
            "import cycle: h1::body -> h1::trailers -> h1::body",
        ),
    ];
    for (file, line, named) in cases {
        let (ok, err) = check_with(file, line);
        assert!(!ok, "{line} in {file} passed the check");
        assert!(err.contains(named), "{line} in {file}: expected {named:?} in:\n{err}");
    }
}

#[test]
fn test_code_counts_and_a_module_without_a_layer_is_named() {
    // A test helper imported from above: the tests of `backend` may not lean on the balancer.
    let tail = "#[cfg(test)]\nmod t {\n    use crate::balancer::Balancer as _b;\n}";
    let (_dir, src) = copy_of_src();
    let path = src.join("backend/health.rs");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{text}\n{tail}\n")).expect("write");
    let (ok, err) = check(&src);
    assert!(!ok, "an upward import in test code passed");
    assert!(err.contains("`backend` (backend) imports higher `balancer`"), "{err}");
    // A module file the layer list does not name.
    let (_dir, src) = copy_of_src();
    std::fs::write(src.join("newcomer.rs"), "//! A module nobody placed.\nuse crate::clock;\n")
        .expect("write");
    let (ok, err) = check(&src);
    assert!(!ok);
    assert!(err.contains("module `newcomer` has no layer"), "{err}");
}
