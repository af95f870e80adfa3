#!/usr/bin/env bash
# Builds ci-runner's sandbox images offline (no registry): see ci_runner/images.py.
#
#   scripts/build-images.sh            # every image: busybox, rootfs-debian, base, python, ...
#   scripts/build-images.sh python     # one image and the parents it lacks
#   scripts/build-images.sh --rebuild  # remake even the cached root images
# Needs a Docker engine (scripts/docker-engine.sh starts one) and, for the Debian
# root file system, root or passwordless sudo (debootstrap).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m ci_runner.images build "$@" </dev/null
