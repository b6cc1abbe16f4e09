#!/usr/bin/env bash
# Builds everything the black-box tests need, then runs every test of the workspace.
# Extra arguments go to cargo-nextest (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo build --release --locked -p plinth-host
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
cargo nextest run --release --locked --no-fail-fast "$@"
