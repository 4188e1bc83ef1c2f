#!/usr/bin/env bash
# Builds the test bed's Flux renderer (testbed/flux: kustomize-controller's build and
# postBuild.substitute, with Flux's own github.com/fluxcd/pkg/kustomize and
# github.com/fluxcd/pkg/ssa from the Go module proxy) into a cache directory keyed by
# the hash of its sources and go.sum, and prints the binary's path. Cold: about 2
# minutes on 2 cores; warm: well under a second.
#
#   bin="$(bash scripts/build-flux.sh)"     # .../stowage/flux-<hash>/stowage-flux
#   "$bin" build --root . --kustomization ks.yaml
#   bash scripts/build-flux.sh --cached     # the path if built, else exit 1
set -euo pipefail
cd "$(dirname "$0")/../testbed/flux"

base="${STOWAGE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage}"
hash="$(cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
cache="$base/flux-$hash"
bin="$cache/stowage-flux"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
# --cached: the path if built, else exit 1 (builds nothing).
[ "${1:-}" = "--cached" ] && exit 1

if ! command -v go >/dev/null; then
  echo "go is not installed: the Flux renderer of the end-to-end tests is built from Go modules (Go >= 1.26)" >&2
  exit 1
fi
version="$(go list -m -f '{{.Version}}' github.com/fluxcd/pkg/kustomize)"
echo "building the Flux renderer (github.com/fluxcd/pkg/kustomize $version, testbed/flux) into $cache: about 2 minutes on 2 cores, once per go.sum" >&2
mkdir -p "$base"
tmp="$(mktemp -d "$cache.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" \
  go build -trimpath -ldflags="-s -w" -o "$tmp/stowage-flux" .
# Another build may have finished first: either one is the same binary.
mv -T "$tmp" "$cache" 2>/dev/null || true
echo "$bin"
