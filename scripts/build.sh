#!/usr/bin/env bash
# Builds in release and links ./proxy_server, ./dummy_server and ./simulate_client at the
# repository root (the links are git-ignored).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cargo build --release --bins
for bin in proxy_server dummy_server simulate_client; do
    ln -sf "target/release/$bin" "$bin"
done
echo "built: ./proxy_server ./dummy_server ./simulate_client"
