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
pickled, and rebuilt from that record on replay (``from_record``).
"""

from __future__ import annotations

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
    """The JSON-safe record of an exception: its type name, message and fields."""
    if isinstance(exc, CIRunnerError):
        fields = {k: v for k, v in exc.fields.items() if _json_safe(v)}
        fields.setdefault("type", type(exc).__name__)
        return {"type": type(exc).__name__, "message": exc.message, "fields": fields}
    message = str(exc) or type(exc).__name__
    return {"type": type(exc).__name__, "message": message, "fields": {"type": type(exc).__name__}}


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    import errno
    import sqlite3

    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and (
        "disk is full" in str(exc) or "disk I/O error" in str(exc))


def from_record(record: dict[str, Any]) -> CIRunnerError:
    """Rebuild a stored error. Unknown types come back as ``StepFailed``."""
    cls = _BY_NAME.get(record.get("type", ""), StepFailed)
    fields = dict(record.get("fields") or {})
    return cls(str(record.get("message", "")), **fields)


def _json_safe(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
