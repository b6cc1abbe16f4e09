#!/usr/bin/env bash
# The contract, checked by tools no one here wrote, against a live host on each backend:
#   - openapi-spec-validator: GET /openapi.json is a valid OpenAPI 3.1 document;
#   - a TypeScript client generated from it (openapi-typescript + openapi-fetch) compiles
#     under `tsc --strict` and registers, logs in and reads /users/me;
#   - schemathesis: every operation, examples + coverage + fuzzing + stateful (register ->
#     login -> the token, following the document's links), finds no server error, no answer
#     outside its schema, no undocumented status code, content type or header, and no bad
#     request accepted or good one refused.
# Needs target/release/plinth and target/plugins (scripts/test.sh builds them first).
#
#   CONTRACT_EXAMPLES  generated cases per operation and phase (default 50)
#   CONTRACT_SEED      a number repeats a run exactly (default 1); `random` explores
#   CONTRACT_BACKENDS  any of `sqlite postgres` (default both; postgres = PostgreSQL + Redis)
# Longer: CONTRACT_EXAMPLES=500 CONTRACT_SEED=random bash scripts/contract.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
examples=${CONTRACT_EXAMPLES:-50}
seed=${CONTRACT_SEED:-1}
backends=${CONTRACT_BACKENDS:-sqlite postgres}

# The checkers, pinned, in a virtualenv of their own (installed once per machine).
venv=$root/target/contract-venv
requirements=$root/tests/contract/requirements.txt
stamp=$venv/.requirements
if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
  echo "contract: installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi

# The client team's toolchain (openapi-typescript, openapi-fetch, tsc), pinned by its lock
# file, in target/contract-client (installed once per machine).
client=$root/target/contract-client
if ! cmp -s "$root/tests/contract/client/package-lock.json" "$client/package-lock.json" 2>/dev/null; then
  echo "contract: installing the TypeScript client toolchain into $client" >&2
  rm -rf "$client" && mkdir -p "$client"
  cp "$root/tests/contract/client/package.json" "$root/tests/contract/client/package-lock.json" "$client/"
  (cd "$client" && npm ci --silent --no-audit --no-fund)
fi

work=$(mktemp -d)
host_pid=""
database=""
cleanup() {
  if [ -n "$host_pid" ]; then kill "$host_pid" 2>/dev/null || true; wait "$host_pid" 2>/dev/null || true; fi
  if [ -n "$database" ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

export CONTRACT_ROOT_EMAIL=root@example.com CONTRACT_ROOT_PASSWORD=contract-root-password

# Starts the host on a free port with auth, users and hello; sets $base.
start_host() { # <backend>
  local backend=$1 log=$work/$1.log
  local -a env=(
    BIND_ADDR=127.0.0.1:0 PLUGINS_DIR="$root/target/plugins" PLUGIN_CACHE_DIR=off
    DATABASE_URL="sqlite://$work/$backend.db" LOG_FORMAT=json
    # Schemathesis sends thousands of requests from one address.
    RATE_LIMIT_PER_MINUTE=0 AUTH_RATE_LIMIT_PER_MINUTE=0
    FIRST_SUPERUSER_EMAIL=$CONTRACT_ROOT_EMAIL FIRST_SUPERUSER_USERNAME=root
    FIRST_SUPERUSER_PASSWORD=$CONTRACT_ROOT_PASSWORD
  )
  if [ "$backend" = postgres ]; then
    database=plinth_contract_$$_$RANDOM
    psql -h 127.0.0.1 -U postgres -d postgres -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database" >/dev/null
    env+=(DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
      REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX="contract-$database")
  fi
  env "${env[@]}" "$root/target/release/plinth" >"$log" 2>&1 &
  host_pid=$!
  for _ in $(seq 1 300); do
    base=$(grep -o '"message":"listening on http://[0-9.:]*' "$log" | head -1 | sed 's/.*listening on //') || true
    [ -n "$base" ] && return 0
    if ! kill -0 "$host_pid" 2>/dev/null; then
      echo "contract: the host did not start on $backend:" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "contract: the host did not listen within 30 s on $backend:" >&2; cat "$log" >&2
  return 1
}

stop_host() { # <backend>
  kill "$host_pid" 2>/dev/null || true
  wait "$host_pid" 2>/dev/null || true
  host_pid=""
  # No request may have made the host fail inside: a 5xx is schemathesis' to report, a
  # panic or an error line is ours.
  if grep -q '"level":"ERROR"\|panicked' "$work/$1.log"; then
    echo "contract: the host logged errors on $1:" >&2
    grep '"level":"ERROR"\|panicked' "$work/$1.log" | head -20 >&2
    return 1
  fi
}

# What a person sees at /docs, in a real browser (headless Chromium, from Debian's packages
# via scripts/tools.sh): Swagger UI lists every operation of the document and shows no
# error, with every name but the host's own unresolvable (nothing may come from elsewhere).
# A screenshot is kept as target/contract-report/docs.png.
render_docs() {
  local dom=$work/docs.html
  local -a browser=(chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=15000
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
  mkdir -p "$root/target/contract-report"
  timeout 120 "${browser[@]}" --dump-dom "$base/docs" >"$dom" 2>/dev/null
  timeout 120 "${browser[@]}" --window-size=1280,2400 \
    --screenshot="$root/target/contract-report/docs.png" "$base/docs" >/dev/null 2>&1
  local operations rendered
  operations=$(python3 -c 'import json, sys; print(sum(len(item) for item in json.load(open(sys.argv[1]))["paths"].values()))' "$work/openapi.json")
  rendered=$(grep -o 'class="opblock opblock-' "$dom" | wc -l)
  if [ "$rendered" -ne "$operations" ] || grep -q 'errors-wrapper' "$dom"; then
    echo "contract: /docs shows $rendered of $operations operations, or an error; DOM in $dom" >&2
    cp "$dom" "$root/target/contract-report/docs.html"
    return 1
  fi
  echo "contract: /docs rendered all $operations operations in headless Chromium (target/contract-report/docs.png)"
}

status=0
for backend in $backends; do
  echo "==> contract on $backend"
  start_host "$backend"
  curl -sf "$base/openapi.json" -o "$work/openapi.json"
  "$venv/bin/openapi-spec-validator" "$work/openapi.json"

  # Generate a typed client from the document, compile a script using it with
  # `tsc --strict`, and run it: register, log in, read /users/me.
  cp "$work/openapi.json" "$root/tests/contract/client/tsconfig.json" \
    "$root/tests/contract/client/smoke.ts" "$client/"
  (cd "$client" && rm -rf dist && npx --no-install openapi-typescript openapi.json -o schema.d.ts --silent \
    && npx --no-install tsc -p . && PLINTH_URL=$base node dist/smoke.js) || status=1
  if [ "$backend" = sqlite ]; then render_docs || status=1; fi

  report=$root/target/contract-report/$backend
  rm -rf "$report"
  seed_args=()
  [ "$seed" != random ] && seed_args=(--seed "$seed")
  # Run from target/contract-run, where schemathesis keeps what it found for `st replay`.
  # The timeout is a backstop: a bounded run takes about a minute.
  mkdir -p "$root/target/contract-run"
  if (cd "$root/target/contract-run" && SCHEMATHESIS_HOOKS=$root/tests/contract/hooks.py \
      timeout --kill-after=15 600 "$venv/bin/st" --no-color \
      --config-file "$root/tests/contract/schemathesis.toml" run \
      "$base/openapi.json" --url "$base" --wait-for-schema 30 \
      --phases examples,coverage,fuzzing,stateful --checks all \
      --max-examples "$examples" "${seed_args[@]}" \
      --report junit,ndjson --report-dir "$report"); then
    :
  else
    status=1
  fi
  "$venv/bin/python" "$root/tests/contract/count_cases.py" "$report"/ndjson-*.ndjson || true
  if ! stop_host "$backend"; then status=1; fi
  if [ -n "$database" ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    database=""
  fi
done
if [ "$status" -ne 0 ]; then
  echo "contract: FAILED (reports under target/contract-report/)" >&2
fi
exit "$status"
