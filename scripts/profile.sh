#!/usr/bin/env bash
# Where the host's time goes under load: `perf record -g` of a running plinth while wrk
# drives one path, then the top symbols per thread.
#
#   bash scripts/profile.sh                                    # GET /hello/x, SQLite
#   PROFILE_PATH=/api/v1/users/me bash scripts/profile.sh      # sent with a root token
#   PROFILE_SECONDS=15 PROFILE_ENV="METRICS_ADDR=127.0.0.1:0" bash scripts/profile.sh
#
# Installs linux-perf and wrk from Debian's packages when missing. Keeps the recording in
# target/profile/perf.data (`perf report -i target/profile/perf.data` to explore it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
path=${PROFILE_PATH:-/hello/x}
seconds=${PROFILE_SECONDS:-8}
target_dir=${CARGO_TARGET_DIR:-target}

install_missing profile perf=linux-perf wrk=wrk

bash scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p plinth-host 2>&1 | tail -1
work=$(mktemp -d)
out="$target_dir/profile"
mkdir -p "$out"
host_pid=
trap '[ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT

# shellcheck disable=SC2086 # PROFILE_ENV is a list of NAME=value words
env JWT_SECRET=profile-secret-profile-secret-profile-0123 LOG_FORMAT=json \
  FIRST_SUPERUSER_EMAIL=root@example.com FIRST_SUPERUSER_USERNAME=root \
  FIRST_SUPERUSER_PASSWORD=root-password BIND_ADDR=127.0.0.1:0 \
  RATE_LIMIT_PER_MINUTE=0 AUTH_RATE_LIMIT_PER_MINUTE=0 \
  DATABASE_URL="sqlite://$work/profile.db" PLUGINS_DIR="$target_dir/plugins" \
  ${PROFILE_ENV:-} "$target_dir/release/plinth" >"$work/host.log" 2>&1 &
host_pid=$!
await_listening "profile: the host" "$work/host.log"
addr=$started_addr

headers=()
if [[ $path == /api/v1/users* ]]; then
  token=$(token_for "$addr")
  headers=(-H "Authorization: Bearer $token")
fi

wrk -t2 -c64 -d2s "${headers[@]}" "http://$addr$path" >/dev/null   # warm-up
wrk -t2 -c64 -d"$((seconds + 3))s" "${headers[@]}" "http://$addr$path" >"$work/wrk.out" &
wrk_pid=$!
sleep 1
perf record -F 499 -g -p "$host_pid" -o "$out/perf.data" -- sleep "$seconds" >/dev/null 2>&1
wait "$wrk_pid"
echo "GET $path: $(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out") requests/s while recording"
echo
echo "Share of samples by thread and library:"
perf report -i "$out/perf.data" --no-children --sort comm,dso -g none --stdio 2>/dev/null |
  grep -vE '^(#|$)' | head -12
echo
echo "Top symbols on the serving workers (tokio-rt-worker):"
perf report -i "$out/perf.data" --no-children --comm tokio-rt-worker --sort dso,sym -g none --stdio 2>/dev/null |
  grep -vE '^(#|$)' | head -30
echo
echo "recording: $out/perf.data"
