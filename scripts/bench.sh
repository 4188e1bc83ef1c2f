#!/usr/bin/env bash
# Benchmark: stowage-mover vs restic on the same data and S3 server, in one run.
# Usage: bash scripts/bench.sh [--size 2GiB]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-tools.sh
cargo build --release --locked -p stowage-mover -p stowage-testkit

# Garage does not set TCP_NODELAY: on loopback each GET then waits for a delayed ACK
# (40 ms), which would measure that artefact instead of either tool. Enable quickack
# on the loopback route for the run and restore the route afterwards.
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
  route="$(ip route show table local | grep '^local 127.0.0.1 ' | head -1 || true)"
  if [ -n "$route" ] && ! grep -q quickack <<<"$route"; then
    # shellcheck disable=SC2086
    ip route change $route table local quickack 1
    # shellcheck disable=SC2064,SC2086
    trap "ip route change $route table local" EXIT
  fi
fi
target/release/stowage-bench "$@"
