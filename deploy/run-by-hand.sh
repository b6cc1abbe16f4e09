#!/usr/bin/env bash
# The docker-compose.yml topology without Docker: two plinth hosts sharing the local
# PostgreSQL and Redis, behind nginx (deploy/nginx.conf with local addresses).
#   export JWT_SECRET=$(openssl rand -hex 32) FIRST_SUPERUSER_PASSWORD='a long passphrase'
#   bash deploy/run-by-hand.sh          # then: curl localhost:8090/ready ; Ctrl-C stops all
# Needs: the local PostgreSQL (trust auth) and Redis, and nginx (apt-get install nginx-light).
# Set REDIS_URL=redis://:<password>@127.0.0.1:6379 when the local Redis has a password.
# The replica is left out here (DATABASE_READ_URL would point at it); see RUNNING-BY-HAND.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# Secrets have no defaults: a script anyone can read must not decide them.
: "${JWT_SECRET:?set JWT_SECRET (at least 32 bytes), e.g. export JWT_SECRET=\$(openssl rand -hex 32)}"
: "${FIRST_SUPERUSER_PASSWORD:?set FIRST_SUPERUSER_PASSWORD (8 to 128 characters) for admin@example.com}"
: "${DATABASE_ROLE_SECRET:?set DATABASE_ROLE_SECRET (at least 32 bytes), e.g. export DATABASE_ROLE_SECRET=\$(openssl rand -hex 32)}"
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 1; }
bash scripts/services.sh
bash scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p plinth-host

# As in docker-compose.yml: the administrative role owns the database and may create roles,
# but is no superuser; plugins' connections log in as each data set's own role.
db=plinth_by_hand admin=plinth_by_hand_admin
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='$admin'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -q -c "CREATE ROLE $admin LOGIN CREATEROLE"
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $db OWNER $admin"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; nginx -p "$work" -c "$work/nginx.conf" -s stop 2>/dev/null; rm -rf "$work"' EXIT

export APP_ENV=production LOG_FORMAT=json TRUSTED_PROXIES=127.0.0.1
export JWT_SECRET FIRST_SUPERUSER_PASSWORD
export DATABASE_URL="postgres://$admin@127.0.0.1:5432/$db" PLUGINS_POLICY=deploy/policy.toml
export DATABASE_ROLE_SECRET
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export FIRST_SUPERUSER_EMAIL=admin@example.com FIRST_SUPERUSER_USERNAME=admin
for port in 8081 8082; do
  # Metrics on 9464 and 9465 (compose: 9464 on each host's own address).
  BIND_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:$((port + 1383)) target/release/plinth \
    >"$work/plinth-$port.log" 2>&1 &
  pids+=($!)
done
for port in 8081 8082; do
  for _ in $(seq 1 100); do curl -fsS "127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.2; done
done

sed -e 's/plinth-1:8080/127.0.0.1:8081/; s/plinth-2:8080/127.0.0.1:8082/' \
    -e 's/listen 80;/listen 127.0.0.1:8090;/' \
    -e "s|^worker_processes auto;|worker_processes auto;\npid $work/nginx.pid;\nerror_log $work/error.log;|" \
    -e "s|^http {|http {\n    access_log $work/access.log;\n    client_body_temp_path $work;\n    proxy_temp_path $work;|" \
    deploy/nginx.conf >"$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf"
# Prometheus, as in compose, when installed (Debian's `prometheus`; scripts/tools.sh).
if command -v prometheus >/dev/null; then
  sed -e 's/plinth-1:9464/127.0.0.1:9464/; s/plinth-2:9464/127.0.0.1:9465/' \
    deploy/prometheus.yml >"$work/prometheus.yml"
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
    --web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
  pids+=($!)
  echo "prometheus on http://127.0.0.1:9090 (scraping 9464, 9465)"
fi
echo "serving on http://127.0.0.1:8090 (hosts 8081, 8082); logs in $work; Ctrl-C stops"
if [ "${1:-}" = "--check" ]; then
  curl -fsS 127.0.0.1:8090/ready && echo
  for i in 1 2 3 4; do curl -fsS -o /dev/null -w "%{http_code} " 127.0.0.1:8090/health; done; echo
  for port in 9464 9465; do curl -fsS "127.0.0.1:$port/metrics" | grep -c '^http_server_request_duration_seconds_count' ; done
  exit 0
fi
wait
