#!/usr/bin/env bash
# Instructions the host executes per request, counted by valgrind's callgrind. Unlike
# requests/s on a shared two-core machine, the count comes out the same run after run, so
# a change of a few percent shows. For each path, wrk drives the host (4 connections) for a
# warm-up, then for INSTR_SECONDS, and the count covers that stretch only: every host
# thread's user-space instructions, divided by the requests served. The kernel's share
# (syscalls, loopback TCP) is not counted.
#
#   bash scripts/instructions.sh                                   # GET /hello/x, SQLite
#   bash scripts/instructions.sh /health /hello/x /api/v1/users/me
#   INSTR_ENV="RUST_LOG=warn,plinth=info,plinth::access=off" bash scripts/instructions.sh /nope
#   INSTR_HOST=target/ab/plinth-before bash scripts/instructions.sh   # another build
#   INSTR_HEADER="Origin: https://app.example.com" ...                # one more request header
#
# The host runs with PLUGIN_INSTANCES=8 (valgrind cannot reserve the default pool's 4 TiB
# of address space) and a plugin cache warmed by a normal start first. Installs valgrind
# and wrk from Debian's packages when missing. callgrind's files stay in
# target/instructions/ (`callgrind_annotate --inclusive=yes <file>` shows where they go).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

target_dir=${CARGO_TARGET_DIR:-target}
seconds=${INSTR_SECONDS:-15}
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(/hello/x)

install_missing instructions valgrind=valgrind wrk=wrk

bash scripts/build-plugins.sh >/dev/null
host_bin=${INSTR_HOST:-}
if [ -z "$host_bin" ]; then
  cargo build --release --locked -p plinth-host 2>&1 | tail -1
  host_bin=$target_dir/release/plinth
fi
out="$target_dir/instructions"
mkdir -p "$out"
rm -f "$out"/callgrind.*
work=$(mktemp -d)
host_pid=
trap '[ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT

read -r -a extra_env <<<"${INSTR_ENV:-}"
host_env=(JWT_SECRET=instructions-secret-instructions-secret-0123 LOG_FORMAT=json
  FIRST_SUPERUSER_EMAIL=root@example.com FIRST_SUPERUSER_USERNAME=root
  FIRST_SUPERUSER_PASSWORD=root-password BIND_ADDR=127.0.0.1:0
  RATE_LIMIT_PER_MINUTE=0 AUTH_RATE_LIMIT_PER_MINUTE=0 PLUGIN_INSTANCES=8
  DATABASE_URL="sqlite://$work/instructions.db" PLUGINS_DIR="$target_dir/plugins"
  PLUGIN_CACHE_DIR="$work/plugin-cache" "${extra_env[@]}")

# A normal start first: compiling the plugins under valgrind would take minutes.
env "${host_env[@]}" "$host_bin" >"$work/warm.log" 2>&1 &
host_pid=$!
await_listening "instructions: the host" "$work/warm.log"
kill "$host_pid"; wait "$host_pid" 2>/dev/null || true

env "${host_env[@]}" valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
  "$host_bin" >"$work/host.log" 2>&1 &
host_pid=$!
await_listening "instructions: the host (under valgrind)" "$work/host.log"
addr=$started_addr

headers=()
[ -n "${INSTR_HEADER:-}" ] && headers+=(-H "$INSTR_HEADER")
printf '%-28s %10s %16s %14s\n' "path (${seconds} s, 4 connections)" requests instructions "per request"
for path in "${paths[@]}"; do
  path_headers=("${headers[@]}")
  if [[ $path == /api/v1/users* ]]; then
    path_headers+=(-H "Authorization: Bearer $(token_for "$addr")")
  fi
  wrk -t1 -c4 -d3s "${path_headers[@]}" "http://$addr$path" >/dev/null   # warm-up
  callgrind_control --zero "$host_pid" >/dev/null 2>&1
  wrk -t1 -c4 -d"${seconds}s" "${path_headers[@]}" "http://$addr$path" >"$work/wrk.out"
  before=$(ls "$out" | wc -l)
  callgrind_control --dump="$path" "$host_pid" >/dev/null 2>&1
  for _ in $(seq 1 100); do [ "$(ls "$out" | wc -l)" -gt "$before" ] && break; sleep 0.1; done
  dump=$(ls -t "$out"/callgrind.* | head -1)
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  instructions=$(awk '/^summary:/ {print $2; exit}' "$dump")
  [ "${requests:-0}" -gt 0 ] || { echo "instructions: no request to $path was served" >&2; exit 1; }
  printf '%-28s %10d %16d %14d   (%s)\n' "$path" "$requests" "$instructions" \
    $((instructions / requests)) "$dump"
done
