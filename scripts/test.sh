#!/usr/bin/env bash
# The test command: unit tests and integration tests against the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets
