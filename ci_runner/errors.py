"""Every error ci-runner raises on purpose, in one tree.

The CLI catches ``CIRunnerError``, prints its one-line message in red and exits
non-zero; anything else escaping is a bug and keeps its traceback.

    CIRunnerError
    ├── UsageError                  bad input from the user: exit 2
    │   ├── NotAGitRepository
    │   ├── PipelineNotFound        no .ci/pipeline.py, or no Pipeline class in it
    │   ├── PipelineLoadError       the pipeline file failed to import
    │   └── RunNotFound
    ├── InvalidState                the run is not in a state that allows the action
    ├── WorkspaceError              git could not fork, snapshot or remove a worktree
    ├── StepFailed                  a step failed after its retries (replays as itself)
    │   ├── NonRetryableError       raised by pipeline code: fail now, no retry
    │   ├── CommandFailed           a light step exited non-zero
    │   ├── StepTimeout             a step ran past its timeout
    │   ├── RunTimeout              the whole run ran past its timeout
    │   └── PipelineCrashed         the pipeline process died mid-step
    ├── EventTimeout                wait_for_event gave up (catchable)
    ├── Rejected                    a wait_for_approval was rejected (catchable)
    ├── NondeterminismError         replay met a step that differs from the recorded one
    ├── LeaseLost                   another process owns the run now; stop committing
    └── ExecutorError               a command could not be started at all

    Cancelled (BaseException)       the run was cancelled; author code that catches
                                    Exception cannot swallow it

Errors are stored as ``{"type", "message", "fields"}`` JSON (``to_record``), never
pickled, and rebuilt from that record on replay (``from_record``). An error that
came out of a pipeline's own code also says where (``note_origin``): ``location``
(``path:line`` in the user's repository) and ``traceback``, its frames outside
ci-runner's own code, outermost first (``{"file", "line", "function", "code"}``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CIRunnerError(Exception):
    """Root of every error ci-runner raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class UsageError(CIRunnerError):
    exit_code = 2


class NotAGitRepository(UsageError):
    pass


class PipelineNotFound(UsageError):
    pass


class PipelineLoadError(UsageError):
    pass


class RunNotFound(UsageError):
    pass


class InvalidState(CIRunnerError):
    exit_code = 2


class WorkspaceError(CIRunnerError):
    pass


class StepFailed(CIRunnerError):
    """A step failed for good. ``fields["type"]`` names the original exception type."""


class NonRetryableError(StepFailed):
    """Raise from a step to fail it at once, without the remaining retries."""


class CommandFailed(StepFailed):
    pass


class StepTimeout(StepFailed):
    pass


class RunTimeout(StepFailed):
    pass


class PipelineCrashed(StepFailed):
    pass


class EventTimeout(CIRunnerError):
    pass


class Rejected(CIRunnerError):
    """An approval was rejected; fails the run unless the pipeline catches it."""


class NondeterminismError(CIRunnerError):
    pass


class LeaseLost(CIRunnerError):
    pass


class ExecutorError(CIRunnerError):
    pass


class Cancelled(BaseException):
    """The run was cancelled. A BaseException so ``except Exception`` cannot swallow it."""


_BY_NAME: dict[str, type[CIRunnerError]] = {
    cls.__name__: cls
    for cls in (
        CIRunnerError, UsageError, NotAGitRepository, PipelineNotFound, PipelineLoadError,
        RunNotFound, InvalidState, WorkspaceError, StepFailed, NonRetryableError,
        CommandFailed, StepTimeout, RunTimeout, PipelineCrashed, EventTimeout, Rejected,
        NondeterminismError,
        LeaseLost, ExecutorError,
    )
}


def to_record(exc: BaseException) -> dict[str, Any]:
    """The JSON-safe record of an exception: its type name, message and fields, and
    where in the pipeline's code it came from when that was noted (``note_origin``)."""
    if isinstance(exc, CIRunnerError):
        fields = {k: v for k, v in exc.fields.items() if _json_safe(v)}
        fields.setdefault("type", type(exc).__name__)
        record = {"type": type(exc).__name__, "message": exc.message, "fields": fields}
    else:
        message = str(exc) or type(exc).__name__
        record = {"type": type(exc).__name__, "message": message,
                  "fields": {"type": type(exc).__name__}}
    origin = noted_origin(exc)
    if origin is None and getattr(exc, _SITE, None):
        origin = note_origin(exc, origin_frames(exc))  # no one renamed them: as they are
    if origin is not None:
        record.update(origin)
    return record


# -- where an error came from in the pipeline's code ------------------------------------

_ORIGIN = "_ci_runner_origin"
_SITE = "_ci_runner_site"
# The short form's frames: the user's own first, then where it was raised (a library's
# frames, say), innermost kept.
TRACEBACK_FRAMES = 10
_RAISED_FRAMES = 3
_PACKAGE = str(Path(__file__).parent) + os.sep


def _machinery() -> tuple[tuple[str, ...], set[str]]:
    """Folders and files of the plumbing a pipeline's error passes through (ci-runner,
    the event loop, the thread of a plain ``def run``): never where its bug is."""
    import asyncio
    import concurrent.futures
    import threading

    folders = (_PACKAGE, str(Path(asyncio.__file__).parent) + os.sep,
               str(Path(concurrent.futures.__file__).parent) + os.sep, "<frozen ")
    return folders, {threading.__file__}


def note_site(exc: BaseException, frames: list[dict[str, Any]]) -> None:
    """Say where ``exc`` was caused when its traceback does not: a step called without
    ``await`` is found later, elsewhere, but the call's own line is what to fix."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _SITE, frames)


def origin_frames(exc: BaseException) -> list[dict[str, Any]]:
    """Where ``exc`` came from: its noted site, else its frames outside that plumbing,
    outermost first; for an error a step raised from the pipeline's own function
    (``step.do``), that function's frames follow (the error's cause, as Python chains
    it). ``note_origin`` makes it short."""
    import traceback

    site: list[dict[str, Any]] | None = getattr(exc, _SITE, None)
    if site:
        return list(site)
    folders, files = _machinery()
    chain = [exc]
    if isinstance(exc, CIRunnerError) and exc.__cause__ is not None and not isinstance(
            exc.__cause__, CIRunnerError):
        chain.append(exc.__cause__)
    frames: list[dict[str, Any]] = []
    for link in chain:
        # A deep recursion has a thousand frames: its innermost hundred are plenty.
        for frame in traceback.extract_tb(link.__traceback__)[-100:]:
            if frame.filename.startswith(folders) or frame.filename in files:
                continue
            frames.append({"file": frame.filename, "line": frame.lineno,
                           "function": frame.name, "code": (frame.line or "")[:240]})
    return frames


def note_origin(
    exc: BaseException, frames: list[dict[str, Any]],
    rename: Callable[[str], str | None] = lambda _path: None,
) -> dict[str, Any] | None:
    """Keep on ``exc`` where it came from, for ``to_record``: ``frames`` (see
    ``origin_frames``) with each file renamed by ``rename`` (a path in the user's
    repository, or None to keep it as is), and the innermost frame in a renamed file
    (the user's) as its ``location``. Noted once: the first note stands. Returns the
    origin ``exc`` has now, if any."""
    if getattr(exc, _ORIGIN, None) is not None or not frames:
        return noted_origin(exc)
    shown: list[dict[str, Any]] = []
    users: list[int] = []
    for frame in frames:
        renamed = rename(str(frame["file"]))
        if renamed is not None:
            users.append(len(shown))
        shown.append({**frame, "file": renamed or frame["file"]})
    last = shown[users[-1]] if users else shown[-1]
    location = f"{last['file']}:{last['line']}"
    if len(shown) > TRACEBACK_FRAMES:  # a library's depths must not push the user's out
        raised = range(max(len(shown) - _RAISED_FRAMES, 0), len(shown))
        keep = sorted({*users, *raised})[-TRACEBACK_FRAMES:]
        shown = [shown[i] for i in keep]
    origin = {"location": location, "traceback": shown}
    with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
        setattr(exc, _ORIGIN, origin)
    return origin


def noted_origin(exc: BaseException) -> dict[str, Any] | None:
    """What ``note_origin`` kept on ``exc``, if anything."""
    origin: dict[str, Any] | None = getattr(exc, _ORIGIN, None)
    return origin


def is_ours(type_name: str) -> bool:
    """Whether ``type_name`` is one of ci-runner's errors (else the pipeline's code, or
    a library it called, raised it)."""
    return type_name in _BY_NAME or type_name == "Cancelled"


def error_line(record: dict[str, Any]) -> str:
    """A stored error in one line (for stderr): its message, and where, when the pipeline
    made the mistake and the message does not say it already."""
    message = str(record.get("message", ""))
    location = record.get("location")
    if location and location not in message and record.get("type") in _MISUSE:
        message += f" (at {location})"
    return message


def error_lines(record: dict[str, Any]) -> list[str]:
    """A stored error as a person reads it: ``error: Type: message`` (the type when the
    pipeline's own code raised it), then where: for a bug in the pipeline, its short
    traceback (``path:line in function: code``, outermost first); for a misuse of
    ci-runner's API, the line that made it."""
    message = str(record.get("message", ""))
    raised = str((record.get("fields") or {}).get("type") or record.get("type") or "")
    foreign = bool(raised) and not is_ours(raised)
    lines = [f"error: {raised}: {message}" if foreign else f"error: {message}"]
    frames = record.get("traceback") or []
    if foreign and frames:
        for frame in frames:
            code = f": {frame['code']}" if frame.get("code") else ""
            lines.append(f"  {frame['file']}:{frame['line']} in {frame['function']}{code}")
    elif record.get("location") and raised in _MISUSE and record["location"] not in message:
        lines.append(f"  at {record['location']}")
    return lines


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    import errno
    import sqlite3

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and (
        "disk is full" in str(exc) or "disk I/O error" in str(exc))


# A mistake in how the pipeline uses ci-runner: the line that made it is worth showing
# (for a failed command or a rejection, the step's name says all).
_MISUSE = {"UsageError", "PipelineLoadError", "PipelineNotFound", "NonRetryableError",
           "StepFailed", "NondeterminismError"}


def from_record(record: dict[str, Any]) -> CIRunnerError:
    """Rebuild a stored error. Unknown types come back as ``StepFailed``."""
    cls = _BY_NAME.get(record.get("type", ""), StepFailed)
    fields = dict(record.get("fields") or {})
    return cls(str(record.get("message", "")), **fields)


def _json_safe(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
