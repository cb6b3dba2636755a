#!/usr/bin/env bash
# Builds every rsnet binary (release) and runs rsnet-demo: a whole local tree.
# Arguments go to rsnet-demo (e.g. --once, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins -q
exec target/release/rsnet-demo "$@"
