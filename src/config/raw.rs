//! Stage one: INI text -> [`RawConfig`], each `key = value` kept with the line (or flag) it came
//! from. Syntax errors, unknown sections, unknown and repeated keys are collected, not fatal.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::{keys, ConfigError, Origin};

/// One `key = value` as written, and where.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    pub(super) section: &'static str,
    /// The pool's or route's name in `[pool.NAME]` and `[route.NAME]`; empty elsewhere.
    pub(super) block: String,
    pub(super) key: String,
    pub(super) value: String,
    pub(super) origin: Origin,
}

impl Setting {
    /// `[section] key`, or `[pool.NAME] key` in a pool or route.
    pub(super) fn label(&self) -> String {
        if self.block.is_empty() {
            format!("[{}] {}", self.section, self.key)
        } else {
            format!("[{}.{}] {}", self.section, self.block, self.key)
        }
    }
}

/// Settings as written, before their values are checked.
#[derive(Debug, Clone)]
pub struct RawConfig {
    pub(super) file: String,
    pub(super) settings: Vec<Setting>,
    /// Syntax and key errors, reported by [`RawConfig::validate`] with the value errors.
    pub(super) errors: Vec<ConfigError>,
    /// The `[pool.NAME]` and `[route.NAME]` sections, in file order.
    pub(super) blocks: Vec<Block>,
    /// Where each `(section, block, key)` in `settings` was set, and each block's header line:
    /// a repeat is found in one lookup, so thousands of routes parse in linear time.
    seen: HashMap<(&'static str, String, String), Origin>,
    seen_blocks: HashMap<(&'static str, String), u32>,
}

/// A `[pool.NAME]` or `[route.NAME]` section header.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// `pool` or `route`.
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) line: u32,
}

/// The keys a `[route.NAME]` takes; header rules add `.HEADER` to the `set_`/`add_` ones.
pub(super) const ROUTE_KEYS: &[&str] = &[
    "host",
    "path",
    "sni",
    "pool",
    "strip_prefix",
    "redirect",
    "set_request_header",
    "add_request_header",
    "del_request_header",
    "set_response_header",
    "add_response_header",
    "del_response_header",
];

impl RawConfig {
    /// Reads the file at `path`. A missing or unreadable file is an error naming it.
    pub fn load(path: &Path) -> Result<RawConfig, Vec<ConfigError>> {
        let file = path.display().to_string();
        let opened = std::fs::File::open(path).map_err(|e| {
            vec![ConfigError {
                file: file.clone(),
                origin: Origin::File,
                key: String::new(),
                message: format!("cannot read configuration: {e}"),
            }]
        })?;
        RawConfig::parse(opened, &file)
    }

    /// Parses INI text. Syntax problems are kept and reported by [`RawConfig::validate`]
    /// together with value problems; only unreadable input fails here.
    pub fn parse(mut reader: impl Read, file: &str) -> Result<RawConfig, Vec<ConfigError>> {
        let mut text = String::new();
        if let Err(e) = reader.read_to_string(&mut text) {
            return Err(vec![ConfigError {
                file: file.to_string(),
                origin: Origin::File,
                key: String::new(),
                message: format!("cannot read configuration: {e}"),
            }]);
        }
        // A byte-order mark, as Windows editors save UTF-8, is no setting.
        if let Some(rest) = text.strip_prefix('\u{feff}') {
            text = rest.to_string();
        }
        // ini_core counts a line when it reads its newline; give the last line one.
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let text = strip_header_comments(&text);
        let mut raw = RawConfig {
            file: file.to_string(),
            settings: Vec::new(),
            errors: Vec::new(),
            blocks: Vec::new(),
            seen: HashMap::new(),
            seen_blocks: HashMap::new(),
        };
        let mut section: Option<&'static str> = None;
        let mut block = String::new();
        let mut in_unknown_section = false;
        let mut parser = ini_core::Parser::new(&text).comment_char(b'#').auto_trim(true);
        while let Some(item) = parser.next() {
            let line = parser.line();
            match item {
                ini_core::Item::Section(name) => {
                    let name = name.trim();
                    block.clear();
                    section = keys::section(name);
                    if let Some((kind, block_name)) = block_header(name) {
                        section = raw.open_block(kind, block_name, line).then_some(kind);
                        block = block_name.to_string();
                        in_unknown_section = section.is_none();
                        continue;
                    }
                    in_unknown_section = section.is_none();
                    if in_unknown_section {
                        let hint = keys::did_you_mean(None, name);
                        raw.error_at(line, "", format!("unknown section [{name}]{hint}"));
                    }
                }
                ini_core::Item::Error(text) => {
                    raw.error_at(line, "", format!("malformed section header '{text}'"));
                }
                ini_core::Item::Property(key, _) if key.starts_with(';') => {}
                ini_core::Item::Property(key, value) => {
                    if in_unknown_section {
                        continue;
                    }
                    let Some(sec) = section else {
                        raw.error_at(line, key, "setting outside of any [section]".to_string());
                        continue;
                    };
                    let Some(value) = value else {
                        raw.error_at(line, key, "expected 'key = value'".to_string());
                        continue;
                    };
                    let value = strip_inline_comment(value).trim();
                    raw.add_in(sec, &block, key.trim(), value, Origin::Line(line));
                }
                _ => {}
            }
        }
        Ok(raw)
    }

    fn error_at(&mut self, line: u32, key: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            origin: Origin::Line(line),
            key: key.to_string(),
            message,
        });
    }

    /// Records a `[pool.NAME]` or `[route.NAME]` header; false (and an error) for a bad or
    /// repeated one, whose lines are then skipped.
    fn open_block(&mut self, kind: &'static str, name: &str, line: u32) -> bool {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !valid {
            let message = format!("invalid {kind} name '{name}' (letters, digits, '-' and '_')");
            self.error_at(line, "", message);
            return false;
        }
        if kind == "pool" && name == "default" {
            self.error_at(line, "", "the pool 'default' is [backends]; name this one otherwise".to_string());
            return false;
        }
        if let Some(first) = self.seen_blocks.get(&(kind, name.to_string())) {
            let message = format!("repeated section [{kind}.{name}] (first at line {first})");
            self.error_at(line, "", message);
            return false;
        }
        self.seen_blocks.insert((kind, name.to_string()), line);
        self.blocks.push(Block { kind, name: name.to_string(), line });
        true
    }

    fn add(&mut self, section: &'static str, key: &str, value: &str, origin: Origin) {
        self.add_in(section, "", key, value, origin);
    }

    fn add_in(&mut self, section: &'static str, block: &str, key: &str, value: &str, origin: Origin) {
        let named = if block.is_empty() { section.to_string() } else { format!("{section}.{block}") };
        let label = format!("[{named}] {key}");
        // Any name in [backends] or a pool is a member; elsewhere only the table's keys exist.
        let known = match section {
            "backends" | "pool" => true,
            "route" => ROUTE_KEYS.contains(&key.split_once('.').map_or(key, |(k, _)| k)),
            _ => keys::find(section, key).is_some(),
        };
        if !known {
            let hint =
                if section == "route" { route_key_hint(key) } else { keys::did_you_mean(Some(section), key) };
            // Nothing close: the section's keys, so the fix is on the screen (as `--check` shows).
            let hint = if hint.is_empty() { section_keys(section) } else { hint };
            let message = format!("unknown key '{key}' in [{named}]{hint}");
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: label, message });
            return;
        }
        let id = (section, block.to_string(), key.to_string());
        if let Some(first) = self.seen.get(&id) {
            let message = match first {
                Origin::Line(l) => format!("repeated (first set at line {l})"),
                _ => "repeated".to_string(),
            };
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: label, message });
            return;
        }
        self.seen.insert(id, origin.clone());
        self.settings.push(Setting {
            section,
            block: block.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            origin,
        });
    }

    /// Drops the settings whose section and key `gone` names, so that a flag may set them anew.
    fn forget(&mut self, gone: impl Fn(&str, &str) -> bool) {
        self.settings.retain(|s| !gone(s.section, &s.key));
        self.seen.retain(|(section, _, key), _| !gone(section, key));
    }

    /// Overrides `[section] key` with a command-line flag's value.
    pub fn set_flag(&mut self, section: &'static str, key: &str, value: &str, flag: &'static str) {
        self.forget(|s, k| s == section && k == key);
        self.add(section, key, value, Origin::Flag(flag));
    }

    /// Overrides any key with a `--set SECTION.KEY=VALUE` flag (`given`): checked as the file's
    /// lines are, its errors named by the flag as given.
    pub fn set_given(&mut self, given: &str) {
        let origin = Origin::Set(given.to_string());
        let parsed = given.split_once('=').and_then(|(path, value)| {
            let (section, key) = path.trim().split_once('.')?;
            Some((section.trim(), key.trim(), value.trim()))
        });
        let Some((section_name, key, value)) = parsed else {
            let message = "expected SECTION.KEY=VALUE, e.g. timeouts.response_ms=1000".to_string();
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: String::new(), message });
            return;
        };
        let section = keys::section(section_name).or((section_name == "backends").then_some("backends"));
        let Some(section) = section else {
            let hint = keys::did_you_mean(None, section_name);
            let message = format!("unknown section [{section_name}]{hint}");
            self.errors.push(ConfigError { file: self.file.clone(), origin, key: String::new(), message });
            return;
        };
        self.forget(|s, k| s == section && k == key);
        self.add(section, key, value, origin);
    }

    /// Replaces the file's backends with `--backend` values, named `dummy-<port>` as
    /// dummy_server names itself by default, so the proxy's log and the replies agree; when two
    /// targets share a port they are named `app1`, `app2`, ... instead (names must be unique).
    pub fn set_backends(&mut self, targets: &[String]) {
        self.forget(|s, _| s == "backends");
        let port = |t: &str| {
            let after = t.split_whitespace().next()?.rsplit_once(':')?.1;
            (!after.is_empty() && after.bytes().all(|b| b.is_ascii_digit())).then(|| after.to_string())
        };
        let ports: Vec<Option<String>> = targets.iter().map(|t| port(t)).collect();
        let by_port = ports.iter().all(|p| p.is_some())
            && ports.iter().enumerate().all(|(i, p)| !ports[..i].contains(p));
        for (i, target) in targets.iter().enumerate() {
            let name = match &ports[i] {
                Some(p) if by_port => format!("dummy-{p}"),
                _ => format!("app{}", i + 1),
            };
            self.add("backends", &name, target, Origin::Given(format!("--backend {target}")));
        }
    }

    /// The setting of `key`, as written, if the file or a flag gave one.
    pub(super) fn setting(&self, key: &keys::Key) -> Option<&Setting> {
        self.settings.iter().find(|s| s.section == key.section && s.key == key.name)
    }

    /// Where `[section] key` was set: its line, its flag, or [`Origin::File`] when it was not set
    /// (the built-in default applies).
    pub fn origin(&self, section: &str, key: &str) -> Origin {
        self.settings
            .iter()
            .find(|s| s.section == section && s.block.is_empty() && s.key == key)
            .map_or(Origin::File, |s| s.origin.clone())
    }

    /// Where each setting came from, as `--check` shows it, by `[section] key`.
    pub fn origins(&self) -> std::collections::BTreeMap<String, String> {
        let shown = |o: &Origin| match o {
            Origin::Line(l) => format!("{}:{l}", self.file),
            Origin::Flag(flag) => flag.to_string(),
            Origin::Set(given) => format!("--set {given}"),
            Origin::Given(given) => given.clone(),
            Origin::File => self.file.clone(),
        };
        self.settings.iter().map(|s| (s.label(), shown(&s.origin))).collect()
    }

    /// The file the settings were read from.
    pub fn file(&self) -> &str {
        &self.file
    }
}

/// `[pool.NAME]` -> (`pool`, `NAME`), likewise `[route.NAME]`.
fn block_header(name: &str) -> Option<(&'static str, &str)> {
    if let Some(n) = name.strip_prefix("pool.") {
        return Some(("pool", n.trim()));
    }
    name.strip_prefix("route.").map(|n| ("route", n.trim()))
}

/// `; [proxy] takes: listen, mode, …`: every key `section` knows.
fn section_keys(section: &str) -> String {
    let names: Vec<&str> = if section == "route" {
        ROUTE_KEYS.to_vec()
    } else {
        keys::KEYS.iter().filter(|k| k.section == section).map(|k| k.name).collect()
    };
    format!("; [{section}] takes: {}", names.join(", "))
}

/// `; did you mean 'path'?` for a misspelt route key.
fn route_key_hint(key: &str) -> String {
    let base = key.split_once('.').map_or(key, |(k, _)| k);
    ROUTE_KEYS
        .iter()
        .map(|k| (strsim::jaro_winkler(base, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean '{k}'?"))
        .unwrap_or_default()
}

/// Tidies section headers for ini_core, which would read a comment after one as part of the
/// name and not see an indented one: `  [backends]  ; the default pool` becomes `[backends]`.
/// Every line stays where it was, for the errors' line numbers.
fn strip_header_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        let header = trimmed.find(']').filter(|&end| {
            let rest = trimmed[end + 1..].trim_start();
            trimmed.starts_with('[') && (rest.is_empty() || rest.starts_with(['#', ';']))
        });
        match header {
            Some(end) => {
                out.push_str(&trimmed[..=end]);
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Drops a trailing comment: `#` or `;` after whitespace (`workers = 64  # for tests`), or
/// at the start of the value (`log_file =  # default`: empty), so a value cannot begin with one.
fn strip_inline_comment(value: &str) -> &str {
    if value.starts_with(['#', ';']) {
        return "";
    }
    let bytes = value.as_bytes();
    (1..bytes.len())
        .find(|&i| (bytes[i] == b'#' || bytes[i] == b';') && bytes[i - 1].is_ascii_whitespace())
        .map_or(value, |i| &value[..i])
}
