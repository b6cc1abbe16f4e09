#!/usr/bin/env bash
# Makes sure the local PostgreSQL and Redis the tests use are running, starting them if
# they are installed but stopped. Says clearly what is missing; never stops anything.
set -uo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
fi
if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no || true
    for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  fi
fi

status=0
pg_up || { echo "services: PostgreSQL is not reachable on 127.0.0.1:5432 (the PostgreSQL tests will fail)" >&2; status=1; }
redis_up || { echo "services: Redis is not reachable on 127.0.0.1:6379 (the Redis tests will fail)" >&2; status=1; }
exit $status
