#!/usr/bin/env bash
# CronJob passes at scale: the real stowage-scheduler, stowage-gc and stowage-prewarm
# over 100 PVCs / 10 namespaces and 1,000 PVCs / 100 namespaces (fake Kubernetes API)
# with as many repositories (Garage), timed with GNU time. Prints markdown tables
# (docs/BENCHMARKS.md, "CronJob passes at scale"); each binary's last log is kept in
# target/scale-bench-cache/. The first run makes a key per repository (scrypt, about
# 8 minutes for 1,100 on 2 cores) and keeps them there.
# Usage: bash scripts/bench-scale.sh [--sizes 100,1000] [--only scheduler,populator,rebuild,index,gc]
# (--only rebuild-run: whole 50-second prewarm runs after a rebuild; not in the default set)
# STOWAGE_BENCH_BINS=DIR measures other builds of the binaries (before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-tools.sh
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install time" >&2; exit 2; }
cargo build --release --locked --bins -p stowage-scheduler -p stowage-gc -p stowage-prewarm -p stowage-mover

# Garage does not set TCP_NODELAY: on loopback each GET then waits for a delayed ACK
# (40 ms), which would measure that artefact instead of the programs (as in
# scripts/bench.sh). Enable quickack on the loopback route for the run and restore
# the route afterwards; the bench prints the state it ran with.
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
  route="$(ip route show table local | grep '^local 127.0.0.1 ' | head -1 || true)"
  if [ -n "$route" ] && ! grep -q quickack <<<"$route"; then
    # shellcheck disable=SC2086
    ip route change $route table local quickack 1
    # shellcheck disable=SC2064,SC2086
    trap "ip route change $route table local" EXIT
  fi
fi
cargo bench --locked -p stowage-testkit --bench scale -- "$@"
