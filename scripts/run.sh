#!/usr/bin/env bash
# Builds the host and the plugins, then runs the server on the embedded defaults.
# Any environment variable from docs/API.md's configuration table is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo build --release --locked -p plinth-host
exec target/release/plinth "$@"
