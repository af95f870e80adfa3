"""Light steps' process limit, with the kernel's pids cgroup controller.

A fork bomb in a step reached 15,813 processes and a load of 2,000 before its
timeout. A run's light steps therefore run in a pids cgroup whose ``pids.max`` is
the limit (512 by default, like a heavy step's container): a fork past it fails with
EAGAIN inside the step, and afterwards the step's log and result say in one line how
many forks were refused.

Moving a process into a cgroup costs the kernel milliseconds (an RCU sync), so a
run's steps do not each move: the broker's thread joins the run's cgroup once
(``RunCgroup.join``; under cgroup v1 a single thread can, under v2 the driver's
process does) and every step it starts is born inside. A step that sets its own
``pids=`` gets a cgroup of its own instead (``StepCgroup``): its argv is prefixed with
a two-word shell that writes its pid into ``cgroup.procs`` and execs the rest
(``preexec_fn`` is unsafe in the broker's thread), so everything it starts, sandbox
included, is counted.

Where no pids hierarchy can be written (a user without a delegated cgroup), a step
in a bubblewrap sandbox gets ``RLIMIT_NPROC`` instead (``prlimit`` inside it): in
the sandbox's own user namespace the kernel counts only that sandbox's processes.
Elsewhere (Landlock, no sandbox) ``RLIMIT_NPROC`` would count every process of the
user, their desktop included, so steps there have no process limit and ``where()``
says why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import threading
import time
from pathlib import Path

DEFAULT_PIDS = 512
_V1 = Path("/sys/fs/cgroup/pids")
_V2 = Path("/sys/fs/cgroup")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


OFF_ENV = "CI_RUNNER_PIDS_CGROUP"  # "off": no cgroups (the sandbox's RLIMIT_NPROC only)


@functools.cache
def where() -> tuple[Path | None, str]:
    """(ci-runner's pids cgroup folder, "") or (None, why steps have no cgroup limit)."""
    if os.environ.get(OFF_ENV) == "off":
        return None, f"pids cgroups are turned off ({OFF_ENV}=off)"
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
        #: ``refused()`` as last read: a shared cgroup's count before the next step.
        self.seen_refused = 0

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
                    self.seen_refused = int(value)
                    return self.seen_refused
        return 0

    def remove(self, *, wait_s: float = 0.0) -> bool:
        """Stop what is left in the cgroup (a daemon that left the step's process group
        is still counted here) and remove it; False while its processes are still on
        their way out (try again later, or wait up to ``wait_s``)."""
        if self.path is None:
            return True
        deadline = time.monotonic() + wait_s
        while True:
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except OSError:
                return True  # gone already
            for pid in pids:
                if pid == str(os.getpid()):
                    continue  # a thread of ours still inside (RunCgroup.leave moves them)
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                self.path.rmdir()
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)


def remove_leftovers(prefix: str) -> None:
    """Remove the step cgroups named ``prefix...`` (one run's) that a killed driver left."""
    base, _ = where()
    if base is None:
        return
    for folder in base.glob(f"{_UNSAFE.sub('_', prefix)}*"):
        cgroup = StepCgroup.__new__(StepCgroup)
        cgroup.path, cgroup.limit = folder, 0
        cgroup.remove(wait_s=2.0)


class RunCgroup(StepCgroup):
    """The cgroup a run's light steps are born in: the calling thread (v1) or process
    (v2) joins it once; ``leave`` puts it back where it was."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(name, limit)
        self._back: Path | None = None

    def join(self) -> bool:
        """Move the calling thread (cgroup v1) or process (v2) in; False if it cannot."""
        if self.path is None or not self.create():
            return False
        assert self.path is not None
        v1 = (self.path / "tasks").exists()
        target = self.path / ("tasks" if v1 else "cgroup.procs")
        me = threading.get_native_id() if v1 else os.getpid()
        self._back = _current(self.path.parent.parent, v1)
        try:
            target.write_text(str(me))
        except OSError:
            self._back = None
            return False
        return True

    def wrap(self, argv: list[str]) -> list[str]:
        return argv  # born inside: nothing to join

    def leave(self) -> None:
        """Back to the cgroup the caller came from, then remove this one."""
        if self._back is not None and self.path is not None:
            v1 = (self._back / "tasks").exists()
            ours = [str(os.getpid())]
            if v1:  # every thread of ours: those the joined one started followed it in
                with contextlib.suppress(OSError):
                    ours = [t for t in (self.path / "tasks").read_text().split()
                            if Path(f"/proc/self/task/{t}").exists()]
            for me in ours:
                with contextlib.suppress(OSError):
                    (self._back / ("tasks" if v1 else "cgroup.procs")).write_text(me)
            self._back = None
        self.remove(wait_s=2.0)


def _current(root: Path, v1: bool) -> Path:
    """The cgroup folder the caller is in now, in the hierarchy mounted at ``root``."""
    for line in Path("/proc/thread-self/cgroup").read_text().splitlines():
        _, controllers, where = line.split(":", 2)
        if (v1 and "pids" in controllers.split(",")) or (not v1 and controllers == ""):
            return root / where.lstrip("/")
    return root
