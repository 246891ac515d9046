//! Renderings of the key table: the effective settings `--check` prints, and the manual's key
//! table (a unit test keeps docs/configuration.md in step with it).

use std::fmt::Write as _;

use super::keys::KEYS;
use super::Config;

/// The `[backends]` lines that are not keys: one per backend.
pub const BACKEND_LINE: &str =
    "`NAME = host:port [weight=N] [max_conns=N] [tls [sni=NAME]] [send_proxy=v1|v2]`";
const BACKEND_HELP: &str =
    "one line per backend (at least one); weight 1..=1000 (default 1); max_conns 0 = no limit; \
     tls: reach it over TLS, verified against [tls] backend_ca (sni: the name to verify, else its host); \
     send_proxy: start each backend connection with a PROXY header (http: turns pooling off for it)";

/// The manual's key table (docs/configuration.md, markdown), between its `config-keys` marker comments.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | type | default | range | meaning |\n|---|---|---|---|---|\n");
    for k in KEYS {
        let default = if k.default.is_empty() { "empty".to_string() } else { format!("`{}`", k.default) };
        let flag = k.flag.map(|f| format!(" (`{f}`)")).unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | {} | {default} | {} | {}{flag} |",
            k.label(),
            k.kind.name(),
            k.kind.range(),
            k.help
        );
    }
    let flag = "(`--backend`, repeatable, replaces them)";
    let _ = writeln!(out, "| `[backends]` {BACKEND_LINE} | backend | none | | {BACKEND_HELP} {flag} |");
    out
}

/// Writes the effective settings, one `key = value` per line under section headers, as
/// `--check` prints them; every key in [`KEYS`] appears, each with where its value came from
/// (`# config.ini:12`, `# --workers`, `# --set ...` or `# default`), a comment the file format
/// reads back as nothing.
pub fn write_effective(c: &Config, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let mut section = "";
    let from = |label: &str| c.origins.get(label).map_or("default", String::as_str);
    for k in KEYS {
        if k.section != section {
            section = k.section;
            writeln!(out, "[{section}]")?;
        }
        writeln!(out, "{} = {}  # {}", k.name, (k.show)(c), from(&k.label()))?;
    }
    for b in &c.backends {
        write_member(out, b, from(&format!("[backends] {}", b.name)))?;
    }
    for p in &c.pools {
        writeln!(out, "# {}:{}\n[pool.{}]", c.file, p.line, p.name)?;
        writeln!(out, "algorithm = {}", p.algorithm.name())?;
        if let Some(path) = &p.health_path {
            writeln!(out, "health_path = {path}")?;
        }
        for b in &p.backends {
            write_member(out, b, from(&format!("[pool.{}] {}", p.name, b.name)))?;
        }
    }
    for r in &c.routes {
        writeln!(out, "# {}:{}\n[route.{}]", c.file, r.line, r.name)?;
        if let Some(h) = &r.host {
            writeln!(out, "host = {h}")?;
        }
        if let Some(p) = &r.path {
            writeln!(out, "path = {p}")?;
        }
        if let Some(s) = &r.sni {
            writeln!(out, "sni = {s}")?;
        }
        match &r.action {
            super::RouteAction::Pool(p) => writeln!(out, "pool = {p}")?,
            super::RouteAction::Redirect(to) => writeln!(out, "redirect = {} {}", to.status, to.location)?,
        }
        if r.strip_prefix {
            writeln!(out, "strip_prefix = on")?;
        }
        for (dir, rules) in [("request", &r.request), ("response", &r.response)] {
            if !rules.del.is_empty() {
                writeln!(out, "del_{dir}_header = {}", rules.del.join(", "))?;
            }
            for (n, v) in &rules.set {
                writeln!(out, "set_{dir}_header.{n} = {v}")?;
            }
            for (n, v) in &rules.add {
                writeln!(out, "add_{dir}_header.{n} = {v}")?;
            }
        }
    }
    Ok(())
}

/// One member line, as `[backends]` and pools write it.
fn write_member(out: &mut impl std::fmt::Write, b: &super::BackendSpec, from: &str) -> std::fmt::Result {
    let addrs: Vec<String> = b.addrs.iter().map(|a| a.to_string()).collect();
    write!(out, "{} = {} weight={}", b.name, b.target, b.weight)?;
    if b.max_conns > 0 {
        write!(out, " max_conns={}", b.max_conns)?;
    }
    if let Some(v) = b.send_proxy {
        write!(out, " send_proxy={}", v.name())?;
    }
    if let Some(sni) = &b.tls {
        write!(out, " tls sni={sni}")?;
    }
    writeln!(out, " ({})  # {from}", addrs.join(", "))
}

/// What the proxy logs at start, before any traffic: one line for the listener (`addr`, the
/// address actually bound), mode, algorithm and workers, then one per backend. The full
/// effective configuration is [`write_effective`] (`--check`, and debug level).
pub fn startup_lines(c: &Config, addr: std::net::SocketAddr) -> Vec<String> {
    let mode = match (c.mode, c.tls.listener()) {
        (super::Mode::Http, false) => "http",
        (super::Mode::Http, true) => "http over TLS",
        (super::Mode::Tcp, false) => "tcp",
        (super::Mode::Tcp, true) => "tcp over TLS",
    };
    let mut lines = vec![format!(
        "listening on {addr} (mode {mode}, {}, {} workers, {}; --check or log_level = debug shows every setting)",
        c.algorithm.name(),
        c.workers,
        match c.takers() {
            (few, many) if few == many => format!("{few} active"),
            (few, many) => format!("{few}-{many} active"),
        }
    )];
    for (pool, b) in c.every_pool().flat_map(|p| p.backends.iter().map(move |b| (p.name, b))) {
        let mut line = format!("backend {} {}", b.name, b.target);
        if pool != super::DEFAULT_POOL {
            let _ = write!(line, " (pool {pool})");
        }
        if b.dns {
            let addrs: Vec<String> = b.addrs.iter().map(|a| a.to_string()).collect();
            let _ = write!(line, " ({})", addrs.join(", "));
        }
        if b.weight != 1 {
            let _ = write!(line, " weight={}", b.weight);
        }
        if b.max_conns > 0 {
            let _ = write!(line, " max_conns={}", b.max_conns);
        }
        if let Some(sni) = &b.tls {
            let _ = write!(line, " tls (sni {sni})");
        }
        lines.push(line);
    }
    for r in &c.routes {
        lines.push(format!("route {} ({}) -> {}", r.name, r.describe(), r.action));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    const START: &str = "<!-- config-keys:start -->\n";
    const END: &str = "<!-- config-keys:end -->";

    fn project_file(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    /// docs/configuration.md's key table is this rendering of [`KEYS`]. To update it, run this
    /// test with `LBPROXY_WRITE_DOCS=1`, or paste the text the failure prints.
    #[test]
    fn the_manuals_key_table_is_generated_from_the_key_table() {
        let path = project_file("docs/configuration.md");
        let page = std::fs::read_to_string(&path).expect("read docs/configuration.md");
        let start = page.find(START).expect("the page has the config-keys:start marker") + START.len();
        let end = page[start..].find(END).expect("the page has the config-keys:end marker") + start;
        let expected = markdown_table();
        if page[start..end] != expected {
            if std::env::var_os("LBPROXY_WRITE_DOCS").is_some() {
                std::fs::write(&path, format!("{}{expected}{}", &page[..start], &page[end..]))
                    .expect("write");
                return;
            }
            panic!("docs/configuration.md's key table is out of date; between the markers it should read:\n{expected}");
        }
    }

    #[test]
    fn the_shipped_config_ini_sets_every_key_to_its_default() {
        let raw = RawConfig::load(&project_file("config.ini")).expect("read config.ini");
        assert!(raw.errors.is_empty(), "{:?}", raw.errors);
        for k in KEYS {
            let set = raw.settings.iter().find(|s| s.section == k.section && s.key == k.name);
            assert_eq!(set.map(|s| s.value.as_str()), Some(k.default), "config.ini's {}", k.label());
        }
    }

    #[test]
    fn sections_are_contiguous_and_backends_come_last() {
        let mut seen: Vec<&str> = Vec::new();
        for k in KEYS {
            if seen.last() != Some(&k.section) {
                assert!(!seen.contains(&k.section), "{} is split", k.section);
                seen.push(k.section);
            }
        }
        assert_eq!(seen.last(), Some(&"backends"));
    }

    #[test]
    fn startup_is_one_line_for_the_listener_then_one_per_backend() {
        let text = "[proxy]\nmode = http\nworkers = 7\n[backends]\ndummy-9090 = 127.0.0.1:9090\n\
                    web = 127.0.0.1:9 weight=3 max_conns=2\n";
        let config = RawConfig::parse(text.as_bytes(), "t.ini").and_then(|r| r.validate()).expect("valid");
        let lines = startup_lines(&config, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0]
            .starts_with("listening on 127.0.0.1:8080 (mode http, least-connections, 7 workers, 7 active;"));
        assert_eq!(lines[1], "backend dummy-9090 127.0.0.1:9090");
        assert_eq!(lines[2], "backend web 127.0.0.1:9 weight=3 max_conns=2");
    }

    #[test]
    fn check_output_shows_every_key_and_reads_back_as_the_same_config() {
        let text = "[proxy]\nmode = http\nworkers = 7\nstats_interval_ms = 250\nlog_file =\n\
                    [http]\nmax_body_bytes = 99\n[admin]\nlisten = 127.0.0.1:0\n\
                    [backends]\nweb = 127.0.0.1:9 weight=3 max_conns=2\n";
        let config = RawConfig::parse(text.as_bytes(), "t.ini").and_then(|r| r.validate()).expect("valid");
        let shown = config.to_string();
        for k in KEYS {
            let line = format!("{} = {}  # ", k.name, (k.show)(&config));
            assert!(shown.lines().any(|l| l.starts_with(&line)), "{} missing from:\n{shown}", k.label());
        }
        // Each says where it came from: its line, or the built-in default.
        assert!(shown.contains("\nstats_interval_ms = 250  # t.ini:4\n"), "{shown}");
        assert!(shown.contains("[health]\nenabled = true  # default\nmode = http  # default\n"), "{shown}");
        assert!(
            shown.ends_with("web = 127.0.0.1:9 weight=3 max_conns=2 (127.0.0.1:9)  # t.ini:11\n"),
            "{shown}"
        );
        // The key lines, with the backend line as written, give back the same configuration.
        let keys_part = &shown[..shown.find("web = ").expect("backend line")];
        let again = format!("{keys_part}web = 127.0.0.1:9 weight=3 max_conns=2\n");
        let reread = RawConfig::parse(again.as_bytes(), "t.ini").and_then(|r| r.validate()).expect("valid");
        let without_origins = |c: &Config| Config { origins: Default::default(), ..c.clone() };
        assert_eq!(without_origins(&reread), without_origins(&config));
    }
}
