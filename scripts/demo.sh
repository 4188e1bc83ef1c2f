#!/usr/bin/env bash
# The demo (README, first command): the programs in one `cargo build --release`, with
# cargo's progress on the terminal, then the demo, which finds them next to itself.
# It runs on a real Kubernetes control plane when the test bed is built (by
# scripts/test.sh, or scripts/build-kube.sh, build-flux.sh and Garage), else in the
# cluster simulator; it says which. Arguments go to the demo (`--work-dir DIR`;
# `--simulator` to choose the simulator all the same).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked \
  --bin stowage-demo --bin stowage-mover --bin stowage-scheduler --bin stowage-prewarm --bin stowage-gc
demo="${CARGO_TARGET_DIR:-target}/release/stowage-demo"

garage=""
command -v garage >/dev/null && garage="$(command -v garage)"
[ -z "$garage" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ] && garage="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
if [[ " $* " != *" --simulator "* ]] &&
  kube="$(bash scripts/build-kube.sh --cached)" &&
  flux="$(bash scripts/build-flux.sh --cached)" && [ -n "$garage" ]; then
  echo "the test bed is built: the demo runs on a real Kubernetes control plane ($kube)"
  STOWAGE_KUBE_BIN="$kube" STOWAGE_KUBE_CRDS="$(bash scripts/build-kube.sh --crds)" \
    STOWAGE_FLUX_BIN="$flux" GARAGE_BIN="$garage" exec "$demo" --control-plane "$@"
fi
if [[ " $* " != *" --simulator "* ]]; then
  echo "no control plane built yet (bash scripts/test.sh builds it once, about 15 minutes): the demo runs in the cluster simulator"
fi
exec "$demo" "$@"
