"""A light step's process limit, with the kernel's pids cgroup controller.

A fork bomb in a step reached 15,813 processes and a load of 2,000 before its
timeout. Each light step therefore runs in a pids cgroup of its own whose
``pids.max`` is the step's limit (512 by default, like a heavy step's container):
a fork past it fails with EAGAIN inside the step, and afterwards the step's log and
result say in one line how many forks were refused.

The step joins its cgroup before anything of it runs: its argv is prefixed with a
two-word shell that writes its own pid into ``cgroup.procs`` and execs the rest
(``preexec_fn`` is unsafe in the broker's thread), so everything the step starts,
sandbox included, is counted.

Where no pids hierarchy can be written (a user without a delegated cgroup), steps
run without a process limit and ``where()`` says why; ``RLIMIT_NPROC`` is no
substitute there, since it counts every process of the uid, the user's own
desktop included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
from pathlib import Path

DEFAULT_PIDS = 512
_V1 = Path("/sys/fs/cgroup/pids")
_V2 = Path("/sys/fs/cgroup")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@functools.cache
def where() -> tuple[Path | None, str]:
    """(ci-runner's pids cgroup folder, "") or (None, why steps have no process limit)."""
    candidates: list[Path] = []
    if (_V2 / "cgroup.controllers").is_file() and "pids" in (
            _V2 / "cgroup.controllers").read_text().split():
        candidates.append(_V2)
    if (_V1 / "cgroup.procs").is_file():
        candidates.append(_V1)
    for root in candidates:
        base = root / "ci-runner"
        try:
            base.mkdir(exist_ok=True)
            if root == _V2:
                # Children of our folder get the pids controller (cgroup v2's rule).
                for folder in (root, base):
                    control = folder / "cgroup.subtree_control"
                    if "pids" not in control.read_text().split():
                        control.write_text("+pids")
            probe = base / f"probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError as exc:
            last = f"{base}: {exc.strerror}"
            continue
        return base, ""
    if not candidates:
        return None, "no pids cgroup controller on this machine"
    return None, f"cannot make a pids cgroup ({last}): run as root or delegate a cgroup"


class StepCgroup:
    """One step attempt's pids cgroup: made on ``create``, gone after ``remove``."""

    def __init__(self, name: str, limit: int) -> None:
        base, _ = where()
        self.limit = limit
        self.path = None if base is None else base / _UNSAFE.sub("_", name)[:200]

    def create(self) -> bool:
        """Make the cgroup; False when there is nowhere to make it (no limit then)."""
        if self.path is None:
            return False
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / "pids.max").write_text(str(self.limit))
        except OSError:
            self.path = None
            return False
        return True

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` joining the cgroup first (nothing of it runs outside)."""
        if self.path is None:
            return argv
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"',
                str(self.path / "cgroup.procs"), *argv]

    def refused(self) -> int:
        """How many forks the limit refused (``pids.events``: ``max N``)."""
        if self.path is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        return 0

    def remove(self) -> None:
        """Stop what is left in the cgroup (a daemon that left the step's process group
        is still counted here) and remove it."""
        if self.path is None:
            return
        for _ in range(50):
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except OSError:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.01)


def remove_leftovers(prefix: str) -> None:
    """Remove the step cgroups named ``prefix...`` (one run's) that a killed driver left."""
    base, _ = where()
    if base is None:
        return
    for folder in base.glob(f"{_UNSAFE.sub('_', prefix)}*"):
        cgroup = StepCgroup.__new__(StepCgroup)
        cgroup.path, cgroup.limit = folder, 0
        cgroup.remove()
