"""Seals on what the pipeline process relays: a step's process group, before anyone kills it.

A step's process group reaches the journal through the pipeline process (the broker
tells it, it tells the driver), and a later driver kills that group when it takes
the run over or cancels it. A hostile pipeline could relay someone else's group
instead (the server's, another tenant's step) and then crash. So the broker seals
what it reports with a key the sandbox cannot read (``CI_RUNNER_HOME/reaper.key``,
0600), and nothing is killed on a detail whose seal does not match.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from typing import Any

from ci_runner import paths

SEALED = ("pgid", "pgid_start", "host")


@functools.cache
def _key() -> bytes:
    path = paths.home() / "reaper.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it just now
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def seal(detail: Mapping[str, Any]) -> str:
    """The seal of ``detail``'s process-group fields."""
    text = json.dumps({k: detail.get(k) for k in SEALED}, sort_keys=True)
    return hmac.new(_key(), text.encode(), hashlib.sha256).hexdigest()


def sealed(detail: Mapping[str, Any]) -> bool:
    """Whether ``detail`` carries the broker's seal over its process group."""
    given = detail.get("seal")
    return isinstance(given, str) and hmac.compare_digest(given, seal(detail))
