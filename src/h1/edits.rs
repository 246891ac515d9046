//! Header rules as the head rewrites apply them: what a route deletes, replaces and adds, on
//! requests going to a backend and on responses going to the client.

/// One direction's rules, borrowed from the route table: `del` and `set` names drop the
/// message's own fields; then every `set` and `add` field is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits<'a> {
    pub del: &'a [String],
    pub set: &'a [(String, String)],
    pub add: &'a [(String, String)],
}

impl Edits<'_> {
    /// No rules.
    pub const NONE: Edits<'static> = Edits { del: &[], set: &[], add: &[] };

    /// Whether the message's own `name` field is dropped.
    pub fn drops(&self, name: &str) -> bool {
        !self.is_empty()
            && (self.del.iter().any(|d| d.eq_ignore_ascii_case(name))
                || self.set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
    }

    /// The value a `set` rule gives `name`, if any.
    pub fn set_value(&self, name: &str) -> Option<&str> {
        self.set.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.del.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Writes the `set` and `add` fields, except those named in `skip` (written elsewhere).
    pub fn write(&self, out: &mut Vec<u8>, skip: &str) {
        for (n, v) in self.set.iter().chain(self.add) {
            if !n.eq_ignore_ascii_case(skip) {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// What routing decided for a request, as the rewrite of its head needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed<'a> {
    /// The matching route's position in the table, if one matched.
    pub route: Option<u32>,
    /// Bytes of the target's path to strip (`strip_prefix`).
    pub strip: usize,
    /// The route's request rules.
    pub edits: Edits<'a>,
    /// The proxy answers this request itself (a redirect, or no pool): keep its host.
    pub answer: bool,
    /// The pool's sticky cookie: its value is kept ([`super::request::RequestHead::sticky`])
    /// and the cookie removed before the request goes on.
    pub cookie: Option<&'a str>,
}

/// The value of cookie `name` in `Cookie` header values, and those values without it (`None`
/// for a header left empty).
pub fn take_cookie<'v>(value: &'v [u8], name: &str) -> (Option<&'v [u8]>, Option<Vec<u8>>) {
    let mut found = None;
    let mut rest: Vec<u8> = Vec::with_capacity(value.len());
    for pair in value.split(|&b| b == b';') {
        let trimmed = pair.trim_ascii();
        let is_it = trimmed.split(|&b| b == b'=').next().is_some_and(|n| n.trim_ascii() == name.as_bytes());
        if is_it && trimmed.contains(&b'=') {
            if found.is_none() {
                let v = &trimmed[trimmed.iter().position(|&b| b == b'=').unwrap_or(0) + 1..];
                found = Some(v.trim_ascii());
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if !rest.is_empty() {
            rest.extend_from_slice(b"; ");
        }
        rest.extend_from_slice(trimmed);
    }
    (found, (!rest.is_empty()).then_some(rest))
}

/// Decides the route of a request from its host (as sent: port and case included) and its
/// origin-form target.
pub type Router<'a> = dyn Fn(&str, &str) -> Routed<'a> + 'a;

/// `target` with its first `strip` path bytes removed: `/api/users?q=1` -> `/users?q=1`, and
/// `/api` or `/api?q` -> `/` or `/?q`.
pub fn stripped(target: &str, strip: usize) -> std::borrow::Cow<'_, str> {
    let rest = target.get(strip..).unwrap_or("");
    if strip == 0 || rest.starts_with('/') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        std::borrow::Cow::Owned(format!("/{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_keeps_the_query_and_leaves_at_least_a_slash() {
        assert_eq!(stripped("/api/users?q=1", 4), "/users?q=1");
        assert_eq!(stripped("/api", 4), "/");
        assert_eq!(stripped("/api?q=1", 4), "/?q=1");
        assert_eq!(stripped("/api/", 4), "/");
    }

    #[test]
    fn the_sticky_cookie_is_taken_out_and_the_others_pass_untouched() {
        let (v, rest) = take_cookie(b"a=1; lb=00ff; b=2", "lb");
        assert_eq!((v, rest.as_deref()), (Some(&b"00ff"[..]), Some(&b"a=1; b=2"[..])));
        let (v, rest) = take_cookie(b"lb=x", "lb");
        assert_eq!((v, rest), (Some(&b"x"[..]), None));
        let (v, rest) = take_cookie(b"lbx=1;alb=2", "lb");
        assert_eq!((v, rest.as_deref()), (None, Some(&b"lbx=1; alb=2"[..])));
    }

    #[test]
    fn set_and_del_drop_the_messages_own_fields_case_insensitively() {
        let del = vec!["X-Debug".to_string()];
        let set = vec![("x-env".to_string(), "prod".to_string())];
        let e = Edits { del: &del, set: &set, add: &[] };
        assert!(e.drops("x-debug") && e.drops("X-Env") && !e.drops("X-Other"));
        let mut out = Vec::new();
        e.write(&mut out, "");
        assert_eq!(out, b"x-env: prod\r\n");
    }
}
