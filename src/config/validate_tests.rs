//! Unit tests of validation: defaults, ranges, backend lines and every error naming file:line.

use super::*;
use crate::config::ProxyVersion;

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    RawConfig::parse(text.as_bytes(), "test.ini").and_then(|raw| raw.validate())
}

fn messages(text: &str) -> Vec<String> {
    parse(text).expect_err("config should be rejected").iter().map(|e| e.to_string()).collect()
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let c = parse("[backends]\napp1 = 127.0.0.1:9090\n").expect("valid");
    assert_eq!(c.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(c.algorithm, Algorithm::LeastConnections);
    assert_eq!(c.workers, 512);
    assert_eq!(c.timeouts.connect, Duration::from_millis(2000));
    assert_eq!(c.backends[0].weight, 1);
}

/// `header_ms = 0` used to leave heads, handshakes and ClientHellos without any limit, so a
/// silent connection stayed for ever though `idle_ms` says no connection idles longer. Now
/// `idle_ms` bounds them, as HAProxy's `timeout client` does without `timeout http-request`;
/// with both 0 there is no limit.
#[test]
fn header_ms_of_zero_falls_back_to_idle_ms() {
    let c = parse("[timeouts]\nheader_ms = 0\nidle_ms = 7000\n[backends]\na = 127.0.0.1:1\n").expect("valid");
    assert_eq!(c.timeouts.header, Duration::from_millis(7000));
    let c = parse("[timeouts]\nheader_ms = 0\nidle_ms = 0\n[backends]\na = 127.0.0.1:1\n").expect("valid");
    assert_eq!(c.timeouts.header, Duration::ZERO);
    let c =
        parse("[timeouts]\nheader_ms = 300\nidle_ms = 7000\n[backends]\na = 127.0.0.1:1\n").expect("valid");
    assert_eq!(c.timeouts.header, Duration::from_millis(300));
}

/// A UTF-8 byte-order mark, as Windows editors save files, is read past: it made five
/// "setting outside of any [section]" errors of a good file.
#[test]
fn a_byte_order_mark_is_no_setting() {
    let c = parse("\u{feff}[proxy]\nworkers = 7\n[backends]\napp1 = 127.0.0.1:9090\n").expect("valid");
    assert_eq!(c.workers, 7);
}

/// A block with host bits set is taken as its network, with nginx's warning.
#[test]
fn host_bits_in_a_block_are_warned_about() {
    let c = parse("[limits]\nallow = 10.0.0.1/8, 192.0.2.0/24\n[backends]\napp1 = 127.0.0.1:9090\n")
        .expect("valid");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["test.ini:2: [limits] allow: low address bits of 10.0.0.1/8 are meaningless: it stands for 10.0.0.0/8"]
    );
    assert!(c.limits.allow[0].contains(&"10.200.0.1".parse::<std::net::IpAddr>().expect("ip")));
    // An IPv4-mapped block is named as written, not as the IPv4 block it is compared as.
    let c = parse("[limits]\ndeny = ::ffff:10.0.0.0/96\n[backends]\napp1 = 127.0.0.1:9090\n").expect("valid");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["test.ini:2: [limits] deny: low address bits of ::ffff:10.0.0.0/96 are meaningless: it stands for ::ffff:0.0.0.0/96"]
    );
}

/// Trusting every address, or trusting proxies in tcp mode (which reads no X-Forwarded-For),
/// is almost certainly a mistake: said, not refused.
#[test]
fn trusting_everyone_or_trusting_in_tcp_mode_is_warned_about() {
    let warned = |text: &str| -> Vec<String> {
        let c = parse(&format!("{text}\n[backends]\napp1 = 127.0.0.1:9090\n")).expect("valid");
        c.warnings.iter().map(|w| w.to_string()).collect()
    };
    let all = warned("[proxy]\nmode = http\n[limits]\ntrusted_proxies = 10.0.0.0/8, ::/0");
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].starts_with("test.ini:4: [limits] trusted_proxies: trusts every client"), "{all:?}");
    let tcp = warned("[proxy]\nmode = tcp\n[limits]\ntrusted_proxies = 10.0.0.1");
    assert_eq!(tcp.len(), 1, "{tcp:?}");
    assert!(tcp[0].contains("has no effect in mode = tcp"), "{tcp:?}");
    assert!(warned("[proxy]\nmode = http\n[limits]\ntrusted_proxies = 10.0.0.0/8").is_empty());
}

/// A route an earlier one leaves unreachable is named, with the route that takes its requests.
#[test]
fn a_route_tried_after_one_that_covers_it_is_warned_about() {
    let c = parse(
        "[proxy]\nmode = http\n[backends]\napp1 = 127.0.0.1:9090\n[pool.api]\napi1 = 127.0.0.1:9091\n\
         [route.all_api]\nhost = *.example.com\npool = api\n\
         [route.v1]\nhost = api.example.com\npath = /v1\npool = default\n",
    )
    .expect("valid");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["test.ini:10: [route.v1]: never matches: [route.all_api] (line 7), tried first, matches every request it does"]
    );
}

#[test]
fn every_error_is_reported_with_its_line_and_key() {
    let text = "# comment\n[proxy]\nlisten = 127.0.0.1:99999\nalgorithm = fastest\n\
                colour = blue\n[backends]\napp1 = 127.0.0.1\napp2 = 127.0.0.1:9091 weight=0\n";
    let errs = messages(text);
    assert_eq!(errs.len(), 5, "{errs:?}");
    assert!(errs[0].starts_with("test.ini:3: [proxy] listen: invalid port"), "{errs:?}");
    // Nothing close to `colour`: the section's keys are listed.
    let colour =
        errs.iter().find(|e| e.starts_with("test.ini:5: [proxy] colour: unknown key")).expect("colour");
    assert!(colour.contains("; [proxy] takes: listen, ") && colour.contains(", workers, "), "{colour}");
    assert!(errs.iter().any(|e| e.starts_with("test.ini:4: [proxy] algorithm: unknown")));
    assert!(errs.iter().any(|e| e.contains("test.ini:7: [backends] app1: '127.0.0.1' has no port")));
    assert!(errs.iter().any(|e| e.contains("test.ini:8: [backends] app2: 0 is out of range")));
}

#[test]
fn syntax_errors_and_unknown_sections_are_named() {
    let errs = messages("[proxy\nworkers\n[cache]\nsize = 1\n[timeouts]\nidle_ms = 5\nidle_ms = 6\n");
    assert!(errs.iter().any(|e| e.starts_with("test.ini:1: malformed section")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("test.ini:2: workers: setting outside")));
    assert!(errs.iter().any(|e| e.starts_with("test.ini:3: unknown section [cache]")));
    assert!(errs.iter().any(|e| e.contains("test.ini:7: [timeouts] idle_ms: repeated")));
    assert!(errs.iter().any(|e| e.contains("no backends configured")));
}

#[test]
fn flags_override_the_file_and_are_named_in_errors() {
    let mut raw =
        RawConfig::parse(&b"[proxy]\nworkers = 8\n[backends]\na = 127.0.0.1:1\n"[..], "f").expect("parse");
    raw.set_flag("proxy", "workers", "16", "--workers");
    raw.set_backends(&["127.0.0.1:2".to_string(), "127.0.0.1:3".to_string()]);
    let c = raw.validate().expect("valid");
    assert_eq!(c.workers, 16);
    let names: Vec<_> = c.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["dummy-2", "dummy-3"], "named as dummy_server names itself");
    raw.set_backends(&["127.0.0.1:2".to_string(), "127.0.0.2:2".to_string()]);
    let names: Vec<_> = raw.validate().expect("valid").backends.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, ["app1", "app2"], "a shared port: numbered instead");
    raw.set_flag("proxy", "workers", "lots", "--workers");
    let errs = raw.validate().expect_err("bad flag");
    assert_eq!(errs[0].to_string(), "--workers: [proxy] workers: expected a whole number, got 'lots'");
}

#[test]
fn inline_comments_repeated_options_and_new_sections() {
    let c = parse(
        "[proxy]\nworkers = 64  # small\nalgorithm = source-hash ; sticky\n[health]\nrise = 5\n\
         [admin]\nlisten = 127.0.0.1:0\n[backends]\nresolve_ms = 500\nweb = localhost:80 weight=2 max_conns=9\n",
    )
    .expect("valid");
    assert_eq!((c.workers, c.algorithm, c.health.rise), (64, Algorithm::SourceHash, 5));
    assert_eq!(c.resolve_interval, Duration::from_millis(500));
    assert!(c.admin.is_some());
    let web = &c.backends[0];
    assert!(web.dns && !web.addrs.is_empty());
    assert_eq!((web.weight, web.max_conns), (2, 9));
    let errs = messages("[proxy]\nalgorithm = header-hash\n[backends]\na = 127.0.0.1:1 send_proxy=v3\n");
    assert!(errs[0].contains("header-hash hashes an HTTP request header"), "{errs:?}");
    assert!(errs[1].contains("send_proxy=v3: expected v1 or v2"), "{errs:?}");
    let c = parse("[proxy]\nmode = http\nalgorithm = header-hash\naccept_proxy = v2\n[backends]\na = 127.0.0.1:1 send_proxy=v1\n")
        .expect("valid");
    assert_eq!((c.algorithm, c.scale.accept_proxy), (Algorithm::HeaderHash, AcceptProxy::V2));
    assert_eq!(c.backends[0].send_proxy, Some(ProxyVersion::V1));
    let errs = messages("[backends]\na = 127.0.0.1:1 weight=2 weight=3\n");
    assert!(errs[0].contains("option 'weight' given twice"), "{errs:?}");
    let errs = messages("[health]\nfall = 0\nmode = udp\n[backends]\na = 127.0.0.1:1\n");
    assert!(errs[0].contains("[health] fall: 0 is out of range"), "{errs:?}");
    assert!(errs[1].contains("[health] mode: unknown mode 'udp'"), "{errs:?}");
}

#[test]
fn retry_on_takes_error_statuses_and_access_settings_their_choices() {
    let c = parse("[http]\nretry_on = 502, 503 504,503\n[backends]\na = 127.0.0.1:1\n").expect("valid");
    assert_eq!(c.http.retry_on, vec![502, 503, 504], "commas or spaces, each once");
    assert!(
        parse("[backends]\na = 127.0.0.1:1\n").expect("valid").http.retry_on.is_empty(),
        "off by default"
    );
    let errs = messages(
        "[http]\nretry_on = 503, 200\n[proxy]\naccess_format = apache\n[backends]\na = 127.0.0.1:1\n",
    );
    assert!(errs[0].contains("[http] retry_on: '200' is not an HTTP error status"), "{errs:?}");
    assert!(errs[1].contains("[proxy] access_format"), "{errs:?}");
    let c = parse(
        "[proxy]\naccess_log = off\n[health]\neject_consecutive_5xx = 0\n[backends]\na = 127.0.0.1:1\n",
    )
    .expect("valid");
    assert_eq!(c.access_log, crate::config::access::Destination::Off);
    assert_eq!(c.health.eject_consecutive_5xx, 0);
}

#[test]
fn a_comment_after_a_section_header_is_a_comment() {
    let c = parse(
        "[proxy]   ; the listener\nworkers = 64\n  [pool.api] # more pools\nb = 127.0.0.1:2\n\
         [backends];  the default pool, named \"default\"\na = 127.0.0.1:1\n",
    )
    .expect("valid");
    assert_eq!((c.workers, c.backends.len()), (64, 1));
    // Anything else after a header is still an error, on its own line.
    let errs = messages("[proxy]\nworkers = 64\n[backends] extra\na = 127.0.0.1:1\n");
    assert!(errs[0].contains(":3") || errs[0].contains("line 3"), "{errs:?}");
    assert!(errs[0].contains("malformed section header"), "{errs:?}");
    // A header made tidy keeps every later line where it was, for the errors' line numbers.
    let errs = messages("[proxy]   ; c\r\n\r\nworkers = lots\n[backends]\na = 127.0.0.1:1\n");
    assert!(errs[0].contains(":3") && errs[0].contains("workers"), "{errs:?}");
}
