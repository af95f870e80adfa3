#!/usr/bin/env bash
# Makes sure the web view's browser tests have their browser: Debian's chromium, which
# Playwright drives (its own browser download cannot work offline).
#
# Idempotent: does nothing when chromium is on PATH. Otherwise installs Debian's
# `chromium` as root or through `sudo -n`.
set -euo pipefail
exec </dev/null

say() { printf 'browser-tools: %s\n' "$*"; }
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}
say "installing chromium"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null && say "$(chromium --version 2>/dev/null | head -n 1)"
