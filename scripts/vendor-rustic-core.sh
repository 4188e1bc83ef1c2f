#!/usr/bin/env bash
# vendor/rustic_core is rustic_core 0.13.0 from crates.io plus the patch series in
# vendor/patches (applied in name order). This script rebuilds it from the published
# crate and the series:
#
#   bash scripts/vendor-rustic-core.sh            # check: the series reproduces the committed copy
#   bash scripts/vendor-rustic-core.sh --tests    # and run rustic_core's own unit tests on it
#   bash scripts/vendor-rustic-core.sh --write    # replace vendor/rustic_core with what the series gives
#
# To change a patch: edit vendor/rustic_core, then regenerate the patch it belongs to
# (diff -u against the published file, as in vendor/README.md), and run the check.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
VERSION=0.13.0
mode="${1:-check}"
case "$mode" in check | --check | --tests | --write) ;; *)
  echo "usage: $0 [--check | --tests | --write]" >&2
  exit 2
  ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The published crate, through cargo (the registry it already uses; no other download).
mkdir -p "$work/fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nrustic_core = "=%s"\n' \
  "$VERSION" >"$work/fetch/Cargo.toml"
echo 'fn main() {}' >"$work/fetch/src/main.rs"
src="$(cargo metadata --quiet --format-version 1 --manifest-path "$work/fetch/Cargo.toml" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="rustic_core"))')"
src="$(dirname "$src")"
cp -a "$src" "$work/rustic_core"
chmod -R u+w "$work/rustic_core"
for p in "$root"/vendor/patches/*.patch; do
  if ! patch -s -p1 -d "$work/rustic_core" --no-backup-if-mismatch <"$p"; then
    echo "vendor/patches/$(basename "$p") does not apply to rustic_core $VERSION" >&2
    exit 1
  fi
done
# The crate's own packaging files are not part of the copy.
rm -f "$work/rustic_core/.cargo-ok" "$work/rustic_core/.cargo_vcs_info.json" "$work/rustic_core/Cargo.toml.orig"

if [ "$mode" = "--write" ]; then
  rm -rf "$root/vendor/rustic_core"
  cp -a "$work/rustic_core" "$root/vendor/rustic_core"
  rm -f "$root/vendor/rustic_core/Cargo.lock"
  echo "vendor/rustic_core rebuilt from rustic_core $VERSION and $(ls "$root"/vendor/patches/*.patch | wc -l) patches"
  exit 0
fi

if ! diff -r -x Cargo.lock "$work/rustic_core" "$root/vendor/rustic_core" >"$work/diff"; then
  echo "vendor/rustic_core differs from rustic_core $VERSION + vendor/patches:" >&2
  head -50 "$work/diff" >&2
  echo "(a change to vendor/rustic_core belongs in a patch of vendor/patches)" >&2
  exit 1
fi
echo "vendor/rustic_core = rustic_core $VERSION + $(ls "$root"/vendor/patches/*.patch | wc -l) patches of vendor/patches"

if [ "$mode" = "--tests" ]; then
  # Upstream's unit tests (the chunker's recorded chunk hashes among them), with the
  # crate's own lock file and a target directory of their own.
  target="${STOWAGE_VENDOR_TARGET:-$root/target/vendor-rustic-core}"
  echo "rustic_core's unit tests on the patched copy (target: $target)"
  CARGO_TARGET_DIR="$target" cargo test --quiet --locked --lib \
    --manifest-path "$work/rustic_core/Cargo.toml"
fi
