#!/usr/bin/env bash
# The whole test suite: tools, formatting, lints, every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-tools.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
