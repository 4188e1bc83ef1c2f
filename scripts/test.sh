#!/usr/bin/env bash
# The whole test suite: tools, formatting, lints, every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, for the CI split (printed at the end).
times=()
step() { times+=("$1: $(( SECONDS - t0 )) s"); t0=$SECONDS; }
t0=$SECONDS
bash scripts/install-test-tools.sh
step "tools (restic, Garage, control plane, Flux renderer, manifest tools)"
# The tests on a real control plane (tests/tests/kube/) run these; warm, the scripts
# only print the paths.
STOWAGE_KUBE_BIN="$(bash scripts/build-kube.sh)"
STOWAGE_KUBE_CRDS="$(bash scripts/build-kube.sh --crds)"
STOWAGE_FLUX_BIN="$(bash scripts/build-flux.sh)"
export STOWAGE_KUBE_BIN STOWAGE_KUBE_CRDS STOWAGE_FLUX_BIN
cargo fmt --all --check
bash scripts/check-manifests.sh
step "formatting and manifest checks"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "clippy (builds the workspace for checking)"
# vendor/rustic_core is the published crate plus vendor/patches, and upstream's unit tests
# pass on it.
bash scripts/vendor-rustic-core.sh --tests
step "vendor/rustic_core: reproduced, upstream's unit tests"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
step "cargo test (build and run)"
printf '%s\n' "${times[@]}"
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
