//! One access-log entry and its standard wordings: Apache/nginx `combined`, read unchanged by
//! GoAccess, awstats and log shippers, and `json`, one object per line.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

/// What an access line can say about one request (http) or one connection (tcp). Empty
/// strings and `None` are fields that do not apply.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// The client: behind a trusted proxy, the one it forwarded for.
    pub client: Option<IpAddr>,
    /// The method; empty in tcp mode.
    pub method: &'a str,
    /// The request target as the client sent it.
    pub target: &'a str,
    /// `HTTP/1.1`, or `TCP`.
    pub protocol: &'a str,
    /// The status sent (tcp: 200 relayed, 502 failed).
    pub status: u16,
    /// Bytes from the client to the backend.
    pub bytes_in: u64,
    /// Bytes to the client, head included.
    pub bytes_out: u64,
    /// Bytes of response body to the client (`$body_bytes_sent`).
    pub body_bytes: u64,
    pub duration: Duration,
    /// The last attempt's connect time; zero for a reused connection.
    pub connect: Option<Duration>,
    /// From the last attempt's start to the response head.
    pub head: Option<Duration>,
    pub pool: &'a str,
    pub route: &'a str,
    pub backend: &'a str,
    /// Why the balancer picked it.
    pub reason: &'a str,
    pub attempts: u32,
    pub request_id: &'a str,
    /// As the client sent them: not always UTF-8.
    pub user_agent: &'a [u8],
    pub referer: &'a [u8],
    /// The client's TLS version, when TLS.
    pub tls: Option<&'a str>,
    /// What went wrong, if anything.
    pub note: &'a str,
}

/// [`combined_into`], as a line of its own (for the tests).
#[cfg(test)]
fn combined(e: &Entry<'_>, now: SystemTime) -> String {
    let mut line = String::with_capacity(160);
    combined_into(&mut line, e, now);
    line
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, escaped as nginx's default `escape` does, appended to
/// `line`. Time is UTC.
pub fn combined_into(line: &mut String, e: &Entry<'_>, now: SystemTime) {
    match e.client {
        Some(ip) => {
            let _ = write!(line, "{ip}");
        }
        None => line.push('-'),
    }
    line.push_str(" - - [");
    local_time(line, now);
    line.push_str("] \"");
    if e.method.is_empty() && e.protocol.is_empty() {
        // No request to name (a head refused before it parsed), as nginx writes it.
        line.push('-');
    } else if e.method.is_empty() {
        // tcp mode: the protocol and the backend stand in for a request line.
        escape_into(line, e.protocol);
        line.push(' ');
        escape_into(line, if e.backend.is_empty() { "-" } else { e.backend });
    } else {
        escape_into(line, e.method);
        line.push(' ');
        escape_into(line, e.target);
        line.push(' ');
        escape_into(line, e.protocol);
    }
    let _ = write!(line, "\" {} {} \"", e.status, e.body_bytes);
    escape_into(line, or_dash(e.referer));
    line.push_str("\" \"");
    escape_into(line, or_dash(e.user_agent));
    line.push('"');
}

/// [`json_into`], as a line of its own (for the tests).
#[cfg(test)]
fn json(e: &Entry<'_>, now: SystemTime) -> String {
    let mut line = String::with_capacity(384);
    json_into(&mut line, e, now);
    line
}

/// One JSON object, in a fixed order, strings escaped as nginx's `escape=json` does (through
/// serde_json), appended to `line`. Fields that do not apply are left out.
pub fn json_into(line: &mut String, e: &Entry<'_>, now: SystemTime) {
    let mut o = Object(line);
    o.0.push('{');
    o.key("time");
    rfc3339(o.0, now);
    match e.client {
        // An address needs no escaping.
        Some(ip) => o.raw("client", format_args!("\"{ip}\"")),
        None => o.raw("client", "null"),
    }
    o.texts(&[("method", e.method), ("target", e.target), ("protocol", e.protocol)]);
    o.raw("status", e.status);
    o.raw("bytes_in", e.bytes_in);
    o.raw("bytes_out", e.bytes_out);
    o.raw("duration_ms", Ms(e.duration));
    if let Some(d) = e.connect {
        o.raw("connect_ms", Ms(d));
    }
    if let Some(d) = e.head {
        o.raw("response_head_ms", Ms(d));
    }
    o.texts(&[("pool", e.pool), ("route", e.route), ("backend", e.backend), ("reason", e.reason)]);
    o.raw("attempts", e.attempts);
    // JSON is UTF-8: bytes that are not are written as U+FFFD here (combined keeps them).
    let (agent, referer) = (String::from_utf8_lossy(e.user_agent), String::from_utf8_lossy(e.referer));
    o.texts(&[
        ("request_id", e.request_id),
        ("user_agent", &agent),
        ("referer", &referer),
        ("tls", e.tls.unwrap_or("")),
        ("note", e.note),
    ]);
    o.0.push('}');
}

/// A JSON object being written: appended to a line, fields after its opening brace.
struct Object<'a>(&'a mut String);

impl Object<'_> {
    fn key(&mut self, k: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{k}\":");
    }

    fn raw(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        let _ = write!(self.0, "{v}");
    }

    fn text(&mut self, k: &str, v: &str) {
        self.key(k);
        if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            // Nothing to escape (the usual case): as is, without an allocation.
            self.0.push('"');
            self.0.push_str(v);
            self.0.push('"');
        } else {
            // serde_json's string escaping: quotes, backslashes and control characters.
            let _ = serde_json::to_string(v).map(|s| self.0.push_str(&s));
        }
    }

    /// The non-empty ones.
    fn texts(&mut self, fields: &[(&str, &str)]) {
        for (k, v) in fields.iter().filter(|(_, v)| !v.is_empty()) {
            self.text(k, v);
        }
    }
}

/// Milliseconds with up to three decimals (`2.5`).
struct Ms(Duration);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        let (whole, frac) = (micros / 1000, micros % 1000);
        match frac {
            0 => write!(f, "{whole}"),
            _ if frac % 100 == 0 => write!(f, "{whole}.{}", frac / 100),
            _ if frac % 10 == 0 => write!(f, "{whole}.{:02}", frac / 10),
            _ => write!(f, "{whole}.{frac:03}"),
        }
    }
}

fn or_dash(s: &[u8]) -> &[u8] {
    if s.is_empty() {
        b"-"
    } else {
        s
    }
}

/// nginx's default log escaping: `"`, `\`, control bytes and bytes above 0x7e as `\xHH`.
pub fn escape_into(out: &mut String, s: impl AsRef<[u8]>) {
    for &b in s.as_ref() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// Appends `05/Dec/2026:23:03:48 +0000`.
fn local_time(out: &mut String, now: SystemTime) {
    thread_local! {
        static CACHE: Second = const { Second::new() };
    }
    let format =
        time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    CACHE.with(|c| c.append(out, now, format));
}

/// Appends `"2026-12-05T23:03:48.123Z"` (quoted).
fn rfc3339(out: &mut String, now: SystemTime) {
    thread_local! {
        static CACHE: Second = const { Second::new() };
    }
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    out.push('"');
    CACHE.with(|c| c.append(out, now, format));
    let millis = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_millis();
    let _ = write!(out, ".{millis:03}Z\"");
}

/// One wording of the current second, formatted once a second per thread (a line's time is
/// the costliest part of formatting it).
struct Second(std::cell::RefCell<(u64, String)>);

impl Second {
    const fn new() -> Second {
        Second(std::cell::RefCell::new((u64::MAX, String::new())))
    }

    /// Appends `now`'s second in `format`.
    fn append(&self, out: &mut String, now: SystemTime, format: &[time::format_description::FormatItem<'_>]) {
        let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut c = self.0.borrow_mut();
        if c.0 != secs {
            *c = (secs, OffsetDateTime::from(now).format(format).unwrap_or_default());
        }
        out.push_str(&c.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        // 2026-12-05 23:03:48.123 UTC
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_511_828_123)
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("192.0.2.7".parse().expect("ip")),
            method: "GET",
            target: "/a?b=\"c\"",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 120,
            bytes_out: 300,
            body_bytes: 12,
            duration: Duration::from_micros(2500),
            connect: Some(Duration::from_micros(400)),
            head: Some(Duration::from_micros(1800)),
            pool: "api",
            route: "route api (path /api)",
            backend: "127.0.0.1:9001",
            reason: "least-connections: a 0 b 1 → a",
            attempts: 1,
            request_id: "r1",
            user_agent: b"curl/8.0 \\ \"x\"",
            referer: b"",
            tls: Some("TLSv1.3"),
            note: "",
        }
    }

    #[test]
    fn combined_is_apaches_with_nginx_escaping() {
        assert_eq!(
            combined(&entry(), at()),
            "192.0.2.7 - - [05/Dec/2026:23:03:48 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8.0 \\x5C \\x22x\\x22\""
        );
        let tcp = Entry { method: "", protocol: "TCP", client: None, ..entry() };
        assert!(combined(&tcp, at())
            .starts_with("- - - [05/Dec/2026:23:03:48 +0000] \"TCP 127.0.0.1:9001\" 200 12 "));
        let odd = Entry { user_agent: "é\n".as_bytes(), ..entry() };
        assert!(
            combined(&odd, at()).ends_with("\"\\xC3\\xA9\\x0A\""),
            "bytes outside printable ASCII as \\xHH"
        );
    }

    /// An agent that is not UTF-8 keeps its bytes in combined, as nginx writes them (`\xFF`),
    /// and stays valid JSON in json (U+FFFD: JSON is UTF-8).
    #[test]
    fn an_agent_that_is_not_utf8_keeps_its_bytes_in_combined_and_stays_valid_json() {
        let odd = Entry { user_agent: b"a\xff\xfe", referer: b"r\xc3", ..entry() };
        assert!(combined(&odd, at()).ends_with(" \"r\\xC3\" \"a\\xFF\\xFE\""), "{}", combined(&odd, at()));
        let v: serde_json::Value = serde_json::from_str(&json(&odd, at())).expect("valid JSON");
        assert_eq!(
            (v["user_agent"].as_str(), v["referer"].as_str()),
            (Some("a\u{fffd}\u{fffd}"), Some("r\u{fffd}"))
        );
    }

    #[test]
    fn json_is_one_object_with_the_fields_that_apply() {
        let line = json(&entry(), at());
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["time"], "2026-12-05T23:03:48.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["target"], "/a?b=\"c\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 2.5);
        assert_eq!(v["connect_ms"], 0.4);
        assert_eq!(v["response_head_ms"], 1.8);
        assert_eq!(v["user_agent"], "curl/8.0 \\ \"x\"");
        assert_eq!(v["tls"], "TLSv1.3");
        assert!(v.get("referer").is_none() && v.get("note").is_none(), "empty fields left out");
        let tcp = json(&Entry { method: "", target: "", protocol: "TCP", tls: None, ..entry() }, at());
        let v: serde_json::Value = serde_json::from_str(&tcp).expect("valid JSON");
        assert!(v.get("method").is_none() && v.get("tls").is_none());
        assert_eq!(v["protocol"], "TCP");
    }
}
