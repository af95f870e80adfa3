"""In the pipeline process: the worktree's files are checked out the moment the
pipeline's own code looks at them.

A run's worktree holds only its ``.ci/`` folder until a step needs the rest (a
``step.run`` or ``step.do`` that runs, artifacts: see ``dispatch.runs``), so that a
run served from the cache checks out nothing else. Code of the pipeline outside its
steps may look at the repo's files before then (``if Path("Cargo.toml").exists()``, a
glob of packages to pick steps from): it must see them as they are at the run's sha,
never a tree with nothing in it. So until the files are there, this module watches
the pipeline process's file system reads of the worktree (outside ``.ci/`` and
``.git``): ``open`` for reading, ``os.listdir`` and ``os.scandir`` through an audit
hook (which ``glob``, ``Path.iterdir``, ``Path.glob`` and ``os.walk`` use), ``os.stat``
and ``os.lstat`` (``os.path.exists``, ``Path.exists``, ``Path.is_file``...) through a
wrapper. The first such read asks the broker, blocking, on a socket of its own
(``CI_RUNNER_FILES_FD``), to check the files out, then goes on. From then on nothing
is watched (the hook stays, inactive; the wrappers are taken away).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from ci_runner.errors import WorkspaceError

FILES_FD_ENV = "CI_RUNNER_FILES_FD"
_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
_STAT, _LSTAT = os.stat, os.lstat


class _Watch:
    def __init__(self) -> None:
        self.root = ""
        self.allowed: tuple[str, ...] = ()
        self.sock: socket.socket | None = None
        self.active = False
        self.busy = False  # looking, or asking: the calls that makes must not come back

    def point(self, workspace: Path, folder: str, sock: socket.socket) -> None:
        self.root = os.path.realpath(workspace)
        self.allowed = tuple(str(Path(self.root, name)) for name in (folder, ".git"))
        self.sock = sock
        self.active = True

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in _EVENTS:
            return
        if event == "open" and _writes(args):
            return  # a file the pipeline makes is its own
        self.look_at(args[0] if args else None, listing=event != "open")

    def look_at(self, target: Any, *, listing: bool = False) -> None:
        if not self.active or self.busy or isinstance(target, int):
            return  # a descriptor: whatever it is, it was opened (and seen) before
        self.busy = True
        try:
            wanted = self.wants(target, listing=listing)
        finally:
            self.busy = False
        if wanted:
            self.fill()

    def wants(self, target: Any, *, listing: bool) -> bool:
        """Whether ``target`` is a file of the tree (or, ``listing``, a folder of it)."""
        try:
            # By name: Path.resolve would stat, from inside the wrapper of stat.
            path = os.path.abspath(os.fsdecode("." if target is None else target))  # noqa: PTH100
        except (TypeError, ValueError):
            return False
        if not self.inside(path):
            path = os.path.realpath(path)  # a link into the worktree, perhaps
            if not self.inside(path):
                return False
        if path == self.root:
            return listing  # the folder itself is there; what it holds is not yet
        return not any(path == a or path.startswith(a + os.sep) for a in self.allowed)

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def fill(self) -> None:
        assert self.sock is not None
        self.busy = True
        try:
            self.sock.sendall(b"f")
            answer = self.sock.recv(1)
        except OSError as exc:
            answer = b""
            why = str(exc)
        else:
            why = "the run's driver said so (its output has why)"
        finally:
            self.busy = False
        if answer != b"1":
            raise WorkspaceError(f"the worktree's files could not be checked out: {why}")
        done()


def _writes(args: tuple[Any, ...]) -> bool:
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITING)


# The process's one watch: an audit hook cannot be removed, only made inactive.
_WATCHES: list[_Watch] = []


def watch(workspace: Path, folder: str) -> None:
    """Check the worktree's files out on the first read of ``workspace`` outside
    ``folder`` (and ``.git``); nothing without a broker to ask. When they are there
    already (a run taken over from a driver whose steps had checked them out), the
    first read asks once, and the broker answers at once."""
    fd = os.environ.get(FILES_FD_ENV, "")
    if not fd.isdigit():
        return
    try:
        sock = socket.socket(fileno=int(fd))
    except OSError:
        return  # not handed to this process: a step's, say, which sees the files anyway
    sock.setblocking(True)
    if not _WATCHES:
        _WATCHES.append(_Watch())
        sys.addaudithook(_WATCHES[0].audit)  # for the process's life: one drive of one run
    found = _WATCHES[0]
    found.point(workspace, folder, sock)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        found.look_at(path)
        return _STAT(path, *args, **kwargs)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        found.look_at(path)
        return _LSTAT(path, *args, **kwargs)

    os.stat, os.lstat = stat, lstat


def done() -> None:
    """The worktree holds its files now (a step, or a read above, checked them out)."""
    for found in _WATCHES:
        found.active = False
    os.stat, os.lstat = _STAT, _LSTAT
