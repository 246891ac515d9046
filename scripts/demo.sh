#!/usr/bin/env bash
# The demo: builds, starts ten dummy backends and the proxy, runs simulate_client so the
# per-backend distribution shows, then stops everything it started (also on Ctrl-C or failure).
# Usage: scripts/demo.sh [extra simulate_client flags]   (PORT=8080 by default)
# `--mode http` runs the proxy in HTTP mode too (a backend per request, not per connection).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
PORT=${PORT:-8080}
mode=tcp
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[$i]} in
    --mode) mode=${args[$((i + 1))]:-tcp} ;;
    --mode=*) mode=${args[$i]#--mode=} ;;
    esac
done
case $mode in
tcp | http) ;;
*)
    echo "--mode must be tcp or http, not '$mode'" >&2
    exit 2
    ;;
esac
proxy_pid=""
cleanup() {
    if [ -n "$proxy_pid" ] && is_ours "$proxy_pid" proxy_server; then
        kill -INT "$proxy_pid" 2>/dev/null || true
        wait "$proxy_pid" 2>/dev/null || true
    fi
    scripts/stop_backends.sh >/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/build.sh
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is in use; run with PORT=<free port> scripts/demo.sh" >&2
    exit 1
fi
scripts/start_backends.sh
: >logs/proxy.log
./proxy_server --listen "127.0.0.1:$PORT" --mode "$mode" 2>/dev/null &
proxy_pid=$!
wait_port 127.0.0.1 "$PORT"
echo
if [ "$mode" = http ]; then
    echo "== mode http: proxy on 127.0.0.1:$PORT balances each request (keep-alive), least-connections over 10 backends; 20 clients x 10 requests =="
else
    echo "== mode tcp: proxy on 127.0.0.1:$PORT balances each connection, least-connections over 10 backends; 20 clients x 10 requests, a connection each =="
fi
./simulate_client --target "127.0.0.1:$PORT" --clients 20 --requests 10 --hold-ms 30 "$@"
echo
echo "== a few of the proxy's decisions (logs/proxy.log) =="
if [ "$mode" = http ]; then
    grep -E 'req .* -> ' logs/proxy.log | tail -n 5
else
    grep -E 'conn [0-9]+ from .* -> ' logs/proxy.log | tail -n 5
fi
