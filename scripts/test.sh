#!/usr/bin/env bash
# The whole test suite: tools, formatting, lints, every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-tools.sh
cargo fmt --all --check
bash scripts/check-manifests.sh
cargo clippy --workspace --all-targets --locked -- -D warnings

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
