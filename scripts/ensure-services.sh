#!/usr/bin/env bash
# Make sure the services the test suite talks to are up: PostgreSQL on 127.0.0.1:5432
# (trust auth) and Redis on 127.0.0.1:6379. Starts them when installed but stopped,
# waits until both answer, and exits non-zero with a clear message otherwise.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
WAIT_SECONDS=${SOFTLABEL_SERVICES_WAIT:-60}

say() { echo "ensure-services: $*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

pg_up() { pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

command -v pg_isready >/dev/null || fail "pg_isready not found: install PostgreSQL (Debian: postgresql)"
command -v redis-cli >/dev/null || fail "redis-cli not found: install Redis (Debian: redis-server)"

if ! pg_up; then
    command -v pg_ctlcluster >/dev/null \
        || fail "PostgreSQL is not answering on $PG_HOST:$PG_PORT and pg_ctlcluster is missing"
    [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ] \
        || fail "PostgreSQL is not answering on $PG_HOST:$PG_PORT and no cluster is configured"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || say "pg_ctlcluster failed; waiting in case it is already starting"
fi

if ! redis_up; then
    command -v redis-server >/dev/null \
        || fail "Redis is not answering on $REDIS_HOST:$REDIS_PORT and redis-server is missing"
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        || say "redis-server failed; waiting in case it is already starting"
fi

deadline=$((SECONDS + WAIT_SECONDS))
until pg_up && redis_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        pg_up || say "PostgreSQL still not answering on $PG_HOST:$PG_PORT"
        redis_up || say "Redis still not answering on $REDIS_HOST:$REDIS_PORT (log: /var/log/redis/ci.log)"
        fail "services did not come up within ${WAIT_SECONDS}s"
    fi
    sleep 0.5
done
say "PostgreSQL ($PG_HOST:$PG_PORT) and Redis ($REDIS_HOST:$REDIS_PORT) are up"
