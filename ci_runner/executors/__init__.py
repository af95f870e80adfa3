"""Where a step's command runs: one ``Executor`` interface, a host and a container
implementation (the container one imports the docker SDK only when it runs)."""

from __future__ import annotations

from ci_runner.executors.base import (
    CommandResult,
    CommandSpec,
    Executor,
    OutputSink,
    StartInfo,
)
from ci_runner.executors.container import (
    ContainerExecutor,
    Removals,
    docker_client,
    ready_client,
    remove_containers,
)
from ci_runner.executors.host import (
    HostExecutor,
    kill_process_group,
    scrubbed_env,
    stop_processes_in,
)
from ci_runner.executors.masking import MASK, Masker

__all__ = [
    "MASK",
    "CommandResult",
    "CommandSpec",
    "ContainerExecutor",
    "Executor",
    "HostExecutor",
    "Masker",
    "OutputSink",
    "Removals",
    "StartInfo",
    "docker_client",
    "kill_process_group",
    "ready_client",
    "remove_containers",
    "scrubbed_env",
    "stop_processes_in",
]
