//! The README stays a README and the manual stays whole: README.md is at most 400 lines, links
//! every page of `docs/`, and every relative link in them (file, and `#anchor` if any)
//! resolves to a file and a heading that exist; every `ini` example passes `--check`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The markdown pages checked: README.md and every `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every `](target)` in the prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut found = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text).lines().filter(|l| l.starts_with('#')).map(|l| slug(l.trim_start_matches('#'))).collect()
}

#[test]
fn the_readme_is_at_most_400_lines_and_links_every_page_of_the_manual() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 400, "README.md has {lines} lines; the manual belongs in docs/");
    let linked: BTreeSet<String> =
        links(&readme).into_iter().map(|l| l.split('#').next().unwrap_or("").to_string()).collect();
    for page in pages().iter().skip(1) {
        let name = format!("docs/{}", page.file_name().and_then(|n| n.to_str()).unwrap_or_default());
        assert!(linked.contains(&name), "README.md does not link {name}");
    }
}

#[test]
fn every_relative_link_in_the_readme_and_the_manual_resolves_to_a_file_and_a_heading() {
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a page's folder");
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').map_or((link.as_str(), None), |(f, a)| (f, Some(a)));
            let target = if file.is_empty() { page.clone() } else { dir.join(file) };
            assert!(
                target.exists(),
                "{}: link {link} names {} which does not exist",
                page.display(),
                target.display()
            );
            if let Some(anchor) = anchor {
                let heads = anchors(&read(&target));
                assert!(
                    heads.contains(anchor),
                    "{}: link {link}: no heading #{anchor} in {}",
                    page.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links found: the link scanner is broken");
}

#[test]
fn the_slug_is_githubs() {
    assert_eq!(slug(" Configuration (`config.ini`)"), "configuration-configini");
    assert_eq!(slug(" Dashboard and runtime API"), "dashboard-and-runtime-api");
    assert_eq!(slug(" HTTPS and WebSocket"), "https-and-websocket");
}

/// The `ini` blocks of the README and the manual, each with where it starts (`page:line`).
fn ini_blocks() -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    for page in pages() {
        let name = page.file_name().expect("name").to_string_lossy().into_owned();
        let mut open: Option<(usize, String)> = None;
        for (n, line) in read(&page).lines().enumerate() {
            match &mut open {
                None if line.trim_start().starts_with("```ini") => open = Some((n + 2, String::new())),
                None => {}
                Some((start, text)) if line.trim_start().starts_with("```") => {
                    blocks.push((format!("{name}:{start}"), std::mem::take(text)));
                    open = None;
                }
                Some((_, text)) => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// A reader pastes an example into config.ini and it works: every `ini` block of the README and
/// the manual passes `proxy_server --check`. A fragment without backends gets one, to stand
/// alone. Left out: systemd units, and `[tls]` blocks (they name certificate files a reader has
/// to make first).
#[test]
fn every_ini_example_in_the_readme_and_the_manual_passes_check() {
    let dir = std::env::temp_dir().join(format!("lbproxy-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut checked = 0;
    for (at, text) in ini_blocks() {
        if text.contains("[Unit]") || text.contains("[tls]") {
            continue;
        }
        let mut config = text.clone();
        if !config.contains("[backends]") && !config.contains("[pool.") {
            config.push_str("[backends]\na = 127.0.0.1:1\n");
        }
        let file = dir.join("example.ini");
        std::fs::write(&file, &config).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_proxy_server"))
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .current_dir(&dir)
            .output()
            .expect("run proxy_server --check");
        assert!(
            out.status.success(),
            "the example at {at} fails --check:\n{config}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked >= 6, "only {checked} examples found");
}
