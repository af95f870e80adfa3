"""In the pipeline process: reads of a worktree whose files are not checked out yet fail.

A run's worktree holds only its ``.ci/`` folder until a step needs the rest (a
``step.run`` or ``step.do`` that runs, artifacts: see ``dispatch.runs``), so that a
run served from the cache checks out nothing else. Code of the pipeline outside its
steps that reads the repo's files before then would see a tree with nothing in it: a
glob matching nothing, a listing of ``.ci`` alone, and pick its steps from that. This
audit hook makes such a read (``open`` for reading, ``os.listdir`` and ``os.scandir``,
which ``glob``, ``Path.iterdir``, ``Path.glob`` and ``os.walk`` use) fail instead,
saying what to do. ``Path.exists()`` and other ``stat`` calls raise no audit event:
they are not caught, which the README says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ci_runner.errors import UsageError

_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


class _Guard:
    def __init__(self, workspace: Path, folder: str) -> None:
        self.root = ""
        self.allowed: tuple[str, ...] = ()
        self.active = False
        self.point(workspace, folder)

    def point(self, workspace: Path, folder: str) -> None:
        self.root = os.path.realpath(workspace)
        self.allowed = tuple(str(Path(self.root, name)) for name in (folder, ".git"))
        self.active = True

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in _EVENTS:
            return
        if sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            return  # the import system looking along sys.path ("" is the worktree)
        if event == "open" and _writes(args):
            return  # a file the pipeline makes is its own; only reads see a missing tree
        target = args[0] if args else "."
        if target is None:
            target = "."
        if isinstance(target, int):
            return  # a descriptor: whatever it is, it was opened (and checked) before
        try:
            path = os.path.realpath(os.fsdecode(target))
        except (TypeError, ValueError):
            return
        inside = path == self.root or path.startswith(self.root + os.sep)
        if not inside or any(path == a or path.startswith(a + os.sep) for a in self.allowed):
            return
        shown = os.path.relpath(path, self.root)
        raise UsageError(
            f"the pipeline reads {shown!r} of its worktree outside a step, before any step"
            " needed the repo's files: until then the worktree holds only"
            f" {self.allowed[0].removeprefix(self.root + os.sep)}/ (a run served from the"
            " cache checks out nothing else); read it inside a step.do, which checks the"
            " files out first"
        )


def _writes(args: tuple[Any, ...]) -> bool:
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITING)


# The process's one guard: an audit hook cannot be removed, only made inactive.
_GUARDS: list[_Guard] = []


def guard(workspace: Path, folder: str) -> None:
    """Fail reads of ``workspace`` outside ``folder`` (and ``.git``) until ``filled``;
    nothing when the worktree already holds its files (a driver's takeover of a run
    whose steps had checked them out)."""
    from ci_runner.workspace import has_files

    if has_files(workspace):
        return
    if _GUARDS:
        _GUARDS[0].point(workspace, folder)
        return
    _GUARDS.append(_Guard(workspace, folder))
    sys.addaudithook(_GUARDS[0])  # for the process's life: one drive of one run


def filled() -> None:
    """The worktree holds its files now (a step checked them out)."""
    for found in _GUARDS:
        found.active = False
