#!/usr/bin/env bash
# Benchmark: stowage-mover vs restic on the same data and S3 server, in one run.
# Usage: bash scripts/bench.sh [--size 2GiB] [--changes 1,5] [--memory-growth]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-tools.sh
cargo build --release --locked -p stowage-mover -p stowage-testkit

cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT

# Garage does not set TCP_NODELAY: on loopback each GET then waits for a delayed ACK
# (40 ms), which would measure that artefact instead of either tool. Enable quickack
# on the loopback route for the run and restore the route afterwards.
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
  route="$(ip route show table local | grep '^local 127.0.0.1 ' | head -1 || true)"
  if [ -n "$route" ] && ! grep -q quickack <<<"$route"; then
    # shellcheck disable=SC2086
    ip route change $route table local quickack 1
    cleanup+=("ip route change $route table local")
  fi
fi

# Work on a new ext4 filesystem (a sparse image on a loop device) where possible: on a
# disk from which a previous run just deleted its half a million files, ext4 spends
# most of its time finding free inodes (it avoids recently deleted ones), which slows
# every file creation, the S3 server's included, by an amount that depends on the
# run's history. TMPDIR points the data set, the S3 server and the restores there;
# discard frees on the disk what is deleted in the image.
size=2GiB
prev=""
for a in "$@"; do
  if [ "$prev" = "--size" ]; then size="$a"; fi
  prev="$a"
done
gib="$(awk -v s="$size" 'BEGIN { v = s + 0; if (s ~ /[Mm]i[Bb]$/) v = v / 1024; printf "%d", v * 5 + 6 }')"
fs="$PWD/target/bench-fs"
if [ "$(id -u)" -eq 0 ] && command -v mkfs.ext4 >/dev/null && mkdir -p "$fs" &&
  truncate -s "${gib}G" "$fs.img" && mkfs.ext4 -q -F "$fs.img" &&
  mount -o loop,discard "$fs.img" "$fs"; then
  # Lazily: the S3 server may still be deleting its data when the bench exits.
  cleanup=("umount -l '$fs'; rm -f '$fs.img'" "${cleanup[@]}")
  export TMPDIR="$fs"
  echo "working on a new ext4 filesystem of ${gib} GiB (sparse image) at $fs" >&2
else
  rm -f "$fs.img"
  echo "note: no new filesystem for the run (needs root and loop devices); working in ${TMPDIR:-/tmp}" >&2
fi
target/release/stowage-bench "$@"
