#!/bin/sh
# Runs a throwaway PostgreSQL for tests (see the Dockerfile); `ready` is the health check.
set -eu
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if [ "${1:-}" = ready ]; then
    exec "$bindir/pg_isready" -q -h 127.0.0.1 -p 5432
fi
: "${PGDATA:=/tmp/pgdata}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    "$bindir/initdb" --pgdata="$PGDATA" --username="${PGUSER:-postgres}" --auth=trust \
        --encoding=UTF8 --no-sync >/dev/null
fi
exec "$bindir/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 -c port=5432 \
    -c unix_socket_directories=/tmp -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off "$@"
