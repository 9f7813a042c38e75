#!/usr/bin/env bash
# Start throwaway PostgreSQL and Redis servers on loopback for the test suite.
#
#   eval "$(scripts/test-services.sh start)"   # exports DEPOT_TEST_*_URL
#   scripts/test-services.sh stop
#
# Data lives under $DEPOT_SERVICES_DIR (default /tmp/depot-test-services) and
# is thrown away on stop. PostgreSQL refuses to run as root, so as root it runs
# as the `postgres` user that Debian's package creates.
set -euo pipefail

DIR=${DEPOT_SERVICES_DIR:-/tmp/depot-test-services}
PG_PORT=${DEPOT_TEST_PG_PORT:-54329}
REDIS_PORT=${DEPOT_TEST_REDIS_PORT:-63799}

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ]; then
    echo "PostgreSQL is not installed: apt-get install postgresql" >&2
    exit 1
  fi
  echo "$bin"
}

start() {
  local bin
  bin=$(pg_bin)
  mkdir -p "$DIR"
  if [ ! -s "$DIR/pg/PG_VERSION" ]; then
    mkdir -p "$DIR/pg"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg"
    as_pg_user "$bin/initdb" -D "$DIR/pg" -U depot -A trust --no-sync >"$DIR/initdb.log"
  fi
  if ! as_pg_user "$bin/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    # Durability is not wanted for tests: fsync off makes CREATE DATABASE fast.
    as_pg_user "$bin/pg_ctl" -D "$DIR/pg" -l "$DIR/pg/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2
  fi
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || { echo "Redis is not installed: apt-get install redis-server" >&2; exit 1; }
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --dir "$DIR" --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  echo "export DEPOT_TEST_POSTGRES_URL=postgresql://depot@127.0.0.1:$PG_PORT/postgres"
  echo "export DEPOT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

stop() {
  local bin
  bin=$(pg_bin)
  if [ -d "$DIR/pg" ]; then as_pg_user "$bin/pg_ctl" -D "$DIR/pg" -m fast stop >/dev/null 2>&1 || true; fi
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
