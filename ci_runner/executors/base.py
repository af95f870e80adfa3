"""The one interface every executor implements, so steps never care where a command runs.

The host executor runs commands as local subprocesses, the container executor in
Docker containers; both implement the same ``Executor`` protocol. Specs and results
are frozen records so they can be logged, compared and journalled without surprises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypedDict

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
    # More values to mask (a workflow's ::add-mask:: of earlier steps), not in the env.
    masks: tuple[str, ...] = field(default=(), repr=False)
    # Set: ``::add-mask::VALUE`` lines are taken out of the output, VALUE masked from
    # then on and passed here (light steps).
    on_mask: Callable[[str], None] | None = field(default=None, repr=False, compare=False)


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


class StartInfo(TypedDict, total=False):
    """What ``on_start`` receives: how to find a step's command after a crash.

    One key per executor, JSON-safe so the caller can merge it into the step's
    journalled detail as is: ``pgid`` (host) is the process group to kill,
    ``container`` (container) the id of the step's container.
    """

    pgid: int
    container: str


class Executor(Protocol):
    """Runs one command to completion, streaming its masked output to ``on_output``."""

    async def run(
        self,
        spec: CommandSpec,
        on_output: OutputSink,
        *,
        on_start: Callable[[StartInfo], None] | None = None,
    ) -> CommandResult:
        """Run ``spec``; ``on_start`` gets a ``StartInfo`` as soon as the command exists.

        It is recorded so that a crashed runner's leftovers can be found later (killed,
        or adopted). Raises ``ExecutorError`` when the command cannot be started at all.
        """
        ...
