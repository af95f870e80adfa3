"""A step's own folder for files it hands back (``step.run(files=True)``).

Made empty before each attempt and named to the command by ``CI_RUNNER_FILES``; what
the command leaves there comes back, masked, as the result's ``files`` (``{name:
text}``, 256 KiB per file and 1 MiB in all at most), then the folder is removed. It
lies in the run's private ``/tmp``, which a light step sees as its own (a heavy
step's, in the worktree, which its container sees at ``/workspace``).

The step owns that folder and the one above it, and the broker that makes, reads and
removes them runs with the server's powers outside the sandbox. So nothing here
follows a link the step may have put in their place: every folder is opened from a
folder the step cannot replace (the run's ``/tmp``, or its worktree) with
``O_NOFOLLOW``, files are read through those descriptors only if they are regular
files, ownership is handed over with ``fchown``, and removal goes by descriptor
(folder descriptors all the way down). A link where a folder should be is removed, never
followed: a step cannot make the broker read, create, chown or delete anything of the
host's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner.errors import NonRetryableError

if TYPE_CHECKING:
    from ci_runner.dispatch.broker import RunContext

ENV = "CI_RUNNER_FILES"
MAX_FILE = 256 << 10
MAX_TOTAL = 1 << 20
FOLDER = ".ci-runner-files"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StepFiles:
    """One attempt's folder: ``anchor / .ci-runner-files / name`` on the host,
    ``inside`` as the command sees it."""

    def __init__(self, anchor: Path, name: str, inside: Path,
                 owner: tuple[int, int] | None) -> None:
        self.anchor = anchor
        self.name = name
        self.inside = inside
        self.owner = owner

    @classmethod
    def make(cls, ctx: RunContext, label: str, attempt: int, *, light: bool) -> StepFiles:
        from ci_runner.dispatch.confine import scratch

        confinement = ctx.confinement
        name = f"{hashlib.sha256(label.encode()).hexdigest()[:16]}-{attempt}"
        if not light:  # a container sees the worktree (only) at /workspace
            box = cls(ctx.workspace, name, Path("/workspace") / FOLDER / name, None)
        else:
            tmp = confinement.tmp if confinement.tmp is not None else scratch(ctx.run_id) / "tmp"
            owner = (confinement.ids if confinement.kind == "bwrap" and confinement.ids
                     else None)
            inside = (Path("/tmp") if confinement.kind == "bwrap" else tmp)  # noqa: S108
            box = cls(tmp, name, inside / FOLDER / name, owner)
        box._create()
        return box

    @property
    def host(self) -> Path:
        return self.anchor / FOLDER / self.name

    def _create(self) -> None:
        self.anchor.mkdir(parents=True, exist_ok=True)
        with _opened(self.anchor) as anchor, _folder(anchor, FOLDER, self.owner) as parent:
            _remove(parent, self.name)
            os.mkdir(self.name, 0o700, dir_fd=parent)
            with _opened(self.name, dir_fd=parent) as own:
                if self.owner is not None:
                    os.fchown(own, *self.owner)

    def collect(self, masker: Any) -> dict[str, str]:
        """The files the command left (regular files at the top, nothing else), masked;
        the folder is gone afterwards."""
        found: dict[str, str] = {}
        total = 0
        try:
            with _opened(self.anchor) as anchor, _step_opened(FOLDER, anchor) as parent, \
                    _step_opened(self.name, parent) as own:
                for name in sorted(os.listdir(own)):  # noqa: PTH208 - by descriptor
                    data = _read_regular(own, name)
                    if data is None:
                        continue
                    total += len(data)
                    if total > MAX_TOTAL:
                        raise NonRetryableError("the step's files hold more than 1 MiB")
                    found[name] = masker.mask(data.decode("utf-8", "replace"))
        finally:
            self.remove()
        return found

    def remove(self) -> None:
        with contextlib.suppress(OSError), _opened(self.anchor) as anchor, \
                _opened(FOLDER, dir_fd=anchor) as parent:
            _remove(parent, self.name)


@contextlib.contextmanager
def _opened(path: Path | str, *, dir_fd: int | None = None) -> Any:
    fd = os.open(path, _DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _step_opened(name: str, parent: int) -> Any:
    """A folder the step made or kept, opened for reading: one it replaced is an error
    of the step's."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        raise _replaced(exc) from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder(parent: int, name: str, owner: tuple[int, int] | None) -> Any:
    """``name`` in ``parent`` as a folder of ours: made if missing, and whatever else
    is there under that name (a link, a file) removed first."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise
        _remove(parent, name)
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR, dir_fd=parent)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        yield fd
    finally:
        os.close(fd)


def _remove(parent: int, name: str) -> None:
    """Remove ``name`` from the folder ``parent``, whatever it is, following nothing."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        _remove_tree(parent, name, depth=0)
    else:
        os.unlink(name, dir_fd=parent)


def _remove_tree(parent: int, name: str, *, depth: int) -> None:
    """A folder and all it holds, by descriptor: links inside are removed, not followed
    (``shutil.rmtree`` takes ``dir_fd`` only from Python 3.11). Past 100 levels the
    rest is left to the removal of the run's scratch folder."""
    if depth > 100:
        raise OSError(errno.ELOOP, "folders nested too deep to remove here", name)
    with _opened(name, dir_fd=parent) as fd:
        for entry in os.listdir(fd):  # noqa: PTH208 - by descriptor
            info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                _remove_tree(fd, entry, depth=depth + 1)
            else:
                os.unlink(entry, dir_fd=fd)
    os.rmdir(name, dir_fd=parent)


def _read_regular(folder: int, name: str) -> bytes | None:
    """The file's bytes if it is a regular file (not a link, folder, pipe, device)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder)
    except OSError:
        return None  # a link (ELOOP), or gone
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise NonRetryableError(f"{name}: the step wrote more than {MAX_FILE >> 10} KiB to it")
    return data


def _replaced(exc: OSError) -> NonRetryableError:
    if exc.errno == errno.ENOENT:
        return NonRetryableError("the step removed its files folder ($CI_RUNNER_FILES)")
    return NonRetryableError("the step put something else (a link?) in place of its files"
                             " folder ($CI_RUNNER_FILES); nothing of it was read")
