"""The one interface every executor implements, so steps never care where a command runs.

The host executor runs commands as local subprocesses; a Docker executor will
implement the same ``Executor`` protocol. Specs and results are frozen records so
they can be logged, compared and journalled without surprises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from pathlib import Path

OutputSink: TypeAlias = Callable[[str], None]
"""Receives masked output text as it arrives (the live view and the step's log file)."""


@dataclass(frozen=True)
class CommandSpec:
    """One command to run for a light step.

    ``argv`` as a list runs directly, never through a shell; a string runs as
    ``["sh", "-c", argv]``, explicitly. ``secrets`` (NAME -> value) are put in the
    environment and masked in every piece of output; they are left out of ``repr``
    so a logged spec cannot leak them.
    """

    argv: list[str] | str
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float | None = None


@dataclass(frozen=True)
class CommandResult:
    """How a command ended.

    ``exit_code`` is the shell's convention: 128 + N when killed by signal N, 124 on
    timeout. ``output_tail`` is the last 20 lines (at most 4000 characters) of the
    combined stdout and stderr, already masked.
    """

    exit_code: int
    duration_s: float
    output_tail: str
    timed_out: bool


class Executor(Protocol):
    """Runs one command to completion, streaming its masked output to ``on_output``."""

    async def run(
        self,
        spec: CommandSpec,
        on_output: OutputSink,
        *,
        on_start: Callable[[int], None] | None = None,
    ) -> CommandResult:
        """Run ``spec``; ``on_start`` gets the process group id as soon as it exists.

        The group id is recorded so that a crashed runner's leftovers can be killed
        later. Raises ``ExecutorError`` when the command cannot be started at all.
        """
        ...
