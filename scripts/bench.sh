#!/usr/bin/env bash
# The benchmark: loads each target with wrk (installed from Debian's packages if missing)
# and prints requests/s and p50/p99 latency, with ratios.
#
#   bash scripts/bench.sh            # 10 s per target
#   BENCH_SECONDS=30 BENCH_CONNECTIONS=128 bash scripts/bench.sh
#   BENCH_SECTIONS="sandbox startup" bash scripts/bench.sh   # some of: throughput sandbox reload startup idle
#   BENCH_RUNS=3 bash scripts/bench.sh       # each target 3 times: median, and the spread
#   BENCH_COMPARE=bench-baseline.json bash scripts/bench.sh   # and the change against a saved result
#   BENCH_HOST=target/ab/plinth-before bash scripts/bench.sh  # another host binary (not built here)
#
# Every run writes its figures as JSON to $BENCH_OUT (default target/bench/latest.json, under
# $CARGO_TARGET_DIR when set, where the binaries and plugins are taken from too); keep one as
# a baseline (cp target/bench/latest.json bench-baseline.json) to compare later runs.
#
# Targets: a bare hyper hello-world built here (the machine's ceiling), GET /health (host
# only), GET /hello/x (through a plugin instance), and GET /api/v1/users/me (JWT verify +
# plugin + database read) on SQLite and on PostgreSQL + Redis, at 64 and 1,024 connections
# and while a login flood runs. PostgreSQL and Redis are the local services (a scratch
# database is created and dropped). Client and servers share the machine,
# as they do on a 2-core box; compare ratios rather than absolute figures across machines.
#
# Then the sandbox and reload figures: p99 of GET /hello/x while hostile plugins (endless
# loop, memory bomb, trap, huge body) are called next to it, against its quiet p99; reload
# latency (file change to the first request served by the new version, and the admin
# call); start-up to serving all plugins with a cold and a warm compilation cache.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

seconds=${BENCH_SECONDS:-10}
connections=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
runs=${BENCH_RUNS:-1}
target_dir=${CARGO_TARGET_DIR:-target}
out_json=${BENCH_OUT:-$target_dir/bench/latest.json}
compare=${BENCH_COMPARE:-}
host_bin=${BENCH_HOST:-$target_dir/release/plinth}
sections=" ${BENCH_SECTIONS:-throughput sandbox reload startup idle} "
wants() { [[ $sections == *" $1 "* ]]; }

install_missing bench wrk=wrk

bash scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p plinth-host -p plinth-bench-hyper-hello 2>&1 | tail -1

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start <name> <command...>: runs a server on port 0 (in this shell, so cleanup can stop
# it), waits for its "listening" line and sets $started_addr.
start() {
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  await_listening "bench: $name" "$work/$name.log"
}

# measure <label> <url> [wrk args...]: runs wrk $runs times and keeps, for the summary,
# "label|rps|p50_ms|p99_ms|non-2xx|rps spread|p99 spread": the run with the median
# requests/s, the lowest and highest requests/s of all runs, and their lowest and highest p99.
results=()
measure() {
  local label=$1 url=$2 conns=${CONNS:-$connections} run samples=()
  shift 2
  wrk -t"$threads" -c"$conns" -d1s "$@" "$url" >/dev/null 2>&1 || true   # warm-up
  for run in $(seq 1 "$runs"); do
    samples+=("$(sample "$conns" "$url" "$@")")
  done
  record "$label" "${samples[@]}"
}
# measure_pair <label A> <url A> <header A> <label B> <url B> <header B>: A and B take
# turns run by run (the order alternating), so their ratio sees the same machine; runs
# minutes apart differ by more than a setting costs. A header may be "" (none).
measure_pair() {
  local run samples_a=() samples_b=() a=() b=()
  [ -n "$3" ] && a=(-H "$3")
  [ -n "$6" ] && b=(-H "$6")
  wrk -t"$threads" -c"$connections" -d1s "${a[@]}" "$2" >/dev/null 2>&1 || true   # warm-up
  wrk -t"$threads" -c"$connections" -d1s "${b[@]}" "$5" >/dev/null 2>&1 || true
  for run in $(seq 1 "$runs"); do
    if (( run % 2 )); then
      samples_a+=("$(sample "$connections" "$2" "${a[@]}")")
      samples_b+=("$(sample "$connections" "$5" "${b[@]}")")
    else
      samples_b+=("$(sample "$connections" "$5" "${b[@]}")")
      samples_a+=("$(sample "$connections" "$2" "${a[@]}")")
    fi
  done
  record "$1" "${samples_a[@]}"
  record "$4" "${samples_b[@]}"
}
# sample <connections> <url> [wrk args]: one run, "rps|p50|p99|errors".
sample() {
  local conns=$1 url=$2 out rps p50 p99 errors
  shift 2
  out=$(wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency "$@" "$url")
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5} /Socket errors:/ {print "socket:" $0}' <<<"$out" | tr '\n' ' ')
  echo "$rps|$p50|$p99|${errors:-0}"
}
# record <label> <sample>...: the median of the samples, and their spread.
record() {
  local label=$1 samples=("${@:2}") median spread p99_spread
  median=$(printf '%s\n' "${samples[@]}" | sort -t'|' -k1,1n | sed -n "$(( (runs + 1) / 2 ))p")
  spread=$(printf '%s\n' "${samples[@]}" | sort -t'|' -k1,1n | awk -F'|' 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }')
  p99_spread=$(printf '%s\n' "${samples[@]}" | sort -t'|' -k3,3g | awk -F'|' 'NR == 1 { lo = $3 } { hi = $3 } END { print lo "-" hi }')
  results+=("$label|$median|$spread|$p99_spread")
}
# figure <name> <value>: a derived figure (ratio, reload, start-up, idle) for the JSON result.
figures=()
figure() { figures+=("$1|$2"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
p99_of() { IFS='|' read -r _ _ _ p99 _ <<<"${results[$1]}"; echo "$p99"; }
print_row() { # <results index>
  local label rps p50 p99 errors spread p99_spread
  IFS='|' read -r label rps p50 p99 errors spread p99_spread <<<"${results[$1]}"
  if (( runs > 1 )); then spread="($spread; p99 $p99_spread)"; else spread=; fi
  printf '%-42s %12s %10s %10s  %-8s %s\n' "$label" "$rps" "$p50" "$p99" "$errors" "$spread"
}

ulimit -n 65536 2>/dev/null || true
bash scripts/services.sh
bench_db="plinth_bench_$$"
psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $bench_db"
trap 'cleanup; psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null 2>&1' EXIT

# Throughput runs would hit the per-IP limit at once: limits are off except where measured.
common_env=(JWT_SECRET=bench-secret-bench-secret-bench-secret-0123 LOG_FORMAT=json
  FIRST_SUPERUSER_EMAIL=root@example.com FIRST_SUPERUSER_USERNAME=root
  FIRST_SUPERUSER_PASSWORD=root-password BIND_ADDR=127.0.0.1:0
  RATE_LIMIT_PER_MINUTE=0 AUTH_RATE_LIMIT_PER_MINUTE=0)
if wants throughput; then
start hyper env BIND_ADDR=127.0.0.1:0 $target_dir/release/plinth-bench-hyper-hello
hyper_addr=$started_addr
start plinth env "${common_env[@]}" DATABASE_URL="sqlite://$work/bench.db" $host_bin
plinth_addr=$started_addr
start plinth-pg env "${common_env[@]}" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$bench_db" \
  REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="plinth-bench-$$" $host_bin
pg_addr=$started_addr
# Host-only path (an unknown path: routed, counted, 404) with every middleware off, and on:
# CORS, rate limiting in Redis (a limit too high to trip), and access logging.
start plinth-off env "${common_env[@]}" DATABASE_URL="sqlite://$work/off.db" RUST_LOG=warn,plinth=info,plinth::access=off $host_bin
off_addr=$started_addr
start plinth-on env "${common_env[@]}" DATABASE_URL="sqlite://$work/on.db" \
  REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="plinth-bench-on-$$" \
  RATE_LIMIT_PER_MINUTE=1000000000 CORS_ALLOWED_ORIGINS=https://app.example.com $host_bin
on_addr=$started_addr
# The example plugin opting into instance reuse (limits.reuse_instance_for).
mkdir -p "$work/reuse-plugins"
cp -r "$target_dir/plugins/hello" "$work/reuse-plugins/"
sed -i 's/^\[limits\]/[limits]\nreuse_instance_for = 1000/' "$work/reuse-plugins/hello/plugin.toml"
start plinth-reuse env "${common_env[@]}" DATABASE_URL="sqlite://$work/reuse.db" \
  PLUGINS_DIR="$work/reuse-plugins" $host_bin
reuse_addr=$started_addr
# The plain SQLite host again, measuring every request for Prometheus (METRICS_ADDR).
start plinth-metrics env "${common_env[@]}" DATABASE_URL="sqlite://$work/metrics.db" \
  METRICS_ADDR=127.0.0.1:0 $host_bin
metrics_host_addr=$started_addr

sqlite_token=$(token_for "$plinth_addr")
pg_token=$(token_for "$pg_addr")
cat >"$work/login.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"root@example.com","password":"root-password"}'
LUA

measure "bare hyper hello-world" "http://$hyper_addr/"
measure "plinth GET /health (host only)" "http://$plinth_addr/health"
measure "plinth GET /hello/x (plugin)" "http://$plinth_addr/hello/x"
measure "users/me SQLite" "http://$plinth_addr/api/v1/users/me" -H "Authorization: Bearer $sqlite_token"
measure "users/me PostgreSQL+Redis" "http://$pg_addr/api/v1/users/me" -H "Authorization: Bearer $pg_token"
CONNS=1024 measure "users/me PostgreSQL, 1024 conns" "http://$pg_addr/api/v1/users/me" -H "Authorization: Bearer $pg_token"
# A login flood (argon2 on every request) next to /users/me on the same host.
wrk -t1 -c16 -d"$((runs * (seconds + 1) + 2))s" -s "$work/login.lua" "http://$pg_addr/api/v1/auth/login" >"$work/flood.out" 2>&1 &
flood=$!
sleep 1
measure "users/me PostgreSQL during login flood" "http://$pg_addr/api/v1/users/me" -H "Authorization: Bearer $pg_token"
wait "$flood" || true
measure "host-only, middleware off" "http://$off_addr/nope"
measure "host-only, CORS+rate limit(Redis)+log" "http://$on_addr/nope" -H "Origin: https://app.example.com"
measure "plinth GET /hello/x (reused instances)" "http://$reuse_addr/hello/x"
# Metrics on ÷ off is a few percent: each "on" run takes turns with an "off" run.
measure_pair "plinth GET /hello/x, metrics off (paired)" "http://$plinth_addr/hello/x" "" \
  "plinth GET /hello/x, metrics on" "http://$metrics_host_addr/hello/x" ""
metrics_token=$(token_for "$metrics_host_addr")
measure_pair "users/me SQLite, metrics off (paired)" "http://$plinth_addr/api/v1/users/me" \
  "Authorization: Bearer $sqlite_token" \
  "users/me SQLite, metrics on" "http://$metrics_host_addr/api/v1/users/me" \
  "Authorization: Bearer $metrics_token"
flood_rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/flood.out")

echo
echo "wrk -t$threads -c$connections -d${seconds}s, $runs run(s) per target (median; requests/s spread in brackets), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-42s %12s %10s %10s  %s\n' target "requests/s" "p50 ms" "p99 ms" "non-2xx"
for i in "${!results[@]}"; do print_row "$i"; done
rps_of() { IFS='|' read -r _ rps _ <<<"${results[$1]}"; echo "$rps"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", (b > 0 ? 100*a/b : 0) }'; }
times() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", (b > 0 ? a/b : 0) }'; }
figure "host-only / bare hyper" "$(ratio "$(rps_of 1)" "$(rps_of 0)")"
figure "plugin path / bare hyper" "$(ratio "$(rps_of 2)" "$(rps_of 0)")"
figure "plugin path / host-only" "$(ratio "$(rps_of 2)" "$(rps_of 1)")"
figure "middleware on / off" "$(ratio "$(rps_of 8)" "$(rps_of 7)")"
figure "plugin path, reused instances / host-only" "$(ratio "$(rps_of 9)" "$(rps_of 1)")"
figure "plugin path, reused instances / bare hyper" "$(ratio "$(rps_of 9)" "$(rps_of 0)")"
figure "hello, metrics on / off" "$(ratio "$(rps_of 11)" "$(rps_of 10)")"
figure "users/me SQLite, metrics on / off" "$(ratio "$(rps_of 13)" "$(rps_of 12)")"
figure "users/me p99 under login flood / quiet" "$(times "$(p99_of 6)" "$(p99_of 4)")"
figure "login flood, logins/s" "${flood_rps:-0}"
echo
echo "host-only / bare hyper:      $(ratio "$(rps_of 1)" "$(rps_of 0)")"
echo "plugin path / bare hyper:    $(ratio "$(rps_of 2)" "$(rps_of 0)")   (target: >= 30%)"
echo "plugin path / host-only:     $(ratio "$(rps_of 2)" "$(rps_of 1)")   (target: >= 50%)"
echo "reused instances / host-only: $(ratio "$(rps_of 9)" "$(rps_of 1)")   (target: >= 75%); / bare hyper: $(ratio "$(rps_of 9)" "$(rps_of 0)")   (target: >= 40%)"
echo "users/me SQLite:             $(rps_of 3) req/s   (target: >= 20,000)"
echo "metrics on / off (paired):   /hello/x $(ratio "$(rps_of 11)" "$(rps_of 10)"), users/me SQLite $(ratio "$(rps_of 13)" "$(rps_of 12)")   (target: >= 97%)"
echo "users/me PostgreSQL+Redis:   $(rps_of 4) req/s, p99 $(p99_of 4) ms   (target: >= 10,000, p99 < 10 ms)"
echo "middleware on / off (host-only):  $(ratio "$(rps_of 8)" "$(rps_of 7)")   (target: >= 85%, i.e. overhead <= 15%)"
echo "users/me p99 under login flood / quiet: $(times "$(p99_of 6)" "$(p99_of 4)")   (target: <= 3x; flood served ${flood_rps:-?} logins/s)"
fi

# --- Sandbox: a plugin's neighbours are hostile -------------------------------------------
if wants sandbox; then
hostile_plugins="$work/hostile-plugins"
mkdir -p "$hostile_plugins"
cp -r $target_dir/plugins/hello $target_dir/test-plugins/{spin,membomb,trap,bigbody} "$hostile_plugins/"
# The same huge-body plugin with its concurrency capped at 1: it can block one worker, not all.
cp -r $target_dir/test-plugins/bigbody "$hostile_plugins/bigbody-capped"
sed -i -e 's/^name = "bigbody"/name = "bigbody-capped"/' -e 's|/bigbody/|/bigbody-capped/|' \
  -e 's/^\[limits\]/[limits]\nmax_concurrency = 1/' "$hostile_plugins/bigbody-capped/plugin.toml"
start plinth-hostile env "${common_env[@]}" DATABASE_URL="sqlite://$work/hostile.db" \
  PLUGINS_DIR="$hostile_plugins" RUST_LOG=warn,plinth=info,plinth::access=off $host_bin
hostile_addr=$started_addr
quiet=${#results[@]}
measure "GET /hello/x, quiet" "http://$hostile_addr/hello/x"
# next_to <label> <paths...>: /hello/x while 4 connections each call the given plugins;
# sets $answered to the hostile requests answered per second.
next_to() {
  local label=$1 path pids=(); shift
  rm -f "$work"/hostile-*.out
  for path in "$@"; do
    wrk -t1 -c4 -d"$((runs * (seconds + 1) + 3))s" "http://$hostile_addr/$path" >"$work/hostile-${path%%/*}.out" 2>&1 &
    pids+=($!)
  done
  sleep 1
  measure "$label" "http://$hostile_addr/hello/x"
  wait "${pids[@]}" || true
  answered=$(cat "$work"/hostile-*.out | awk '/^Requests\/sec:/ {s += $2} END {printf "%.0f", s}')
}
next_to "GET /hello/x, next to spin+membomb+trap" spin membomb trap
hostile_rps=$answered
next_to "GET /hello/x, next to bigbody/64" bigbody/64
bigbody_rps=$answered
next_to "GET /hello/x, next to bigbody capped at 1" bigbody-capped/64
echo
echo "Sandbox (wrk -c$connections on /hello/x; 4 connections on each hostile route)"
for i in "$quiet" "$((quiet + 1))" "$((quiet + 2))" "$((quiet + 3))"; do print_row "$i"; done
p99_ratio() { awk -v a="$(p99_of "$1")" -v b="$(p99_of "$quiet")" 'BEGIN { printf "%.1fx", (b > 0 ? a/b : 0) }'; }
figure "hello p99 next to spin+membomb+trap / quiet" "$(p99_ratio $((quiet + 1)))"
figure "hello p99 next to 64 MiB bodies / quiet" "$(p99_ratio $((quiet + 2)))"
figure "hello p99 next to 64 MiB bodies, capped at 1 / quiet" "$(p99_ratio $((quiet + 3)))"
echo "/hello/x p99 next to endless loop, memory bomb, trap / quiet: $(p99_ratio $((quiet + 1)))   (target: <= 3x; hostile requests answered: ${hostile_rps:-?}/s)"
echo "/hello/x p99 next to 64 MiB response bodies / quiet:         $(p99_ratio $((quiet + 2)))   (target: <= 3x; ${bigbody_rps:-?} answered/s)"
echo "  ... with that plugin's max_concurrency = 1 / quiet:           $(p99_ratio $((quiet + 3)))"
fi

# --- Reload latency --------------------------------------------------------------------
if wants reload; then
reload_plugins="$work/reload-plugins"
mkdir -p "$reload_plugins"
cp -r $target_dir/plugins/{auth,users} "$reload_plugins/"
cp -r $target_dir/test-plugins/versioned "$reload_plugins/"
start plinth-reload env "${common_env[@]}" DATABASE_URL="sqlite://$work/reload.db" \
  PLUGINS_DIR="$reload_plugins" PLUGIN_CACHE_DIR="$work/reload-cache" RUST_LOG=warn,plinth=info,plinth::access=off $host_bin
reload_addr=$started_addr
reload_token=$(token_for "$reload_addr")
install_version() { # <built dir>: the files of a version, each renamed into place
  for f in versioned.wasm plugin.toml; do
    cp "$1/$f" "$reload_plugins/versioned/.$f.new"
    mv "$reload_plugins/versioned/.$f.new" "$reload_plugins/versioned/$f"
  done
}
watch_ms=() admin_ms=()
for round in $(seq 1 10); do
  if (( round % 2 )); then want=v2 dir=$target_dir/test-plugins/versioned-v2; else want=v1 dir=$target_dir/test-plugins/versioned; fi
  t0=$(now_ms)
  install_version "$dir"
  until curl -sf "http://$reload_addr/versioned" | grep -q "\"$want\""; do sleep 0.005; done
  watch_ms+=($(( $(now_ms) - t0 )))
  sleep 0.5   # let the watcher settle before the admin call
  t0=$(now_ms)
  curl -sf -X POST -H "Authorization: Bearer $reload_token" "http://$reload_addr/admin/plugins/versioned/reload" >/dev/null
  admin_ms+=($(( $(now_ms) - t0 )))
done
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "median %d ms, max %d ms", v[int((NR + 1) / 2)], v[NR] }'; }
echo
echo "Reload (10 swaps v1<->v2 of a watched plugin; the watcher debounces 250 ms)"
echo "file change -> first request served by the new version: $(stats "${watch_ms[@]}")"
figure "reload: file change to new version served, median ms" "$(printf '%s\n' "${watch_ms[@]}" | sort -n | sed -n 5p)"
figure "reload: admin call, median ms" "$(printf '%s\n' "${admin_ms[@]}" | sort -n | sed -n 5p)"
echo "admin reload call (prepare + swap, answered after it):  $(stats "${admin_ms[@]}")"
fi

# --- Start-up, cold and warm compilation cache -----------------------------------------
if wants startup; then
startup() { # <cache dir>: ms from spawn until hello answers 200 and users 401 (both loaded)
  local t0 log="$work/startup-$RANDOM.log"
  t0=$(now_ms)
  env "${common_env[@]}" DATABASE_URL="sqlite://$work/startup.db" PLUGIN_CACHE_DIR="$1" \
    $host_bin >"$log" 2>&1 &
  local pid=$! addr=
  until addr=$(listening_addr "$log") && [ -n "$addr" ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.005
  done
  until curl -sf "http://$addr/hello/x" >/dev/null && curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/v1/users/me" | grep -q 401; do sleep 0.005; done
  echo "$(( $(now_ms) - t0 )) $(grep -oE '"compiled":[0-9]+' "$log" | head -1)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
rm -rf "$work/startup-cache"
cold=$(startup "$work/startup-cache")
warm=$(startup "$work/startup-cache")
echo
echo "Start-up to serving hello, auth and users (SQLite)"
echo "cold cache: ${cold% *} ms (${cold#* })"
echo "warm cache: ${warm% *} ms (${warm#* })   (target: < 1000 ms)"
figure "start-up, cold cache, ms" "${cold% *}"
figure "start-up, warm cache, ms" "${warm% *}"
fi

# --- Idle cost: CPU an idle host burns (the epoch ticker, timers) -------------------------
if wants idle; then
start plinth-idle env "${common_env[@]}" DATABASE_URL="sqlite://$work/idle.db" $host_bin
idle_pid=${pids[-1]}
curl -sf "http://$started_addr/hello/x" >/dev/null   # one request, then nothing
sleep 2
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$idle_pid/stat"; }
t0=$(cpu_ticks); sleep 10; t1=$(cpu_ticks)
idle_pct=$(awk -v t="$(( t1 - t0 ))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", 100 * t / hz / 10 }')
echo
echo "Idle host (SQLite, auth + users + hello loaded, no requests for 10 s): ${idle_pct}% of one core"
figure "idle CPU, % of one core" "$idle_pct"
fi

# --- The result, as JSON, and the change against a baseline -----------------------------
mkdir -p "$(dirname "$out_json")"
{ printf '%s\n' "${results[@]}" | sed 's/^/row|/'; printf '%s\n' "${figures[@]}" | sed 's/^/figure|/'; } |
  python3 scripts/bench_result.py write "$out_json" \
    --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain -uno 2>/dev/null | grep -q . && echo +dirty)" "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
    "cores=$(nproc)" "seconds=$seconds" "connections=$connections" "runs=$runs"
echo
echo "bench: figures written to $out_json"
if [ -n "$compare" ]; then
  echo
  python3 scripts/bench_result.py compare "$compare" "$out_json"
fi
