#!/usr/bin/env bash
# The benchmark, one command on a fresh machine: installs the peers it
# compares against (Debian's mosquitto, nats-server and nginx, not started
# as services), builds the release binaries and runs every system in one run.
# Prints the Markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
if ! [ -x /usr/sbin/mosquitto ] || ! [ -x /usr/sbin/nats-server ] || ! [ -x /usr/sbin/nginx ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto nats-server nginx >/dev/null
    # The packages may start system services; the bench runs its own instances.
    $SUDO service mosquitto stop >/dev/null 2>&1 || true
    $SUDO service nginx stop >/dev/null 2>&1 || true
fi
cargo build --release --workspace --bins -q
RSNET_BIN_DIR=target/release exec target/release/bench "$@"
