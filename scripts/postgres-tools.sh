#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are here for the tests and benchmarks, which
# start their own server (initdb + pg_ctl in a temporary folder, unix socket only).
#
# Idempotent: does nothing when initdb and pg_ctl are on PATH or in Debian's
# /usr/lib/postgresql/*/bin. Otherwise installs Debian's `postgresql` as root or
# through `sudo -n`, without leaving its own cluster running.
set -euo pipefail
exec </dev/null

say() { printf 'postgres-tools: %s\n' "$*"; }
have() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}
if have; then
    exit 0
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}
say "installing postgresql"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
# policy-rc.d 101: the package's own cluster is not started (the tests start theirs).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    made_policy=1
fi
as_root apt-get install -y -qq postgresql >/dev/null
if [ "$made_policy" -eq 1 ]; then
    as_root rm -f "$policy"
fi
have && say "$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
