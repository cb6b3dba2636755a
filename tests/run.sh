#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks the toolchain,
# builds the binaries the end-to-end tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace --bins -q
# The admin page's browser test needs Chromium (installed here when missing).
bash tests/browser-setup.sh
cargo test --workspace -q
