#!/usr/bin/env bash
# Makes sure the sandbox's tools are here: bubblewrap (bwrap) and util-linux's setpriv.
#
# Idempotent: does nothing when both are on PATH. Otherwise installs Debian's
# `bubblewrap` (and `util-linux` for setpriv) as root or through `sudo -n`.
set -euo pipefail
exec </dev/null

say() { printf 'sandbox-tools: %s\n' "$*"; }
if command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then
    exit 0
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}
say "installing bubblewrap and util-linux"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq bubblewrap util-linux >/dev/null
command -v bwrap >/dev/null && say "$(bwrap --version)"
