//! `algorithm = least-time` (issue #24): the member with the lowest peak-EWMA response time
//! takes the traffic, says so with the numbers, and a member failing fast does not attract it.

use std::net::SocketAddr;

use crate::util::*;

fn least_time_proxy(backends: &[(&str, SocketAddr)]) -> (Proc, SocketAddr) {
    let mut config = String::from(
        "[proxy]\nmode = http\nworkers = 16\nalgorithm = least-time\n[health]\nenabled = false\n[backends]\n",
    );
    for (name, addr) in backends {
        config.push_str(&format!("{name} = {addr}\n"));
    }
    proxy_with(&config, &[])
}

#[test]
fn the_fast_member_takes_most_requests_and_the_decision_line_shows_the_costs() {
    let (_f, fast) = dummy("fast");
    let (_s, slow) = dummy_with("slow", 0, &["--delay-ms", "20"]);
    let (p, addr) = least_time_proxy(&[("fast", fast), ("slow", slow)]);
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    let mut on_fast = 0;
    for _ in 0..2000 {
        let r = get(&mut w, "/", "");
        assert_eq!(r.status, 200);
        on_fast += usize::from(r.header("X-Served-By") == Some("fast"));
    }
    assert!(on_fast >= 1700, "fast took {on_fast} of 2000");
    // The first pick finds both cold; later ones compare the costs.
    let cold = p.wait_for("(least-time: ");
    assert!(cold.contains("fast cold slow cold → "), "{cold}");
    let compared = |l: &&str| {
        l.contains("(least-time: fast ")
            && !l.contains("cold")
            && l.contains(" slow ")
            && l.contains(" → fast)")
    };
    wait_until("a decision line comparing both costs", || p.log_text().lines().any(|l| compared(&l)));
}

#[test]
fn a_member_failing_fast_with_503_does_not_attract_traffic() {
    let failing =
        raw_backend(|_| b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(), 0);
    let (_s, slowish) = dummy_with("ok", 0, &["--delay-ms", "5"]);
    let (_p, addr) = least_time_proxy(&[("failing", failing.addr), ("ok", slowish)]);
    let mut w = lbproxy::h1::Wire::new(connect(addr));
    let failed = (0..300).filter(|_| get(&mut w, "/", "").status == 503).count();
    assert!(failed <= 30, "{failed} of 300 went to the member answering 503 at once");
}
