"""What a repo's ``.ci/pipeline.py`` works with: ``Pipeline``, its ``event`` and its ``step``.

``PipelineStep`` is the engine's ``Step`` plus CI: ``step.run`` runs a command as a
light step (an isolated subprocess in the run's worktree), with its output
streamed to the live view and to the step's log file, secrets masked.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ci_runner import paths
from ci_runner.engine import leases
from ci_runner.engine.policy import RetryPolicy, seconds
from ci_runner.engine.step import Step
from ci_runner.errors import CommandFailed, StepTimeout, UsageError


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
    ) -> dict[str, Any]:
        """Run ``cmd`` in the worktree; returns ``{exit_code, duration_s, output_tail}``.

        A list runs as is; a string runs through ``sh -c``. A non-zero exit fails the
        step (retried per ``retries``) unless ``check=False``.
        """
        argv = _argv(name, cmd)
        if isinstance(secrets, str):
            secrets = [secrets]
        timeout_s = seconds(timeout, what="timeout") if timeout is not None else None
        workdir = self._workdir(cwd)
        occurrence = self._step.occurrence(name)
        policy = RetryPolicy.parse(retries)

        async def body(attempt: int) -> dict[str, Any]:
            return await self._execute(
                name, occurrence, attempt, argv, dict(env or {}), list(secrets), workdir,
                timeout_s, check,
            )

        from ci_runner.engine import policy as defaults

        limit = (timeout_s or defaults.DEFAULT_TIMEOUT_S) + 30.0  # the executor times out first
        result: dict[str, Any] = await self._step.attempts(
            name, occurrence, "run", body, policy=policy, timeout_s=limit,
            detail={"cmd": _display(argv)}, on_failure=_failure_detail,
        )
        return result

    def _workdir(self, cwd: str | None) -> Path:
        if cwd is None:
            return self._workspace
        target = (self._workspace / cwd).resolve()
        if not target.is_relative_to(self._workspace.resolve()):
            raise UsageError(f"cwd {cwd!r} is outside the run's worktree")
        return target

    async def _execute(
        self,
        name: str,
        occurrence: int,
        attempt: int,
        argv: list[str] | str,
        env: dict[str, str],
        secret_names: list[str],
        workdir: Path,
        timeout_s: float | None,
        check: bool,
    ) -> dict[str, Any]:
        from ci_runner.executors import CommandSpec, HostExecutor
        from ci_runner.secrets import resolve_secrets

        secret_file = self._metadata.get("secrets_file")
        values = resolve_secrets(
            secret_names, environ=os.environ,
            secrets_file=Path(secret_file) if secret_file else None,
        )
        log_path = self._logs / paths.step_log_name(name, occurrence)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- attempt {attempt}: {_display(argv)} ({time.strftime('%H:%M:%S')})\n")

            def on_output(text: str) -> None:
                log.write(text)
                log.flush()
                self._host.notify("output", name=name, occurrence=occurrence, text=text)

            def on_start(started: Mapping[str, Any]) -> None:
                # Recorded so a runner that takes this run over can stop the group (or
                # adopt the container), never a recycled pid's: host and start time match.
                detail: dict[str, Any] = {
                    "cmd": _display(argv), "attempt": attempt, "log": str(log_path),
                    "host": socket.gethostname(), **started,
                }
                if isinstance(started.get("pgid"), int):
                    detail["pgid_start"] = leases.start_time(started["pgid"])
                self._host.notify("set_detail", name=name, occurrence=occurrence, detail=detail)

            spec = CommandSpec(argv=argv, cwd=workdir, env=env, secrets=values,
                               timeout_s=timeout_s)
            outcome = await HostExecutor().run(spec, on_output, on_start=on_start)
            log.write(f"--- exit code {outcome.exit_code} after {outcome.duration_s:.3f}s\n")
        result = {"exit_code": outcome.exit_code, "duration_s": round(outcome.duration_s, 6),
                  "output_tail": outcome.output_tail}
        if outcome.timed_out:
            raise StepTimeout(
                f"step {name!r} timed out after {timeout_s:g}s and its processes were killed",
                exit_code=outcome.exit_code, output_tail=outcome.output_tail,
            )
        if check and outcome.exit_code != 0:
            raise CommandFailed(
                f"step {name!r}: `{_display(argv)}` exited with code {outcome.exit_code}",
                exit_code=outcome.exit_code, output_tail=outcome.output_tail,
            )
        return result


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
