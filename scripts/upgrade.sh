#!/usr/bin/env bash
# Zero-downtime binary upgrade: start NEW_BINARY with --takeover on the running proxy's
# control socket. The new process receives the listening socket(s) over the unix socket
# (SCM_RIGHTS), starts accepting, and tells the old one, which stops accepting, drains within
# drain_timeout_ms, prints its summary and exits 0. No connection is refused or reset.
#
# Usage: scripts/upgrade.sh CONFIG [NEW_BINARY]
#   CONFIG      the running proxy's config.ini; it must set [proxy] control_socket = PATH
#   NEW_BINARY  the proxy_server to start (default: target/release/proxy_server)
# The new process runs in the background with its output in logs/upgrade-<time>.log; its pid is
# printed. Run it again with the same CONFIG for the next upgrade.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

config=${1:?usage: scripts/upgrade.sh CONFIG [NEW_BINARY]}
binary=${2:-$ROOT/target/release/proxy_server}
[ -x "$binary" ] || { echo "upgrade: $binary is not an executable (cargo build --release)" >&2; exit 2; }
socket=$(sed -n 's/^[[:space:]]*control_socket[[:space:]]*=[[:space:]]*//p' "$config" | tail -n 1)
[ -n "$socket" ] || { echo "upgrade: $config sets no [proxy] control_socket" >&2; exit 2; }
[ -S "$socket" ] || { echo "upgrade: no proxy serves $socket (is the old one running?)" >&2; exit 2; }

# Check the new binary accepts the config before anything changes hands.
"$binary" --config "$config" --check >/dev/null

mkdir -p "$ROOT/logs"
log="$ROOT/logs/upgrade-$(date +%Y%m%dT%H%M%S).log"
nohup "$binary" --config "$config" --takeover "$socket" >"$log" 2>&1 &
new=$!
# Wait (at most 30 s) until the new process says it accepts; the old one then drains and exits.
for _ in $(seq 300); do
    if grep -q "takeover: accepting" "$log"; then
        echo "upgrade: new proxy (pid $new) accepts; the old one drains and exits. Log: $log"
        exit 0
    fi
    if ! kill -0 "$new" 2>/dev/null; then
        echo "upgrade: the new proxy exited; the old one still serves. Its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "upgrade: the new proxy (pid $new) did not report accepting within 30 s; see $log" >&2
exit 1
