#!/usr/bin/env python3
"""Turns bench.sh's raw TSV into the Markdown report: medians over rounds, ratios of ours to each
peer as the median of same-round ratios (contestants alternate within a round, so a pair shares
the machine's state of the moment), and issue #18's targets, each met or not.
Usage: bench_report.py RAW.tsv > report.md"""
import statistics
import sys
from collections import defaultdict

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")]
# columns: test, param, contestant, round, metric, value
values = defaultdict(list)
by_round = defaultdict(dict)  # (test, param, metric, round) -> {who: value}
for test, param, who, rnd, metric, value in rows:
    values[(test, param, who, metric)].append(float(value))
    by_round[(test, param, metric, rnd)][who] = float(value)

PEERS = ["haproxy", "nginx", "apache"]
NAMES = {"haproxy": "HAProxy", "nginx": "nginx", "apache": "Apache", "direct": "direct", "ours": "ours",
         "ourstcp": "ours (tcp mode)"}


def med(test, param, who, metric):
    v = values.get((test, param, who, metric))
    return statistics.median(v) if v else None


def pair(test, param, metric, a, b):
    """The median over rounds of a/b measured in the same round."""
    ratios = []
    for (t, p, m, _rnd), seen in by_round.items():
        if (t, p, m) == (test, param, metric) and seen.get(a) and seen.get(b):
            ratios.append(seen[a] / seen[b])
    return statistics.median(ratios) if ratios else None


def fmt(x, unit=""):
    if x is None:
        return "—"
    if unit == "k":
        return f"{x / 1000:.1f}k"
    if unit == "ms":
        return f"{x:.2f}"
    if unit == "x":
        return f"{x:.2f}×"
    return f"{x:.1f}"


def params_of(test):
    return sorted({p for (t, p, _, _) in values if t == test}, key=lambda p: int(p) if p.isdigit() else 0)


def present(test, param):
    return [w for w in PEERS if med(test, param, w, "rps") is not None]


out = []
targets = []  # (target, measured, met)


def check(name, measured, ok):
    targets.append((name, measured, "met" if ok else "**not met**"))


ka = params_of("keepalive")
if ka:
    peers = [w for w in PEERS if any(med("keepalive", p, w, "rps") for p in ka)]
    out.append("### HTTP keep-alive (wrk, requests/s: medians of rounds; ratios: medians of same-round ratios)\n")
    out.append("| c | direct | ours | " + " | ".join(NAMES[w] for w in peers) + " | "
               + " | ".join(f"ours/{NAMES[w]}" for w in peers) + " | p99 ms: ours / " + " / ".join(NAMES[w] for w in peers) + " |")
    out.append("|---" * (3 + 2 * len(peers) + 1) + "|")
    for p in ka:
        r = {w: med("keepalive", p, w, "rps") for w in ["direct", "ours"] + peers}
        ratios = {w: pair("keepalive", p, "rps", "ours", w) for w in peers}
        p99 = " / ".join(fmt(med("keepalive", p, w, "p99_ms"), "ms") for w in ["ours"] + peers)
        out.append(f"| {p} | {fmt(r['direct'], 'k')} | {fmt(r['ours'], 'k')} | "
                   + " | ".join(fmt(r[w], "k") for w in peers) + " | "
                   + " | ".join(fmt(ratios[w], "x") for w in peers) + f" | {p99} |")
        if p != "1":
            h, n, a = ratios.get("haproxy"), ratios.get("nginx"), ratios.get("apache")
            check(f"keep-alive c={p}: ≥ 0.95× HAProxy", fmt(h, "x"), h is not None and h >= 0.95)
            check(f"keep-alive c={p}: ≥ 1.1× nginx", fmt(n, "x"), n is not None and n >= 1.1)
            if a is not None:
                check(f"keep-alive c={p}: ≥ 2× Apache worker", fmt(a, "x"), a >= 2)
            po, ph = med("keepalive", p, "ours", "p99_ms"), med("keepalive", p, "haproxy", "p99_ms")
            check(f"keep-alive c={p}: p99 ≤ 1.5× HAProxy's", f"{fmt(po, 'ms')} vs {fmt(ph, 'ms')} ms",
                  po is not None and ph is not None and po <= 1.5 * ph)
    out.append("")

    out.append("### Requests per proxy CPU-second (keep-alive; CPU summed over every process of each contestant)\n")
    out.append("| c | ours | " + " | ".join(NAMES[w] for w in peers) + " | "
               + " | ".join(f"ours/{NAMES[w]}" for w in peers) + " |")
    out.append("|---" * (2 + 2 * len(peers)) + "|")
    for p in ka:
        eff = {w: med("keepalive", p, w, "req_per_cpu_s") for w in ["ours"] + peers}
        ratios = {w: pair("keepalive", p, "req_per_cpu_s", "ours", w) for w in peers}
        out.append(f"| {p} | {fmt(eff['ours'], 'k')} | " + " | ".join(fmt(eff[w], "k") for w in peers) + " | "
                   + " | ".join(fmt(ratios[w], "x") for w in peers) + " |")
        if p != "1":
            h = ratios.get("haproxy")
            check(f"requests per CPU-second c={p}: ≥ 0.9× HAProxy", fmt(h, "x"), h is not None and h >= 0.9)
    out.append("")

for test, title in [("close", "New connection per request (`Connection: close`, c=64), requests/s"),
                    ("tls_keepalive", "HTTPS keep-alive: requests/s over TLS (same certificate everywhere)"),
                    ("tls_close", "HTTPS new TLS connection per request (full handshake, no resumption), requests/s")]:
    for p in params_of(test):
        peers = present(test, p)
        out.append(f"### {title}\n")
        out.append("| c | direct | ours | " + " | ".join(NAMES[w] for w in peers) + " | "
                   + " | ".join(f"ours/{NAMES[w]}" for w in peers) + " | requests per CPU-second: ours / "
                   + " / ".join(NAMES[w] for w in peers) + " |")
        out.append("|---" * (4 + 2 * len(peers)) + "|")
        r = {w: med(test, p, w, "rps") for w in ["direct", "ours"] + peers}
        ratios = {w: pair(test, p, "rps", "ours", w) for w in peers}
        eff = " / ".join(fmt(med(test, p, w, "req_per_cpu_s"), "k") for w in ["ours"] + peers)
        out.append(f"| {p} | {fmt(r['direct'], 'k')} | {fmt(r['ours'], 'k')} | " + " | ".join(fmt(r[w], "k") for w in peers)
                   + " | " + " | ".join(fmt(ratios[w], "x") for w in peers) + f" | {eff} |")
        out.append("")
        if test == "close":
            h = ratios.get("haproxy")
            check("`Connection: close`: ≥ 0.9× HAProxy", fmt(h, "x"), h is not None and h >= 0.9)

bulk = params_of("bulk")
if bulk:
    out.append("### TCP bulk throughput (iperf3, Gbit/s)\n")
    out.append("| streams | direct | ours (tcp) | HAProxy (tcp) | ours/direct | ours/HAProxy |")
    out.append("|---|---|---|---|---|---|")
    for p in bulk:
        r = {w: med("bulk", p, w, "gbps") for w in ["direct", "ours", "haproxy"]}
        d, h = pair("bulk", p, "gbps", "ours", "direct"), pair("bulk", p, "gbps", "ours", "haproxy")
        out.append(f"| {p} | {fmt(r['direct'])} | {fmt(r['ours'])} | {fmt(r['haproxy'])} | {fmt(d, 'x')} | {fmt(h, 'x')} |")
        check(f"TCP bulk, {p} stream(s): ≥ 0.8× direct", fmt(d, "x"), d is not None and d >= 0.8)
    out.append("")

idle = params_of("idle")
if idle:
    out.append("### Idle keep-alive connections held through the proxy\n")
    out.append("| connections | contestant | answered after holding | RSS MiB | threads |")
    out.append("|---|---|---|---|---|")
    for p in idle:
        for w in ["ours", "ourstcp", "haproxy", "nginx", "apache"]:
            a = med("idle", p, w, "answered")
            if a is None:
                continue
            rss = med("idle", p, w, "rss_mib")
            out.append(f"| {p} | {NAMES[w]} | {int(a)} | {fmt(rss)} | {int(med('idle', p, w, 'threads') or 0)} |")
            if w in ("ours", "ourstcp"):
                check(f"{p} idle connections, {NAMES[w]}: ≤ 64 MiB RSS, every one answering",
                      f"{fmt(rss)} MiB, {int(a)} answered", rss is not None and rss <= 64 and int(a) == int(p))
    out.append("")

# The viewer's cost as the median of same-round ratios (on/off measured back to back).
dash_rounds = defaultdict(dict)
for test, param, who, rnd, metric, value in rows:
    if test in ("dash_off", "dash_on") and metric == "rps":
        dash_rounds[rnd][test] = float(value)
dash_pairs = [r["dash_on"] / r["dash_off"] for r in dash_rounds.values() if len(r) == 2]
if dash_pairs:
    dash = med("dash_off", "64", "ours", "rps"), med("dash_on", "64", "ours", "rps")
    drop = (1 - statistics.median(dash_pairs)) * 100
    out.append(f"Dashboard viewer open under full load (c=64): {fmt(dash[1], 'k')} req/s vs "
               f"{fmt(dash[0], 'k')} without (medians); median of {len(dash_pairs)} same-round ratios: "
               f"{drop:+.1f}% fewer (bound: 3%).\n")

lat = med("keepalive", "1", "ours", "p50_ms"), med("keepalive", "1", "direct", "p50_ms")
if all(lat):
    added = ", ".join(f"{NAMES[w]}: {((med('keepalive', '1', w, 'p50_ms') or 0) - lat[1]) * 1000:.0f} µs"
                      for w in PEERS if med("keepalive", "1", w, "p50_ms"))
    out.append(f"Added latency at 1 connection (p50, ours − direct): {(lat[0] - lat[1]) * 1000:.0f} µs ({added}).\n")

if targets:
    met = sum(1 for t in targets if t[2] == "met")
    out.append(f"### Targets (issue #18): {met} of {len(targets)} met\n")
    out.append("| target | measured | |")
    out.append("|---|---|---|")
    for name, measured, verdict in targets:
        out.append(f"| {name} | {measured} | {verdict} |")
    out.append("")
print("\n".join(out))
