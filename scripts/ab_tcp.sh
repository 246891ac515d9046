#!/usr/bin/env bash
# A same-run A/B of two proxy_server builds in TCP mode, for changes to the relay: rounds
# alternate A and B, each measuring HTTP keep-alive relayed through it (wrk, c=64, to nginx),
# the same over TLS that it terminates (wrk https, c=16), and a bulk flow (iperf3, splice).
#
#   scripts/ab_tcp.sh A_BIN B_BIN            5 rounds
#   ROUNDS=8 ONLY=bulk scripts/ab_tcp.sh A_BIN B_BIN
#
# Loopback only; every load is bounded (wrk -d 4, iperf3 -t 3); processes started here are
# stopped by pid.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# -eq 2 ] || { sed -n 2,9p "$0" >&2; exit 2; }
A_BIN=$(realpath "$1"); B_BIN=$(realpath "$2")
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
BACKEND=$(free_port); IPERF=$(free_port)
nginx_backend_conf "$W" "$BACKEND"
nginx -c "$W/backend.conf" -p "$W" >/dev/null 2>&1 & PIDS+=($!)
iperf3 -s -p "$IPERF" >/dev/null 2>&1 & PIDS+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 -keyout "$W/k.pem" -out "$W/c.pem" 2>/dev/null
declare -A P
for s in A B; do
  BIN=$A_BIN; [ $s = B ] && BIN=$B_BIN
  for kind in tcp tls bulk; do
    port=$(free_port); P[$s$kind]=$port
    tgt=$BACKEND; [ $kind = bulk ] && tgt=$IPERF
    printf '[proxy]\nlisten = 127.0.0.1:%s\nmode = tcp\nlog_file =\nlog_level = warn\n[backends]\nb1 = 127.0.0.1:%s\n' "$port" "$tgt" > "$W/$s$kind.ini"
    [ $kind = tls ] && printf '[tls]\ncert = %s\nkey = %s\n' "$W/c.pem" "$W/k.pem" >> "$W/$s$kind.ini"
    "$BIN" --config "$W/$s$kind.ini" >/dev/null 2>&1 & PIDS+=($!)
  done
done
for p in "${P[@]}" $BACKEND; do wait_port 127.0.0.1 "$p"; done
ROUNDS=${ROUNDS:-5}
for r in $(seq 1 $ROUNDS); do
  for s in A B; do
    t=0; h=0; b=0
    [ "${ONLY:-}" = bulk ] || t=$(wrk -t2 -c64 -d4 "http://127.0.0.1:${P[${s}tcp]}/" 2>/dev/null | awk '/Requests\/sec/{print $2}')
    [ "${ONLY:-}" = bulk ] || h=$(wrk -t2 -c16 -d4 "https://127.0.0.1:${P[${s}tls]}/" 2>/dev/null | awk '/Requests\/sec/{print $2}')
    b=$(iperf3 -c 127.0.0.1 -p "${P[${s}bulk]}" -t 3 -J 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))')
    echo "round $r $s tcp_rps=$t tls_rps=$h bulk_gbps=$b" | tee -a "$W/rounds"
  done
done
# The median over rounds of B/A, per measure.
python3 - "$W/rounds" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    _, r, side, *kv = line.split()
    rows.setdefault(r, {})[side] = {k: float(v) for k, v in (x.split("=") for x in kv)}
for k in ("tcp_rps", "tls_rps", "bulk_gbps"):
    ratios = [v["B"][k] / v["A"][k] for v in rows.values() if v["A"][k] > 0]
    if ratios:
        a = statistics.median(v["A"][k] for v in rows.values())
        b = statistics.median(v["B"][k] for v in rows.values())
        print(f"{k}: A {a:g}  B {b:g}  B/A median over rounds {statistics.median(ratios):.3f}")
PY
