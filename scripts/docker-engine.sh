#!/usr/bin/env bash
# Makes sure a Docker engine answers, so heavy steps and the Docker tests can run.
#
# Idempotent: when `docker info` already answers it does nothing. Otherwise it
# installs Debian's docker.io (plus debootstrap and busybox-static, which
# `ci-runner images build` needs offline) when they are missing, starts
# `dockerd --bridge=none` in the background and waits, bounded, until it answers.
# Built for CI and sandboxes: no stdin, no systemd, maybe no iptables. Networking
# stays minimal on purpose: steps run with no network, or share the host's with
# network=True, so dockerd needs neither a bridge nor NAT rules.
#
# Environment:
#   CI_RUNNER_DOCKER_LOG    dockerd's log file (default /tmp/ci-runner-dockerd.log)
#   CI_RUNNER_DOCKER_WAIT   seconds to wait for the engine to answer (default 60)
#   CI_RUNNER_DOCKER_STORAGE  force a storage driver (default: overlay2, then vfs)
set -euo pipefail
exec </dev/null

log_file="${CI_RUNNER_DOCKER_LOG:-/tmp/ci-runner-dockerd.log}"
wait_s="${CI_RUNNER_DOCKER_WAIT:-60}"

say() { printf 'docker-engine: %s\n' "$*"; }
engine_answers() { docker info >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root for: $* (no sudo found): run this script as root"
        exit 1
    fi
}

if command -v docker >/dev/null 2>&1 && engine_answers; then
    say "engine already answering ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')); nothing to do"
    exit 0
fi

# What to install: a package only when the command it provides is missing.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing ${missing[*]} and no apt-get here: install a Docker engine by hand"
        exit 1
    fi
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q >/dev/null
    # Never let a package's maintainer script try to start services (no init here).
    as_root apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
    say "installed ${missing[*]}"
fi
command -v docker >/dev/null 2>&1 || { say "no docker client after install"; exit 1; }

# wait_for PID SECONDS: 0 once the engine answers, 1 if dockerd died or time ran out.
wait_for() {
    local pid="$1" deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if engine_answers; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.2
    done
    return 1
}

# No bridge, no NAT, no iptables: see the header. --ip6tables only exists from 20.10 on.
flags=(--bridge=none --iptables=false --ip-masq=false)
if dockerd --help 2>/dev/null | grep -q -- '--ip6tables'; then
    flags+=(--ip6tables=false)
fi

if [ -n "${CI_RUNNER_DOCKER_STORAGE:-}" ]; then
    drivers=("$CI_RUNNER_DOCKER_STORAGE")
else
    drivers=(overlay2 vfs)
fi

mkdir -p "$(dirname "$log_file")"
for driver in "${drivers[@]}"; do
    say "starting dockerd ${flags[*]} --storage-driver=$driver (log: $log_file)"
    # setsid: the engine outlives this script and the CI step that ran it; -w keeps
    # $! alive as long as dockerd, in case setsid had to fork.
    as_root setsid -w dockerd "${flags[@]}" --storage-driver="$driver" >>"$log_file" 2>&1 &
    pid=$!
    if wait_for "$pid" "$wait_s"; then
        say "engine answering (storage driver $driver, $(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd still not answering after ${wait_s}s: see $log_file"
        exit 1
    fi
    say "dockerd exited with storage driver $driver:"
    { grep -E 'failed to start|level=(error|fatal)' "$log_file" || tail -n 5 "$log_file"; } \
        | tail -n 3 | sed 's/^/    /'
done
say "could not start dockerd: see $log_file"
exit 1
