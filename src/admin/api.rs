//! The runtime API: `POST /backends/NAME/drain`, `/maint`, `/ready` and `/weight?value=N`,
//! HAProxy's `set server state` and `set server weight` over HTTP. Each answers JSON with the
//! backend's new state and is logged at warn with the admin client's address.
//!
//! A change lasts until a reload changes that backend's line in the file, or a restart
//! (see [`crate::server::discovery`]). When `[admin] token` is set every POST must carry
//! `Authorization: Bearer TOKEN`, else 401. A POST a browser sends from a page of another
//! origin gets 403 ([`same_origin`]).

use std::net::SocketAddr;
use std::sync::Arc;

use super::Admin;
use crate::backend::{AdminState, Backend};
use crate::events;
use crate::h1::head::Request;
use crate::route::index::normalize_host;
use crate::stats::backend_json;

/// Largest weight the API sets: the file's largest, so any weight it gave can be set back.
pub use crate::config::MAX_WEIGHT;

/// An answer: status and JSON body.
pub(super) type Answer = (u16, String);

fn error(status: u16, message: &str) -> Answer {
    (status, format!("{}\n", serde_json::json!({ "error": message })))
}

/// Whether `req` carries the configured token (always, when none is configured). Compared in
/// time independent of where the first difference is, so timing does not reveal the token.
pub(super) fn authorized(admin: &Admin, req: &Request) -> bool {
    let Some(token) = &admin.token else { return true };
    let given = req.fields.get("authorization").unwrap_or_default();
    let Some(given) = given.strip_prefix("Bearer ") else { return false };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a POST comes from a page of the admin listener's own origin, or from no browser at
/// all (curl and scripts send neither header): a page elsewhere, open in the operator's
/// browser, must not drain or pause backends with a form or a fetch (cross-site request
/// forgery), token or no token. `Sec-Fetch-Site` decides where a browser sends it, else
/// `Origin` must name the `Host` asked for. Without a token, `Host` must also be an address or
/// `localhost`: a hostile page whose own name its DNS rebinds to 127.0.0.1 is same-origin.
pub(super) fn same_origin(admin: &Admin, req: &Request) -> bool {
    let host = req.fields.get("host").unwrap_or_default();
    let host = host.trim();
    if admin.token.is_none() && !names_no_domain(host) {
        return false;
    }
    if let Some(site) = req.fields.get("sec-fetch-site") {
        return matches!(site.trim(), "same-origin" | "none");
    }
    let Some(origin) = req.fields.get("origin") else { return true };
    origin.trim().split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// Whether a `Host` value (with or without its port) is an IP address, `localhost`, or absent.
fn names_no_domain(host: &str) -> bool {
    let name = normalize_host(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.is_empty() || name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

/// Handles `POST /backends/...` (`path` without the query, `query` after the `?`).
pub(super) fn post(admin: &Admin, path: &str, query: &str, peer: SocketAddr) -> Answer {
    let Some(rest) = path.strip_prefix("/backends/") else {
        return error(404, "POST /backends/NAME/drain, /maint, /ready or /weight?value=N");
    };
    let Some((name, action)) = rest.rsplit_once('/') else {
        return error(404, "POST /backends/NAME/drain, /maint, /ready or /weight?value=N");
    };
    let name = percent_decode(name);
    let table = admin.router.table();
    // A member's own name, else every member of the `[backends]` line of that name (a DNS name);
    // names are unique across pools, so one pool has them.
    let found = table.pools().iter().find_map(|p| {
        let members = p.balancer.members();
        let mut chosen: Vec<Arc<Backend>> = members.iter().filter(|b| b.name() == name).cloned().collect();
        if chosen.is_empty() {
            chosen = members.iter().filter(|b| b.spec() == name).cloned().collect();
        }
        (!chosen.is_empty()).then(|| (p.name.clone(), p.balancer.clone(), chosen))
    });
    let Some((pool, balancer, chosen)) = found else {
        return error(404, &format!("no backend named '{name}'"));
    };
    let change = match action {
        "drain" => Change::State(AdminState::Drain),
        "maint" => Change::State(AdminState::Maint),
        "ready" => Change::State(AdminState::Ready),
        "weight" => match weight_value(query) {
            Ok(w) => Change::Weight(w),
            Err(why) => return error(400, &why),
        },
        _ => return error(404, &format!("unknown action '{action}' (drain, maint, ready or weight)")),
    };
    let slowstart = balancer.health_settings().slowstart;
    let mut answers = Vec::new();
    for b in &chosen {
        let what = match change {
            Change::State(state) => {
                let before = b.set_admin_state(state, slowstart);
                format!("{} -> {} (was {})", b.name(), state.name(), before.name())
            }
            Change::Weight(w) => {
                let before = b.weight();
                b.set_runtime_weight(w);
                format!("{} weight {before} -> {w}", b.name())
            }
        };
        log::warn!("admin {peer}: {what}; lasts until a reload changes its line, or a restart");
        events::state(b.name(), b.state_text(), &format!("admin {peer}: {what}"));
        answers.push(backend_json(&pool, b));
    }
    if matches!(change, Change::Weight(_)) {
        balancer.rebuild();
    }
    // Picks waiting for a slot look again: a backend back in rotation may take them.
    balancer.wake();
    let body = match answers.len() {
        1 => answers.remove(0),
        _ => serde_json::json!({ "backends": answers }),
    };
    (200, format!("{body}\n"))
}

#[derive(Clone, Copy)]
enum Change {
    State(AdminState),
    Weight(u32),
}

/// The `value=N` of a weight change.
fn weight_value(query: &str) -> Result<u32, String> {
    let value = query.split('&').find_map(|kv| kv.strip_prefix("value="));
    let Some(value) = value else {
        return Err(format!("weight needs ?value=N with N in 0..={MAX_WEIGHT}"));
    };
    match value.parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(format!("weight '{value}' is not a whole number in 0..={MAX_WEIGHT}")),
    }
}

/// `%XX` escapes decoded (a DNS member is named `web@10.0.0.5:80`); a bad escape stays as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_values_outside_0_to_1000_or_not_numbers_are_refused() {
        assert_eq!(weight_value("value=0"), Ok(0));
        assert_eq!(weight_value("x=1&value=1000"), Ok(1000));
        for bad in ["value=1001", "value=-1", "value=", "value=1.5", "", "valu=3"] {
            assert!(weight_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(percent_decode("web%4010.0.0.5%3A80"), "web@10.0.0.5:80");
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }
}
