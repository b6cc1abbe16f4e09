#!/usr/bin/env bash
# Makes sure this machine can build Plinth: the pinned toolchain and the wasm32-wasip2
# target. Rustup's auto-install may be off, so rust-toolchain.toml alone is not enough.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rustup >/dev/null || { echo "setup: rustup is required (https://rustup.rs)" >&2; exit 1; }
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal -c rustfmt,clippy
rustup target add wasm32-wasip2 --toolchain "$toolchain" >/dev/null
