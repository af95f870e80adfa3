#!/usr/bin/env bash
# Makes sure `python3 -m venv` works: Debian and Ubuntu ship venv's ensurepip apart,
# in the `python3-venv` package (without it, venv fails with "ensurepip is not available").
#
# Idempotent: does nothing when python3 can make a venv. Otherwise installs Debian's
# `python3-venv` as root or through `sudo -n`.
set -euo pipefail
exec </dev/null

say() { printf 'python-venv: %s\n' "$*"; }
if python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "python3 cannot make a virtual environment here, and there is no apt-get to install python3-venv"
    exit 1
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}
say "installing python3-venv"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq python3-venv >/dev/null
python3 -c 'import ensurepip, venv'
