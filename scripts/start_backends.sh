#!/usr/bin/env bash
# Starts dummy servers on ports 9090-9099 (or the ports given) in the background.
# Each logs to logs/backend_<port>.log; their pids go to logs/backends.pids for stop_backends.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
[ -x ./dummy_server ] || scripts/build.sh
ports=("$@")
[ ${#ports[@]} -gt 0 ] || ports=($(seq 9090 9099))
mkdir -p logs
for port in "${ports[@]}"; do
    ./dummy_server "$port" --log-dir logs 2>/dev/null &
    echo $! >>"$PIDS"
done
for port in "${ports[@]}"; do
    wait_port 127.0.0.1 "$port"
done
echo "started ${#ports[@]} dummy servers on ports ${ports[*]} (pids in logs/backends.pids)"
