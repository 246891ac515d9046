#!/usr/bin/env bash
# The test command: unit tests next to the code, and integration tests that run the real
# binaries (tests/proxy/). Ends with one line totalling every test binary's results.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
scripts/check_layers.py || exit 1
# Profile ci: optimized as shipped (memory and scale tests measure the real proxy), with
# debug assertions and overflow checks on.
cargo test --profile ci --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
