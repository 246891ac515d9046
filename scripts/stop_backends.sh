#!/usr/bin/env bash
# Stops exactly the dummy servers that start_backends.sh started, by their saved pids.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ -f "$PIDS" ] || { echo "no backends recorded in $PIDS"; exit 0; }
stopped=0
while read -r pid; do
    if is_ours "$pid" dummy_server; then
        kill "$pid" && stopped=$((stopped + 1))
    fi
done <"$PIDS"
rm -f "$PIDS"
echo "stopped $stopped dummy server(s)"
