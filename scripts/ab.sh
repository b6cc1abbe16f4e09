#!/usr/bin/env bash
# A/B of two host binaries side by side: both run at once, on the same plugins and backend,
# and wrk drives each in turn (the order alternating every round), so both see the same
# machine — on a shared two-core box, runs minutes apart differ by more than most changes.
#
#   cp target/release/plinth target/ab/plinth-before      # keep the binary to compare against
#   ... change, cargo build --release -p plinth-host ...
#   AB_BASE=target/ab/plinth-before bash scripts/ab.sh                  # /hello/x and users/me
#   AB_BASE=... AB_ROUNDS=7 AB_SECONDS=5 bash scripts/ab.sh /health /hello/x
#   AB_BASE=... AB_BACKEND=postgres bash scripts/ab.sh /api/v1/users/me  # PostgreSQL + Redis
#   AB_NEW=target/ab/plinth-other ...                                    # instead of the build
#   AB_ENV="PLUGINS_DIR=/some/plugins METRICS_ADDR=127.0.0.1:0" ...       # more settings for both
#   AB_NEW=target/release/plinth AB_NEW_ENV="METRICS_ADDR=127.0.0.1:0" ... # one binary, a setting's cost
#   AB_NON_2XX=ok AB_BASE=... bash scripts/ab.sh /nope                    # host-only path, 404 by design
#   AB_HEADER="Origin: https://app.example.com" ...                      # one more request header
#
# Paths under /api/v1/users are sent with a root access token from each host. Prints, per
# path, both hosts' requests/s and p99 for every round, then the median of the per-round
# ratios new ÷ base (the figure to quote) and their spread.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

target_dir=${CARGO_TARGET_DIR:-target}
base=${AB_BASE:?AB_BASE=<the binary to compare against> (see the header of this script)}
new=${AB_NEW:-$target_dir/release/plinth}
rounds=${AB_ROUNDS:-5}
seconds=${AB_SECONDS:-5}
connections=${AB_CONNECTIONS:-64}
backend=${AB_BACKEND:-sqlite}
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(/hello/x /api/v1/users/me)
[ -x "$base" ] || { echo "ab: $base is not an executable" >&2; exit 1; }

install_missing ab wrk=wrk
bash scripts/build-plugins.sh >/dev/null
[ -n "${AB_NEW:-}" ] || cargo build --release --locked -p plinth-host 2>&1 | tail -1

work=$(mktemp -d)
pids=()
databases=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for db in "${databases[@]}"; do
    psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

common_env=(JWT_SECRET=ab-secret-ab-secret-ab-secret-ab-secret-0123 LOG_FORMAT=json
  FIRST_SUPERUSER_EMAIL=root@example.com FIRST_SUPERUSER_USERNAME=root
  FIRST_SUPERUSER_PASSWORD=root-password BIND_ADDR=127.0.0.1:0
  RATE_LIMIT_PER_MINUTE=0 AUTH_RATE_LIMIT_PER_MINUTE=0 PLUGINS_DIR="$target_dir/plugins")
# ${AB_ENV}: more NAME=value words for both hosts (e.g. METRICS_ADDR=127.0.0.1:0).
read -r -a extra_env <<<"${AB_ENV:-}"
# ${AB_BASE_ENV} / ${AB_NEW_ENV}: settings for one host only (what a setting costs).
read -r -a base_env <<<"${AB_BASE_ENV:-}"
read -r -a new_env <<<"${AB_NEW_ENV:-}"

start() { # <name> <binary> [NAME=value...]: sets $started_addr
  local name=$1 binary=$2 backend_env=()
  shift 2
  if [ "$backend" = postgres ]; then
    bash scripts/services.sh
    local db="plinth_ab_${name}_$$"
    psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $db"
    databases+=("$db")
    backend_env=(DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
      REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="plinth-ab-$name-$$")
  else
    backend_env=(DATABASE_URL="sqlite://$work/$name.db")
  fi
  env "${common_env[@]}" "${backend_env[@]}" "${extra_env[@]}" "$@" "$binary" >"$work/$name.log" 2>&1 &
  pids+=($!)
  await_listening "ab: $name" "$work/$name.log"
}
run_wrk() { # <addr> <path> <token> <seconds>: "rps p99_ms"
  local headers=()
  [[ $2 == /api/v1/users* ]] && headers=(-H "Authorization: Bearer $3")
  [ -n "${AB_HEADER:-}" ] && headers+=(-H "$AB_HEADER")
  local out
  out=$(wrk -t2 -c"$connections" -d"$4s" --latency "${headers[@]}" "http://$1$2")
  if grep -q 'Non-2xx' <<<"$out" && [ -z "${AB_NON_2XX:-}" ]; then
    echo "ab: non-2xx answers from $1$2 (AB_NON_2XX=ok when they are the point, e.g. /nope):" >&2
    echo "$out" >&2; exit 1
  fi
  echo "$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out") $(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)"
}

start base "$base" "${base_env[@]}"; base_addr=$started_addr
start new "$new" "${new_env[@]}"; new_addr=$started_addr
base_token= new_token=
if printf '%s\n' "${paths[@]}" | grep -q '^/api/v1/users'; then
  base_token=$(token_for "$base_addr")
  new_token=$(token_for "$new_addr")
fi

echo "A/B: base $base ${AB_BASE_ENV:-}, new $new ${AB_NEW_ENV:-}; $backend; wrk -t2 -c$connections, ${seconds}s per run, $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
for path in "${paths[@]}"; do
  run_wrk "$base_addr" "$path" "$base_token" 1 >/dev/null   # warm-up
  run_wrk "$new_addr" "$path" "$new_token" 1 >/dev/null
  ratios=()
  echo
  echo "GET $path"
  printf '  %-6s %12s %9s %12s %9s %8s\n' round "base req/s" "p99 ms" "new req/s" "p99 ms" "new÷base"
  for round in $(seq 1 "$rounds"); do
    if (( round % 2 )); then
      read -r base_rps base_p99 < <(run_wrk "$base_addr" "$path" "$base_token" "$seconds")
      read -r new_rps new_p99 < <(run_wrk "$new_addr" "$path" "$new_token" "$seconds")
    else
      read -r new_rps new_p99 < <(run_wrk "$new_addr" "$path" "$new_token" "$seconds")
      read -r base_rps base_p99 < <(run_wrk "$base_addr" "$path" "$base_token" "$seconds")
    fi
    ratio=$(awk -v a="$new_rps" -v b="$base_rps" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    ratios+=("$ratio")
    printf '  %-6s %12s %9s %12s %9s %8s\n' "$round" "$base_rps" "$base_p99" "$new_rps" "$new_p99" "$ratio"
  done
  printf '%s\n' "${ratios[@]}" | sort -n | awk -v path="$path" '
    { v[NR] = $1 }
    END { printf "  new ÷ base, median of %d rounds: %.3f (spread %.3f–%.3f)\n", NR, v[int((NR + 1) / 2)], v[1], v[NR] }'
done
