#!/usr/bin/env python3
"""Turns bench.sh's raw TSV into the Markdown table: medians over rounds, and ratios of ours to
each peer. Usage: bench_report.py RAW.tsv > table.md"""
import statistics
import sys
from collections import defaultdict

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")]
# columns: test, param, contestant, round, metric, value
values = defaultdict(list)
for test, param, who, _round, metric, value in rows:
    values[(test, param, who, metric)].append(float(value))

def med(test, param, who, metric):
    v = values.get((test, param, who, metric))
    return statistics.median(v) if v else None

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

def ratio(a, b):
    return a / b if a and b else None

peers = ["haproxy", "nginx"]
out = []
tests = sorted({(t, p) for (t, p, _, _) in values}, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0))

ka = [p for (t, p) in tests if t == "keepalive"]
if ka:
    out.append("### HTTP keep-alive (wrk, requests/s, median of rounds; latency p50 / p99 in ms)\n")
    out.append("| connections | direct | ours | HAProxy | nginx | ours/HAProxy | ours/nginx | p50 ours / HAProxy / nginx | p99 ours / HAProxy / nginx |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for p in ka:
        r = {w: med("keepalive", p, w, "rps") for w in ["direct", "ours"] + peers}
        p50 = " / ".join(fmt(med("keepalive", p, w, "p50_ms"), "ms") for w in ["ours"] + peers)
        p99 = " / ".join(fmt(med("keepalive", p, w, "p99_ms"), "ms") for w in ["ours"] + peers)
        out.append(f"| {p} | {fmt(r['direct'], 'k')} | {fmt(r['ours'], 'k')} | {fmt(r['haproxy'], 'k')} | {fmt(r['nginx'], 'k')} "
                   f"| {fmt(ratio(r['ours'], r['haproxy']), 'x')} | {fmt(ratio(r['ours'], r['nginx']), 'x')} | {p50} | {p99} |")
    out.append("")

for test, title, unit in [("close", "New connection per request (`Connection: close`), requests/s", "k"),
                          ("tls_keepalive", "HTTPS keep-alive: requests/s over TLS (same certificate everywhere)", "k"),
                          ("tls_close", "HTTPS new TLS connection per request (full handshake, no resumption), requests/s", "k"),
                          ("cpu", "Proxy CPU seconds per 100k requests (keep-alive, lower is better)", ""),]:
    params = [p for (t, p) in tests if t == test]
    if not params:
        continue
    out.append(f"### {title}\n")
    out.append("| connections | direct | ours | HAProxy | nginx | ours/HAProxy | ours/nginx |")
    out.append("|---|---|---|---|---|---|---|")
    metric = "cpu_s_per_100k" if test == "cpu" else "rps"
    for p in params:
        r = {w: med(test, p, w, metric) for w in ["direct", "ours"] + peers}
        if test == "cpu":
            rh, rn = ratio(r["ours"], r["haproxy"]), ratio(r["ours"], r["nginx"])
            out.append(f"| {p} | — | {fmt(r['ours'])} | {fmt(r['haproxy'])} | {fmt(r['nginx'])} | {fmt(rh, 'x')} | {fmt(rn, 'x')} |")
        else:
            out.append(f"| {p} | {fmt(r['direct'], unit)} | {fmt(r['ours'], unit)} | {fmt(r['haproxy'], unit)} | {fmt(r['nginx'], unit)} "
                       f"| {fmt(ratio(r['ours'], r['haproxy']), 'x')} | {fmt(ratio(r['ours'], r['nginx']), 'x')} |")
    out.append("")

bulk = [p for (t, p) in tests if t == "bulk"]
if bulk:
    out.append("### TCP bulk throughput (iperf3, Gbit/s)\n")
    out.append("| streams | direct | ours (tcp) | HAProxy (tcp) | ours/direct | ours/HAProxy |")
    out.append("|---|---|---|---|---|---|")
    for p in bulk:
        r = {w: med("bulk", p, w, "gbps") for w in ["direct", "ours", "haproxy"]}
        out.append(f"| {p} | {fmt(r['direct'])} | {fmt(r['ours'])} | {fmt(r['haproxy'])} | {fmt(ratio(r['ours'], r['direct']), 'x')} | {fmt(ratio(r['ours'], r['haproxy']), 'x')} |")
    out.append("")

idle = [p for (t, p) in tests if t == "idle"]
if idle:
    out.append("### Idle keep-alive connections held through the proxy\n")
    out.append("| connections | contestant | answered after holding | RSS MiB | threads |")
    out.append("|---|---|---|---|---|")
    for p in idle:
        for w in ["ours", "haproxy", "nginx"]:
            a = med("idle", p, w, "answered")
            if a is None:
                continue
            out.append(f"| {p} | {w} | {int(a)} | {fmt(med('idle', p, w, 'rss_mib'))} | {int(med('idle', p, w, 'threads') or 0)} |")
    out.append("")

# The viewer's cost as the median of same-round ratios (on/off measured back to back), which
# cancels the round-to-round drift of a shared machine better than a ratio of medians.
by_round = {}
for test, param, who, rnd, metric, value in rows:
    if test in ("dash_off", "dash_on") and metric == "rps":
        by_round.setdefault(rnd, {})[test] = float(value)
pairs = [r["dash_on"] / r["dash_off"] for r in by_round.values() if len(r) == 2]
if pairs:
    dash = med("dash_off", "64", "ours", "rps"), med("dash_on", "64", "ours", "rps")
    drop = (1 - statistics.median(pairs)) * 100
    out.append(f"Dashboard viewer open under full load (c=64): {fmt(dash[1], 'k')} req/s vs "
               f"{fmt(dash[0], 'k')} without (medians); median of {len(pairs)} same-round ratios: "
               f"{drop:+.1f}% fewer (bound: 3%).\n")

lat = med("keepalive", "1", "ours", "p50_ms"), med("keepalive", "1", "direct", "p50_ms")
if all(lat):
    out.append(f"Added latency at 1 connection (p50, ours − direct): {(lat[0] - lat[1]) * 1000:.0f} µs "
               f"(HAProxy: {((med('keepalive', '1', 'haproxy', 'p50_ms') or 0) - lat[1]) * 1000:.0f} µs, "
               f"nginx: {((med('keepalive', '1', 'nginx', 'p50_ms') or 0) - lat[1]) * 1000:.0f} µs).\n")
print("\n".join(out))
