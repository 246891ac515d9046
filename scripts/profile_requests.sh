#!/usr/bin/env bash
# Per-request costs in HTTP keep-alive, ours against HAProxy, at c = 16 and c = 256: context
# switches, CPU migrations, syscalls and CPU time per request, from `perf stat` software events
# on each proxy's process while wrk runs for 5 s; then the syscalls by name per request from
# `strace -c -f` during a second 3 s run (strace slows the process; the counts per request
# hold). Loopback only; every process started here is stopped by pid.
# Needs perf (Debian: linux-perf), strace, nginx, haproxy and wrk.
# Usage: scripts/profile_requests.sh          keep-alive, c = 16 and 256
#        CLOSE=1 scripts/profile_requests.sh  a new connection per request (Connection: close), c = 64
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
W=$(mktemp -d); BIN=target/release/proxy_server
cargo build --release -q --bin proxy_server
BACKEND=$(free_port); OURS=$(free_port); HAP=$(free_port)
nginx_backend_conf "$W" "$BACKEND"
haproxy_http_conf "$W/haproxy.cfg" "$HAP" "$BACKEND"
nginx -c $W/backend.conf & NG=$!
haproxy -f $W/haproxy.cfg -db & HP=$!
wait_port 127.0.0.1 $BACKEND; wait_port 127.0.0.1 $HAP
HDR=(); LEVELS="16 256"
[ "${CLOSE:-0}" = 1 ] && { HDR=(-H "Connection: close"); LEVELS=64; }
for c in $LEVELS; do
  printf "[proxy]\nlisten = 127.0.0.1:$OURS\nmode = http\nworkers = $((c+16))\nlog_file =\nlog_level = warn\n[health]\nenabled = false\n[http]\nbackend_keepalive = $((c+16))\n[backends]\napp1 = 127.0.0.1:$BACKEND\n" > $W/ours.ini
  $BIN --config $W/ours.ini & OP=$!
  wait_port 127.0.0.1 $OURS
  for who in ours haproxy; do
    pid=$OP; port=$OURS; [ $who = haproxy ] && { pid=$HP; port=$HAP; }
    wrk -t2 -c$c -d1s "${HDR[@]}" http://127.0.0.1:$port/ >/dev/null 2>&1
    perf stat -x, -e context-switches,cpu-migrations,task-clock,raw_syscalls:sys_enter -p $pid -o $W/perf.$who.$c -- sleep 5 &
    PS=$!
    wrk -t2 -c$c -d5s "${HDR[@]}" http://127.0.0.1:$port/ > $W/wrk.$who.$c 2>&1
    wait $PS
    reqs=$(awk '/requests in/ {print $1}' $W/wrk.$who.$c)
    cs=$(awk -F, '/context-switches/ {print $1}' $W/perf.$who.$c)
    ms=$(awk -F, '/task-clock/ {print $1}' $W/perf.$who.$c)
    sc=$(awk -F, '/sys_enter/ {print $1}' $W/perf.$who.$c)
    mg=$(awk -F, '/cpu-migrations/ {print $1}' $W/perf.$who.$c)
    python3 -c "r=$reqs; print(f'c=$c $who: {r/5:.0f} req/s, {$cs/r:.2f} switches/req, {$mg/r:.3f} migrations/req, {$sc/r:.2f} syscalls/req, {$ms*1000/r:.1f} us CPU/req')"
    timeout 10 strace -c -f -p $pid -o $W/strace.$who.$c 2>/dev/null &
    ST=$!
    sleep 0.5
    wrk -t2 -c$c -d3s "${HDR[@]}" http://127.0.0.1:$port/ > $W/wrk2.$who.$c 2>&1
    kill -INT $ST 2>/dev/null; wait $ST 2>/dev/null
    reqs=$(awk '/requests in/ {print $1}' $W/wrk2.$who.$c)
    awk -v r=$reqs '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 / r >= 0.05 {printf "    strace: %.2f %s/req\n", $4 / r, $NF}' $W/strace.$who.$c
  done
  kill $OP; wait $OP 2>/dev/null
done
kill $NG $HP; wait 2>/dev/null
rm -rf "$W"
