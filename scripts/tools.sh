#!/usr/bin/env bash
# Installs the outside tools the tests use, from Debian's packages, when missing:
# - promtool (package `prometheus`): tests/metrics.rs checks the metrics exposition with it;
# - chromium: scripts/contract.sh renders /docs in it, headless.
# Fails loudly when a tool cannot be installed: the tests that need it would fail anyway.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tools: installing ${missing[*]} (Debian packages)" >&2
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# No service is started here: the tests run the binaries themselves.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null 2>&1 || { echo "tools: promtool still missing after installing prometheus" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "tools: chromium still missing after installing it" >&2; exit 1; }
