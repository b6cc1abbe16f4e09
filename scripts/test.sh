#!/usr/bin/env bash
# Builds everything the black-box tests need, then runs every test of the workspace.
# Extra arguments go to cargo-nextest (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo build --release --locked -p plinth-host
# PostgreSQL and Redis on localhost: started if installed and stopped. The tests that need
# them fail with a clear message when they cannot be reached (they never pass silently).
bash scripts/services.sh || true
# Outside tools some tests use (promtool), from Debian's packages if missing.
bash scripts/tools.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
cargo nextest run --release --locked --no-fail-fast "$@"
# The contract, checked by outside tools (OpenAPI validator, schemathesis) against a live
# host on both backends: part of every full run, skipped when a test filter is given.
if [ $# -eq 0 ]; then
  bash scripts/contract.sh
fi
