#!/usr/bin/env bash
# Builds the test bed's Kubernetes control plane (testbed/kube: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl in one binary, from the Go module
# proxy) into a cache directory keyed by the hash of its sources and go.sum, and prints
# the binary's path. Cold: 5 to 15 minutes on 2 cores; warm: well under a second.
# It also fetches the third-party CRDs of testbed/kube/crds.txt from their Go modules.
#
#   bin="$(bash scripts/build-kube.sh)"          # .../stowage/kube-<hash>/stowage-kube
#   "$bin" kubectl version --client              # or the symlinks beside it: etcd, kubectl, ...
#   crds="$(bash scripts/build-kube.sh --crds)"  # .../stowage/crds-<hash>/
#   bash scripts/build-kube.sh --cached          # the path if built, else exit 1
set -euo pipefail
cd "$(dirname "$0")/../testbed/kube"

NAMES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
base="${STOWAGE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stowage}"

need_go() {
  if ! command -v go >/dev/null; then
    echo "go is not installed: the control plane of the end-to-end tests is built from Go modules (Go >= 1.26)" >&2
    exit 1
  fi
}

# The CRDs: a directory of YAML files, keyed by crds.txt.
crds="$base/crds-$(sha256sum crds.txt | cut -c1-16)"
hash="$(cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
cache="$base/kube-$hash"
bin="$cache/stowage-kube"
# --cached: the binary's path if it and the CRDs are built, else exit 1 (builds nothing).
if [ "${1:-}" = "--cached" ]; then
  [ -x "$bin" ] && [ -d "$crds" ] || exit 1
  echo "$bin"
  exit 0
fi
if ! [ -d "$crds" ]; then
  need_go
  mkdir -p "$base"
  tmp="$(mktemp -d "$crds.tmp.XXXXXX")"
  while read -r mod path; do
    case "$mod" in '' | '#'*) continue ;; esac
    dir="$(go mod download -json "$mod" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -f "$dir/$path" ] || { echo "$mod has no $path" >&2; rm -rf "$tmp"; exit 1; }
    cp "$dir/$path" "$tmp/"
  done <crds.txt
  mv -T "$tmp" "$crds" 2>/dev/null || rm -rf "$tmp"
fi
if [ "${1:-}" = "--crds" ]; then
  echo "$crds"
  exit 0
fi

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

need_go
version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(echo "$version" | cut -d. -f2)"
echo "building the Kubernetes control plane $version (testbed/kube) into $cache: 5 to 15 minutes on 2 cores, once per go.sum" >&2
mkdir -p "$base"
tmp="$(mktemp -d "$cache.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# What `kubectl version` and /version report (the binary version also sets the API
# server's compatibility version).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" \
  go build -trimpath -ldflags="$ldflags" -o "$tmp/stowage-kube" .
for n in "${NAMES[@]}"; do ln -s stowage-kube "$tmp/$n"; done
# Another build may have finished first: either one is the same binary.
mv -T "$tmp" "$cache" 2>/dev/null || true
echo "$bin"
