#!/usr/bin/env bash
# The test command: unit tests next to the code, and integration tests that run the real
# binaries (tests/proxy/). Ends with one line totalling every test binary's results.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# What the tests drive besides our binaries, installed when missing (Debian packages), so this
# one command is all a fresh machine needs: python3 (the layer check), curl (HTTP as a user
# sends it), chromium (the dashboard in a browser), tmux (the classic terminals), haproxy (PROXY
# protocol interop), nginx (a real backend), openssl (scripts/make_cert.sh), goaccess and jq
# (they read the access logs).
need=()
for tool in python3 curl chromium tmux haproxy nginx openssl goaccess jq; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} for the tests"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}") >/dev/null \
        || echo "could not install ${need[*]}: the tests that need them will say so" >&2
fi
scripts/check_layers.py || exit 1
# Profile ci: optimized as shipped (memory and scale tests measure the real proxy), with
# debug assertions and overflow checks on.
cargo test --profile ci --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
