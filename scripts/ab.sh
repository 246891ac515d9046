#!/usr/bin/env bash
# A same-run A/B of two proxy_server builds (HTTP keep-alive, or Connection: close), with
# HAProxy alongside as the yardstick: rounds alternate A, B, HAProxy, and the report gives the
# median over rounds of B/A (and of each against HAProxy) for requests/s and for requests per
# CPU-second, so a change is judged against the machine's state of the moment.
#
#   scripts/ab.sh A_BIN B_BIN                 c = 16 64 256 1000, 5 rounds of 4 s
#   C="16 256" ROUNDS=7 DUR=4 scripts/ab.sh A_BIN B_BIN
#   CLOSE=1 scripts/ab.sh A_BIN B_BIN         a new connection per request (c = 64)
#   B_ENV="MALLOC_ARENA_MAX=2" scripts/ab.sh A_BIN A_BIN   the same build, B with an environment
#   B_WORKERS=256 scripts/ab.sh A_BIN A_BIN   the same build, B with `workers = 256` (else default)
#   B_CONF=$'[limits]\nrate = 100000/s' scripts/ab.sh A_BIN A_BIN   B with extra config lines
#   A_ROUTES=1 B_ROUTES=1000 scripts/ab.sh A_BIN A_BIN   route lookup cost: N routes, the backend
#                                             in a pool the last route (path /) reaches
#
# Loopback only; every load is bounded by wrk -d; processes started here are stopped by pid.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
[ $# -eq 2 ] || { sed -n 2,16p "$0" >&2; exit 2; }
A_BIN=$(realpath "$1"); B_BIN=$(realpath "$2")
ROUNDS=${ROUNDS:-5}; DUR=${DUR:-4}; CLOSE=${CLOSE:-0}
C=${C:-"16 64 256 1000"}; [ "$CLOSE" = 1 ] && C=${C_CLOSE:-64}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
BACKEND=$(free_port); PA=$(free_port); PB=$(free_port); HAP=$(free_port)
nginx_backend_conf "$W" "$BACKEND"
haproxy_http_conf "$W/haproxy.cfg" "$HAP" "$BACKEND"
# The shipped defaults, as a user runs it; A_WORKERS / B_WORKERS set `workers` for one side.
for side in a b; do
    port=$PA; [ $side = b ] && port=$PB
    workers=${A_WORKERS:-}; [ $side = b ] && workers=${B_WORKERS:-}
    routes=${A_ROUTES:-0}; [ $side = b ] && routes=${B_ROUTES:-0}
    if [ "$routes" -gt 0 ]; then
        # N-1 routes that never match (by host and path), then the one that does.
        {
            printf '[proxy]\nlisten = 127.0.0.1:%s\nmode = http\n%blog_file =\nlog_level = warn\n[pool.p]\nb1 = 127.0.0.1:%s\n' \
                "$port" "${workers:+workers = $workers\n}" "$BACKEND"
            for i in $(seq 2 "$routes"); do
                printf '[route.r%s]\nhost = r%s.example.com\npath = /a%s/b\npool = p\n' "$i" "$i" "$i"
            done
            printf '[route.last]\npath = /\npool = p\n'
        } >"$W/$side.ini"
        continue
    fi
    printf '[proxy]\nlisten = 127.0.0.1:%s\nmode = http\n%blog_file =\nlog_level = warn\n[backends]\nb1 = 127.0.0.1:%s\n' \
        "$port" "${workers:+workers = $workers\n}" "$BACKEND" >"$W/$side.ini"
    extra=${A_CONF:-}; [ $side = b ] && extra=${B_CONF:-}
    [ -n "$extra" ] && printf '%s\n' "$extra" >>"$W/$side.ini"
done
start() { # port command...
    local port=$1; shift
    "$@" >>"$W/out" 2>&1 &
    PIDS+=($!); LAST=$!
    wait_port 127.0.0.1 "$port" 100 || { cat "$W/out" >&2; exit 1; }
}
start "$BACKEND" nginx -c "$W/backend.conf"
start "$PA" env ${A_ENV:-} "$A_BIN" --config "$W/a.ini"; PID_A=$LAST
start "$PB" env ${B_ENV:-} "$B_BIN" --config "$W/b.ini"; PID_B=$LAST
start "$HAP" haproxy -f "$W/haproxy.cfg"; PID_H=$LAST

TCK=$(getconf CLK_TCK)
HDR=(); [ "$CLOSE" = 1 ] && HDR=(-H "Connection: close")
echo -e "c\tround\twho\trps\treq_per_cpu_s" >"$W/raw"
for c in $C; do
    t=2; [ "$c" -lt 2 ] && t=1
    for port in $PA $PB $HAP; do wrk -t$t -c"$c" -d1s "${HDR[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true; done
    for r in $(seq "$ROUNDS"); do
        for who in a b haproxy; do
            case $who in a) port=$PA pid=$PID_A ;; b) port=$PB pid=$PID_B ;; *) port=$HAP pid=$PID_H ;; esac
            before=$(cpu_ticks "$pid")
            out=$(wrk -t$t -c"$c" -d"${DUR}s" --latency "${HDR[@]}" "http://127.0.0.1:$port/" 2>&1)
            after=$(cpu_ticks "$pid")
            reqs=$(awk '/requests in/ {print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
            eff=$(python3 -c "print($reqs / max(1, $after - $before) * $TCK)")
            p50=$(awk '$1 == "50%" {print $2}' <<<"$out"); p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
            echo -e "$c\t$r\t$who\t$rps\t$eff" >>"$W/raw"
            printf "  c=%-5s round %s %-8s %10s req/s %10.0f req/CPU-s  p50 %8s p99 %8s\n" "$c" "$r" "$who" "$rps" "$eff" "$p50" "$p99"
        done
    done
done
python3 - "$W/raw" <<'PY'
import statistics, sys
from collections import defaultdict
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n")[1:] if l]
d = defaultdict(dict)
for c, r, who, rps, eff in rows:
    d[(c, r)][who] = (float(rps), float(eff))
def med(c, a, b, i):
    v = [x[a][i] / x[b][i] for (cc, _), x in d.items() if cc == c and a in x and b in x and x[b][i]]
    return statistics.median(v) if v else float("nan")
print("\n| c | B/A req/s | B/A req/CPU-s | A/HAProxy req/s | B/HAProxy req/s | A/HAProxy req/CPU-s | B/HAProxy req/CPU-s |")
print("|---|---|---|---|---|---|---|")
for c in sorted({c for c, _ in d}, key=int):
    print(f"| {c} | {med(c,'b','a',0):.3f} | {med(c,'b','a',1):.3f} | {med(c,'a','haproxy',0):.2f} | {med(c,'b','haproxy',0):.2f} "
          f"| {med(c,'a','haproxy',1):.2f} | {med(c,'b','haproxy',1):.2f} |")
PY
