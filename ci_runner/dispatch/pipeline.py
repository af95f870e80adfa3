"""What a repo's ``.ci/pipeline.py`` works with: ``Pipeline``, its ``event`` and its ``step``.

``PipelineStep`` is the engine's ``Step`` plus CI: ``step.run`` runs a command as a
light step (an isolated subprocess in the run's worktree), with its output
streamed to the live view and to the step's log file, secrets masked.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ci_runner import paths
from ci_runner.engine import leases
from ci_runner.engine.policy import RetryPolicy, seconds
from ci_runner.engine.step import Step
from ci_runner.errors import CommandFailed, StepTimeout, UsageError

if TYPE_CHECKING:
    from ci_runner.executors import Executor


@dataclass(frozen=True)
class PipelineEvent:
    """The ``event`` a pipeline's ``run`` receives."""

    payload: dict[str, Any]  # the params (--param k=v, or the webhook's)
    timestamp: float
    instance_id: str
    repo: str
    sha: str
    ref: str | None
    trigger: str  # cli | webhook | watch
    workspace: Path
    snapshot: bool = False  # ran on a snapshot of uncommitted changes


class Pipeline(ABC):
    """Subclass this in ``.ci/pipeline.py``; ``run`` may be ``async def`` or plain ``def``."""

    #: Name for ``--pipeline`` when a file defines several; defaults to the class name.
    name: ClassVar[str | None] = None

    @abstractmethod
    def run(self, event: PipelineEvent, step: PipelineStep) -> Any:
        """The pipeline: steps in order, in parallel, with sleeps and waits."""


class PipelineStep:
    """The engine's step API (``do``, ``sleep``, ``sleep_until``, ``wait_for_event``,
    ``wait_for_approval``, ``parallel``) plus ``run`` for commands."""

    def __init__(self, step: Step, metadata: Mapping[str, Any], host: Any) -> None:
        self._step = step
        self._metadata = metadata
        self._host = host
        self._run_id = str(metadata["run_id"])
        self._workspace = Path(metadata["workspace"])
        self._logs = paths.run_logs(self._run_id)  # resolved once, not per step
        self.do = step.do
        self.sleep = step.sleep
        self.sleep_until = step.sleep_until
        self.wait_for_event = step.wait_for_event
        self.wait_for_approval = step.wait_for_approval
        self.parallel = step.parallel


    async def run(
        self,
        name: str,
        cmd: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        timeout: float | str | None = None,
        retries: RetryPolicy | dict[str, Any] | int | None = None,
        cwd: str | None = None,
        check: bool = True,
        image: str | None = None,
        network: bool | str = False,
        services: Mapping[str, str] | None = None,
        cache: Mapping[str, str] | None = None,
        memory: str = "2g",
        cpus: float = 2.0,
    ) -> dict[str, Any]:
        """Run ``cmd`` in the worktree; returns ``{exit_code, duration_s, output_tail}``.

        A list runs as is; a string runs through ``sh -c``. A non-zero exit fails the
        step (retried per ``retries``) unless ``check=False``. ``image=`` makes it a
        heavy step: a hardened container with the worktree at /workspace, no network
        unless ``network=True``, ``services={name: image}`` beside it on localhost,
        ``cache={name: path}`` volumes kept per repo between runs.
        """
        from ci_runner.engine import policy as defaults

        if image is None and (services or cache or network):
            raise UsageError(f"step {name!r}: services, cache and network need image=")
        command = Command(
            argv=_argv(name, cmd), env=dict(env or {}),
            secrets=[secrets] if isinstance(secrets, str) else list(secrets),
            workdir=self._workdir(cwd), check=check,
            timeout_s=(seconds(timeout, what="timeout") if timeout is not None
                       else defaults.DEFAULT_TIMEOUT_S),
            image=image, network=network, services=dict(services or {}),
            cache=_cache_mounts(name, cache), memory=memory, cpus=cpus,
        )
        occurrence = self._step.occurrence(name)

        async def body(attempt: int, previous: dict[str, Any] | None) -> dict[str, Any]:
            return await self._execute(name, occurrence, attempt, command, previous)

        # The executor times out first and stops the processes; this is the backstop.
        limit = command.timeout_s + 30.0
        result: dict[str, Any] = await self._step.attempts(
            name, occurrence, "run", body, policy=RetryPolicy.parse(retries),
            timeout_s=limit, on_failure=_failure_detail,
        )
        return result

    def _workdir(self, cwd: str | None) -> Path:
        if cwd is None:
            return self._workspace
        target = (self._workspace / cwd).resolve()
        if not target.is_relative_to(self._workspace.resolve()):
            raise UsageError(f"cwd {cwd!r} is outside the run's worktree")
        return target

    def _executor(self, label: str, attempt: int, command: Command) -> Executor:
        from ci_runner.executors import HostExecutor

        if command.image is None:
            return HostExecutor()
        from ci_runner.executors import ContainerExecutor

        tenant = str(self._metadata.get("tenant", ""))
        return ContainerExecutor(
            command.image, network=command.network, services=command.services,
            caches={cache_volume(tenant, n): path for n, path in command.cache.items()},
            labels=self._labels(label) | {"ci-runner.attempt": str(attempt)},
            memory=command.memory, cpus=command.cpus, workspace=self._workspace,
        )

    def _labels(self, label: str) -> dict[str, str]:
        return {"ci-runner.run": self._run_id, "ci-runner.step": label}

    async def _execute(
        self,
        name: str,
        occurrence: int,
        attempt: int,
        command: Command,
        previous: dict[str, Any] | None,
    ) -> dict[str, Any]:
        from ci_runner.executors import CommandSpec, Masker
        from ci_runner.secrets import resolve_secrets

        label = name if occurrence == 1 else f"{name}#{occurrence}"
        secret_file = self._metadata.get("secrets_file")
        values = resolve_secrets(
            command.secrets, environ=os.environ,
            secrets_file=Path(secret_file) if secret_file else None,
        )
        # The command line itself may carry a secret (an f-string of os.environ...).
        display = Masker(values.values()).mask(_display(command.argv))
        log_path = self._logs / paths.step_log_name(name, occurrence)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        executor = self._executor(label, attempt, command)
        with log_path.open("a", encoding="utf-8") as log:

            def on_output(text: str) -> None:
                log.write(text)
                log.flush()
                self._host.notify("output", name=name, occurrence=occurrence, text=text)

            def on_start(started: Mapping[str, Any]) -> None:
                # Recorded so a runner that takes this run over can stop the group (or
                # adopt the container), never a recycled pid's: host and start time match.
                detail: dict[str, Any] = {
                    "cmd": display, "attempt": attempt, "log": str(log_path),
                    "host": socket.gethostname(), "image": command.image, **started,
                }
                if isinstance(started.get("pgid"), int):
                    detail["pgid_start"] = leases.start_time(started["pgid"])
                self._host.notify("set_detail", name=name, occurrence=occurrence, detail=detail)

            outcome = None
            if previous and previous.get("container") and command.image is not None:
                # The runner died while this step's container ran: take its result
                # (waiting for it if it still runs) instead of running it twice.
                log.write(f"--- adopting the container of attempt {previous.get('attempt')}\n")
                from ci_runner.executors import ContainerExecutor

                adopter = self._executor(label, int(previous.get("attempt") or 0), command)
                if isinstance(adopter, ContainerExecutor):
                    outcome = await adopter.adopt(self._labels(label), on_output)
            if outcome is None:
                log.write(f"--- attempt {attempt}: {display} ({time.strftime('%H:%M:%S')})\n")
                spec = CommandSpec(argv=command.argv, cwd=command.workdir, env=command.env,
                                   secrets=values, timeout_s=command.timeout_s)
                outcome = await executor.run(spec, on_output, on_start=on_start)
            log.write(f"--- exit code {outcome.exit_code} after {outcome.duration_s:.3f}s\n")
        result = {"exit_code": outcome.exit_code, "duration_s": round(outcome.duration_s, 6),
                  "output_tail": outcome.output_tail}
        if outcome.timed_out:
            raise StepTimeout(
                f"step {name!r} timed out after {command.timeout_s:g}s and its processes"
                " were stopped",
                exit_code=outcome.exit_code, output_tail=outcome.output_tail,
            )
        if command.check and outcome.exit_code != 0:
            raise CommandFailed(
                f"step {name!r}: `{display}` exited with code {outcome.exit_code}",
                exit_code=outcome.exit_code, output_tail=outcome.output_tail,
            )
        return result


@dataclass(frozen=True)
class Command:
    """Everything ``step.run`` was asked to do, checked before the first attempt."""

    argv: list[str] | str
    env: dict[str, str]
    secrets: list[str]
    workdir: Path
    check: bool
    timeout_s: float
    image: str | None = None
    network: bool | str = False
    services: dict[str, str] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)
    memory: str = "2g"
    cpus: float = 2.0


_CACHE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _cache_mounts(step: str, cache: Mapping[str, str] | None) -> dict[str, str]:
    for name, path in (cache or {}).items():
        if not _CACHE_NAME.match(name):
            raise UsageError(f"step {step!r}: cache name {name!r} must be letters, digits, . _ -")
        if not path.startswith("/"):
            raise UsageError(f"step {step!r}: cache path {path!r} must be absolute")
    return dict(cache or {})


def cache_volume(tenant: str, name: str) -> str:
    """A cache's Docker volume: scoped to the repo, so no repo sees another's cache."""
    return f"ci-runner-cache-{sha256(tenant.encode()).hexdigest()[:16]}-{name}"


def _argv(name: str, cmd: Sequence[str] | str) -> list[str] | str:
    if isinstance(cmd, str):
        if not cmd.strip():
            raise UsageError(f"step {name!r}: the command is empty")
        return cmd
    argv = list(cmd)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise UsageError(f"step {name!r}: the command must be a non-empty list of strings")
    return argv


def _display(argv: list[str] | str) -> str:
    return argv if isinstance(argv, str) else shlex.join(argv)


def _failure_detail(error: BaseException) -> dict[str, Any] | None:
    fields = getattr(error, "fields", {})
    if "exit_code" in fields:
        return {"exit_code": fields["exit_code"]}
    return None


Factory = Callable[[], Pipeline]
