"""What a repo's ``.ci/pipeline.py`` works with: ``Pipeline``, its ``event`` and its ``step``.

``PipelineStep`` is the engine's ``Step`` plus CI: ``step.run`` runs a command as a
light step (an isolated subprocess in the run's worktree), with its output
streamed to the live view and to the step's log file, secrets masked.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ci_runner import paths
from ci_runner.engine.policy import RetryPolicy, seconds
from ci_runner.engine.step import Step, watched
from ci_runner.errors import CommandFailed, StepTimeout, UsageError

if TYPE_CHECKING:
    from ci_runner.dispatch.broker import BrokerClient


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
    #: How long the pipeline may run each time it is driven ("2 hours"; a wait for an
    #: approval or event does not count). It can shorten the server's timeout, not
    #: lengthen it; past it the run fails and its processes are stopped.
    timeout: ClassVar[float | str | None] = None
    #: Which submodules the run's worktree checks out: True, each one initialized in
    #: your clone; False, none; or a list of their paths. Read from the class's source
    #: before the pipeline is imported, so it must be written as such a literal.
    submodules: ClassVar[bool | Sequence[str]] = True

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
        self._only = set(metadata.get("only") or ())
        self._skip = set(metadata.get("skip") or ())
        self._no_cache = bool(metadata.get("no_cache"))
        # Once a wait (an approval gate) is left out by --only/--skip, everything after
        # it is skipped too: a deploy behind an unapproved gate must never run.
        self._gate_closed: str | None = None
        self._broker_client: BrokerClient | None = None
        self._files_ready = False
        self.parallel = step.parallel

    def _watch(self, name: object, coro: Coroutine[Any, Any, Any],
               site: tuple[str, int, str]) -> Coroutine[Any, Any, Any]:
        """For ``@watched``: a step called and never awaited fails the run."""
        return self._step._watch(name, coro, site)

    @property
    def _broker(self) -> BrokerClient:
        """The run's step broker: commands, secrets, caches and artifacts go through it."""
        if self._broker_client is None:
            from ci_runner.dispatch.broker import BrokerClient

            self._broker_client = BrokerClient.from_env()
        return self._broker_client

    # -- the engine's steps, with step selection -----------------------------------

    @watched
    async def do(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retries: RetryPolicy | dict[str, Any] | int | None = None,
        timeout: float | str | None = None,
        inputs: Sequence[str] | None = None,
    ) -> Any:
        """Run ``fn`` once; its JSON result is replayed ever after. With ``inputs``,
        an earlier result for the same input files (in this repo) is reused."""
        skipped = self._left_out_step(name, "do", None)
        if skipped is not None:
            return skipped.result
        return await self._cached(name, inputs, {"kind": "do", "do": name},
                                  lambda: self._step.do(name, self._with_files(fn),
                                                        retries=retries, timeout=timeout))

    def _with_files(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` run once the worktree holds its files: it may read them, and the
        worktree holds only ``.ci/`` until a step needs more (see ``dispatch.runs``).
        A step replayed or served from the cache never calls it."""
        async def body() -> Any:
            if not self._files_ready:
                await self._broker.call("files", {})
                self._got_files()
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result

        return body

    @watched
    async def sleep(self, name: str, duration: float | str) -> None:
        if self._left_out_step(name, "sleep", None) is None:
            await self._step.sleep(name, duration)

    @watched
    async def sleep_until(self, name: str, when: Any) -> None:
        if self._left_out_step(name, "sleep", None) is None:
            await self._step.sleep_until(name, when)

    @watched
    async def wait_for_event(self, name: str, event_type: str, **options: Any) -> Any:
        skipped = self._left_out_step(name, "event", None, gate=True)
        if skipped is not None:
            return skipped.result
        return await self._step.wait_for_event(name, event_type, **options)

    @watched
    async def wait_for_approval(self, name: str, **options: Any) -> Any:
        skipped = self._left_out_step(name, "event", {"approved_by": None, "skipped": True},
                                      gate=True)
        if skipped is not None:
            return skipped.result
        return await self._step.wait_for_approval(name, **options)

    async def redacted(self, text: str) -> str:
        """``text`` with the run's secrets (and values masked by its steps) as ``***``:
        a name built from a command's text can then be a step's name."""
        if not text:
            return text
        return str(await self._broker.call("redact", {"text": text}))

    @watched
    async def skip(self, name: str, reason: str) -> None:
        """Record a step that will not run, and why (``skipped`` in the view, its
        reason as ``skipped_because``); replayed like any step."""
        occurrence = self._step.occurrence(name)
        if self._host.request("peek", name=name, occurrence=occurrence)["state"] is None:
            self._host.request("record", name=name, occurrence=occurrence, kind="run",
                               status="skipped", result=dict(SKIPPED_RUN),
                               detail={"skipped": reason})

    @watched
    async def save_artifact(self, name: str, path: str) -> dict[str, Any]:
        """Keep one file of the worktree as an artifact of this run, under ``name``."""
        async def save() -> dict[str, Any]:
            items = await self._broker.call("artifacts", {
                "step": f"save_artifact:{name}", "path": str(path), "name": name})
            self._got_files()
            item: dict[str, Any] = items[0]
            return item

        result: dict[str, Any] = await self._step.do(f"save_artifact:{name}", save)
        return result

    def _got_files(self) -> None:
        """The broker checked the worktree's files out (for this step or an earlier one):
        the pipeline's own code may read them from now on (``dispatch.unfilled``)."""
        if not self._files_ready:
            from ci_runner.dispatch.unfilled import done

            done()
            self._files_ready = True

    def _left_out_step(
        self, name: str, kind: str, skipped_result: Any, *, gate: bool = False,
    ) -> Skipped | None:
        """A ``Skipped`` when --only/--skip leave the step out (it is recorded as
        skipped), else None. Free when no selection is active."""
        if not (self._only or self._skip or self._gate_closed):
            return None
        occurrence = self._step.next_occurrence(name)
        label = name if occurrence == 1 else f"{name}#{occurrence}"
        recorded = self._host.request("peek", name=name, occurrence=occurrence)["state"]
        if recorded is not None:
            if gate and recorded == "skipped":
                self._gate_closed = self._gate_closed or label
            return None  # replay: the engine returns what was recorded
        reason = self._left_out(name, label)
        if reason is None:
            return None
        self._step.occurrence(name)  # claim it: the next call of this name is the next one
        answer = self._host.request(
            "record", name=name, occurrence=occurrence, kind=kind, status="skipped",
            result=skipped_result, detail={"skipped": reason},
        )
        if gate:
            self._gate_closed = self._gate_closed or label
        return Skipped(answer["result"])

    def _left_out(self, name: str, label: str) -> str | None:
        if self._gate_closed is not None:
            return f"after {self._gate_closed!r}, which was left out"
        if self._only and not self._only & {name, label}:
            return "not in --only"
        if self._skip & {name, label}:
            return "in --skip"
        return None

    async def _cached(
        self, name: str, inputs: Sequence[str] | None, material: dict[str, Any],
        run: Callable[[], Any], artifacts: Sequence[str] = (),
    ) -> Any:
        """Run through the input-keyed cache when the step declares ``inputs``."""
        if not inputs or self._no_cache:
            return await run()
        occurrence = self._step.next_occurrence(name)
        if self._host.request("peek", name=name, occurrence=occurrence)["state"] is not None:
            return await run()  # replay
        # Computed by the broker from the commit's tree, never by pipeline code.
        key = await self._broker.call("cache_key", {"inputs": list(inputs),
                                                    "material": material})
        label = name if occurrence == 1 else f"{name}#{occurrence}"
        # A hit's artifacts are recorded for this run by the driver itself.
        hit = self._host.request("cache_get", key=key, step=label)["hit"]
        if hit is not None:
            self._step.occurrence(name)
            answer = self._host.request(
                "record", name=name, occurrence=occurrence, kind=material.get("kind", "do"),
                status="complete", result=hit["result"],
                detail={"cached": True, "cache_key": key, "from_run": hit["run_id"]},
            )
            return answer["result"]
        result = await run()
        if isinstance(result, dict) and result.get("exit_code") not in (None, 0):
            return result  # only a success is reused (check=False lets a failure get here)
        # The entry's artifacts are those the broker recorded for this step, if kept.
        self._host.request("cache_put", key=key, result=result, step=label,
                           with_artifacts=bool(artifacts))
        return result


    @watched
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
        network: bool | str | None = None,
        services: Mapping[str, str] | None = None,
        cache: Mapping[str, str] | None = None,
        memory: str = "2g",
        cpus: float = 2.0,
        inputs: Sequence[str] | None = None,
        artifacts: Sequence[str] = (),
        pids: int | None = None,
        log_cap: int | None = None,
        files: bool = False,
        add_mask: bool = False,
    ) -> dict[str, Any]:
        """Run ``cmd`` in the worktree; returns ``{exit_code, duration_s, output_tail}``.

        A list runs as is; a string runs through ``sh -c``. A non-zero exit fails the
        step (retried per ``retries``) unless ``check=False``. A light step has the
        host's network unless ``network=False`` (loopback only; a fork's run never has
        any). ``image=`` makes it a
        heavy step: a hardened container with the worktree at /workspace, no network
        unless ``network=True``, ``services={name: image}`` beside it on localhost,
        ``cache={name: path}`` volumes kept per repo between runs. With ``inputs``
        (globs of files at the run's sha), an earlier successful run of the same
        command on the same inputs in this repo is reused instead of running.
        ``artifacts`` (globs in the worktree) are kept with the run. ``pids`` is a
        light step's process limit (512 by default; forks past it fail). ``log_cap``
        is the most bytes its log keeps (64 MiB by default; the step runs on).
        ``files=True`` gives the command an empty folder of its own,
        named by ``$CI_RUNNER_FILES``: the files it leaves there come back as the
        result's ``files`` (``{name: text}``, masked), replayed with the result.
        ``add_mask=True``: an output line ``::add-mask::VALUE`` is taken out of the
        output and VALUE is masked everywhere from then on in the run (GitHub's).
        """
        from ci_runner.engine import policy as defaults

        if image is None and (services or cache):
            raise UsageError(f"step {name!r}: services and cache need image=")
        if image is None and network is not None and not isinstance(network, bool):
            raise UsageError(f"step {name!r}: a light step's network is True or False"
                             " (a Docker network's name needs image=)")
        command = Command(
            argv=_argv(name, cmd), env=dict(env or {}),
            secrets=[secrets] if isinstance(secrets, str) else list(secrets),
            workdir=self._workdir(cwd), check=check,
            timeout_s=(seconds(timeout, what="timeout") if timeout is not None
                       else defaults.DEFAULT_TIMEOUT_S),
            image=image, network=network, services=dict(services or {}),
            cache=_cache_mounts(name, cache), memory=memory, cpus=cpus,
            artifacts=list(artifacts), pids=pids, log_cap=log_cap, files=files,
            add_mask=add_mask,
        )
        policy = RetryPolicy.parse(retries)
        skipped = self._left_out_step(name, "run", dict(SKIPPED_RUN))
        if skipped is not None:
            result: dict[str, Any] = skipped.result
            return result

        async def attempts() -> Any:
            occurrence = self._step.occurrence(name)

            async def body(attempt: int, previous: dict[str, Any] | None) -> dict[str, Any]:
                return await self._execute(name, occurrence, attempt, command, previous)

            # The executor times out first and stops the processes; this is the backstop.
            return await self._step.attempts(
                name, occurrence, "run", body, policy=policy,
                timeout_s=command.timeout_s + 30.0, on_failure=_failure_detail,
            )

        # What keys the cache besides the inputs; only built for steps that have inputs.
        material = {"kind": "run", "cmd": command.argv, "image": command.image,
                    "env": sorted(command.env.items()), "secrets": sorted(command.secrets),
                    "cwd": str(command.workdir.relative_to(self._workspace)),
                    "services": sorted(command.services.items()),
                    "network": command.network, "artifacts": command.artifacts,
                    } if inputs else {}
        result = await self._cached(name, inputs, material, attempts, command.artifacts)
        return result

    def _workdir(self, cwd: str | None) -> Path:
        if cwd is None:
            return self._workspace
        # Checked by name only: the worktree's files may not be checked out yet (a
        # cached step needs none), and the broker checks the real path before it runs.
        target = Path(os.path.normpath(self._workspace / cwd))
        if not target.is_relative_to(self._workspace):
            raise UsageError(f"cwd {cwd!r} is outside the run's worktree")
        return target

    async def _execute(
        self,
        name: str,
        occurrence: int,
        attempt: int,
        command: Command,
        previous: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """One attempt, run by the broker: it resolves the secrets, picks the sandbox or
        container, writes the log and masks; output and the process group come back
        here for the live view and the journal."""
        label = name if occurrence == 1 else f"{name}#{occurrence}"

        def on_event(event: dict[str, Any]) -> None:
            if "output" in event:
                self._host.notify("output", name=name, occurrence=occurrence,
                                  text=event["output"])
            elif "started" in event:
                self._host.notify("set_detail", name=name, occurrence=occurrence,
                                  detail=event["started"])

        outcome: dict[str, Any] = await self._broker.call("exec", {
            "name": name, "occurrence": occurrence, "attempt": attempt,
            "argv": command.argv, "env": command.env, "secrets": command.secrets,
            "cwd": str(command.workdir.relative_to(self._workspace)),
            "timeout_s": command.timeout_s, "image": command.image,
            "network": command.network, "services": command.services,
            "cache": command.cache, "memory": command.memory, "cpus": command.cpus,
            "previous": previous, "pids": command.pids, "log_cap": command.log_cap,
            **({"files": True} if command.files else {}),
            **({"add_mask": True} if command.add_mask else {}),
        }, on_event)
        self._got_files()
        started = outcome.pop("started", None)
        if started is not None:  # a short step's detail, written with its result
            self._host.notify("set_detail", name=name, occurrence=occurrence, detail=started)
        display = str(outcome.pop("display"))
        timed_out = bool(outcome.pop("timed_out"))
        result: dict[str, Any] = outcome
        if command.artifacts:
            # Kept whether the command passed or not: a failed test's report matters most.
            result["artifacts"] = await self._broker.call(
                "artifacts", {"step": label, "patterns": command.artifacts})
        if timed_out:
            raise StepTimeout(
                f"step {name!r} timed out after {command.timeout_s:g}s and its processes"
                " were stopped",
                exit_code=outcome["exit_code"], output_tail=outcome["output_tail"],
            )
        if command.check and outcome["exit_code"] != 0:
            raise CommandFailed(
                f"step {name!r}: `{display}` exited with code {outcome['exit_code']}",
                exit_code=outcome["exit_code"], output_tail=outcome["output_tail"],
            )
        return result


SKIPPED_RUN = {"exit_code": None, "duration_s": 0.0, "output_tail": "", "skipped": True}


@dataclass(frozen=True)
class Skipped:
    """A step that --only/--skip left out, and what it returns."""

    result: Any


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
    network: bool | str | None = None  # None: the default (a light step's host network)
    services: dict[str, str] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)
    memory: str = "2g"
    cpus: float = 2.0
    artifacts: list[str] = field(default_factory=list)
    pids: int | None = None
    log_cap: int | None = None
    files: bool = False
    add_mask: bool = False


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
