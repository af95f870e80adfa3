"""Where a light step's command runs: one ``Executor`` interface, a host implementation."""

from __future__ import annotations

from ci_runner.executors.base import CommandResult, CommandSpec, Executor, OutputSink
from ci_runner.executors.host import HostExecutor, kill_process_group, scrubbed_env
from ci_runner.executors.masking import MASK, Masker

__all__ = [
    "MASK",
    "CommandResult",
    "CommandSpec",
    "Executor",
    "HostExecutor",
    "Masker",
    "OutputSink",
    "kill_process_group",
    "scrubbed_env",
]
