#!/usr/bin/env bash
# Runs the test suite N times in a row (default 3) beside two CPU hogs (`yes > /dev/null`), as a
# busy 2-core CI machine would, and says how many runs failed. The suite must pass every time.
#
#   scripts/stress_tests.sh [N]
#
# The hogs are started here and stopped by their pids when the script ends (or is interrupted).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
hogs=()
trap 'for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done' EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
    yes >/dev/null &
    hogs+=($!)
done
failed=0
for run in $(seq 1 "$runs"); do
    started=$(date +%s)
    if scripts/test.sh >"/tmp/stress_tests.$$.$run.log" 2>&1; then
        echo "run $run of $runs: $(tail -1 "/tmp/stress_tests.$$.$run.log") in $(( $(date +%s) - started )) s"
        rm -f "/tmp/stress_tests.$$.$run.log"
    else
        failed=$((failed + 1))
        echo "run $run of $runs FAILED: $(tail -1 "/tmp/stress_tests.$$.$run.log"); log kept in /tmp/stress_tests.$$.$run.log"
        grep -E "^test .* FAILED|panicked at" "/tmp/stress_tests.$$.$run.log" | head -20
    fi
done
echo "$failed of $runs run(s) failed beside two CPU hogs"
[ "$failed" = 0 ]
