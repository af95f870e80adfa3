"""Who owns a running instance, and whether that owner is still alive.

An owner is ``host:pid:start``, where ``start`` is the process start time read
from /proc, so a recycled pid is not mistaken for the original owner.
"""

from __future__ import annotations

import os
import socket
from functools import cache

LEASE_TTL_ENV = "CI_RUNNER_LEASE_TTL_S"


def _lease_ttl() -> float:
    """How long a silent driver keeps its run: after that, on another host, the run is
    taken over (on this host a dead driver is seen at once). A fleet may shorten it."""
    text = os.environ.get(LEASE_TTL_ENV, "").strip()
    try:
        value = float(text) if text else 60.0
    except ValueError:
        value = 60.0
    return value if value >= 1.0 else 60.0


LEASE_TTL_S = _lease_ttl()
HEARTBEAT_EVERY_S = min(15.0, LEASE_TTL_S / 4)


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, or '0' when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:  # noqa: PTH123
            stat = f.read()
    except OSError:
        return "0"
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@cache
def owner_id() -> str:
    """This process's lease identity."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{start_time(pid)}"


def owner_alive(owner: str | None) -> bool:
    """True unless ``owner`` is provably dead (a process on this host that is gone).

    An owner on another host cannot be checked from here: only its lease expiry counts.
    """
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start_time(pid) == start
