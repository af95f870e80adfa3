#!/usr/bin/env bash
# Makes sure node and npm are here: the node starter's tests (tests/test_starters.py) run
# it with the real npm, on projects without dependencies (no network needed).
#
# Idempotent: does nothing when both are on PATH. Otherwise installs Debian's `npm`
# (which brings `nodejs`) as root or through `sudo -n`.
set -euo pipefail
exec </dev/null

say() { printf 'node-tools: %s\n' "$*"; }
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "node and npm are missing, and there is no apt-get to install them"
    exit 1
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}
say "installing npm (and nodejs)"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq npm >/dev/null
say "node $(node --version), npm $(npm --version)"
