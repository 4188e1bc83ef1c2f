#!/usr/bin/env bash
# The demo (README, first command): the four programs in one `cargo build --release`,
# with cargo's progress on the terminal, then the demo, which finds them next to itself.
# Arguments go to the demo (`--work-dir DIR`: where its repositories go).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked \
  --bin stowage-demo --bin stowage-mover --bin stowage-scheduler --bin stowage-prewarm
exec "${CARGO_TARGET_DIR:-target}/release/stowage-demo" "$@"
