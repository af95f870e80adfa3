"""The trusted side of a run's steps: the pipeline process asks, the broker acts.

A repo's pipeline code runs in a sandbox that holds nothing worth stealing: no
secrets, no database, no Docker socket, no other worktree. Whatever a step needs
beyond its own worktree is done here, in the driver's process, on the pipeline's
behalf, from what the run's stored metadata says (never from what the pipeline
claims):

- ``exec``: run a step's command, a light one in a sandbox of its own (bubblewrap,
  Landlock, or plain when the run's sandbox is off), a heavy one in a hardened
  container; resolve its secrets from the run's secrets file; write its log; mask
  secrets in everything that goes back. A run from a fork gets no secrets, no
  network and caches of its own, however the step is called.
- ``cache_key``: the input-keyed cache key, computed from the commit's tree.
- ``artifacts``: copy files of the worktree into the artifact store and record them.
- ``files``: check out the worktree's files (it holds only ``.ci/`` until a step needs
  them, see ``dispatch.runs``); ``exec`` and ``artifacts`` do it first themselves.

One thread with an event loop per run, talking length-framed JSON over a socket
pair whose other end the pipeline process inherits (``CI_RUNNER_BROKER_FD``).
Requests are served concurrently (``step.parallel``); a request the pipeline gives
up on is cancelled, and when the pipeline process goes away every command it
started is stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner import paths
from ci_runner.dispatch.confine import BROKER_FD_ENV  # the child's end of our socket
from ci_runner.errors import CIRunnerError, UsageError, from_record, to_record
from ci_runner.executors.limits import DEFAULT_PIDS, RunCgroup, StepCgroup

if TYPE_CHECKING:
    from docker import DockerClient

    from ci_runner.dispatch.confine import Confinement
    from ci_runner.dispatch.redact import Redactor
    from ci_runner.executors import Executor, Removals

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 << 20  # a request larger than this is refused, not read
# A step still running this long after its start has its detail (process group, sandbox)
# sent to the pipeline process for the journal; a shorter one's comes with its result.
# Above what a light step in bubblewrap takes (5-10 ms), so that it sends nothing extra.
ANNOUNCE_AFTER_S = 0.02


@dataclass(frozen=True)
class RunContext:
    """What the broker knows of its run, from the stored metadata (trusted)."""

    run_id: str
    tenant: str
    repo: Path  # the repository (or the server's bare mirror) the worktree is of
    workspace: Path
    sha: str
    secrets_file: Path | None
    untrusted: bool
    cache_scope: str  # the tenant, or the tenant and pull request for an untrusted run
    confinement: Confinement
    submodules: bool | list[str] = True  # which ones the worktree's checkout includes
    snapshot_store: str | None = None  # where an --include-uncommitted run's sha lives
    git_common_dir: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], confinement: Confinement) -> RunContext:
        tenant = str(metadata.get("tenant", ""))
        untrusted = bool(metadata.get("untrusted"))
        secrets = metadata.get("secrets_file")
        return cls(
            run_id=str(metadata["run_id"]), tenant=tenant, repo=Path(str(metadata["repo"])),
            workspace=Path(metadata["workspace"]), sha=str(metadata["sha"]),
            secrets_file=Path(secrets) if secrets and not untrusted else None,
            untrusted=untrusted, cache_scope=cache_scope(metadata),
            confinement=confinement, submodules=metadata.get("submodules", True),
            snapshot_store=metadata.get("snapshot_store"),
            git_common_dir=metadata.get("git_common_dir"),
        )


def cache_scope(metadata: Mapping[str, Any]) -> str:
    """Where a run's step cache and Docker caches live: its tenant's, or, for a run of
    a fork's pull request, one of that pull request's own (read-only access to the
    tenant's is the caller's business), as GitHub scopes a pull request's caches."""
    tenant = str(metadata.get("tenant", ""))
    if metadata.get("untrusted"):
        return f"{tenant}#pr-{metadata.get('pr') or 'unknown'}"
    return tenant


# -- framing ------------------------------------------------------------------------


async def _read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        header = await reader.readexactly(_HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise UsageError(f"a request of {size} bytes is over the broker's {MAX_MESSAGE}")
    try:
        data = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message = json.loads(data)
    if not isinstance(message, dict):
        raise UsageError("a broker message must be a JSON object")
    return message


def _frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return _HEADER.pack(len(data)) + data


# -- the pipeline process's side -------------------------------------------------------


class BrokerClient:
    """In the pipeline process: requests to the run's broker, several at once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._calls: dict[int, tuple[asyncio.Future[Any], Callable[[dict[str, Any]], None]]] = {}
        self._next = 0
        self._connecting: asyncio.Future[None] | None = None

    @classmethod
    def from_env(cls) -> BrokerClient:
        fd = os.environ.get(BROKER_FD_ENV)
        if not fd or not fd.isdigit():
            raise UsageError(
                "this pipeline process has no step broker: pipelines run through"
                " `ci-runner run` (or dispatch.runs.drive_run), not engine.drive directly"
            )
        return cls(int(fd))

    async def _connect(self) -> None:
        if self._writer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            sock = socket.socket(fileno=self._fd)
            reader, self._writer = await asyncio.open_connection(sock=sock)
            asyncio.get_running_loop().create_task(self._receive(reader))
            self._connecting.set_result(None)
        else:
            await self._connecting

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await _read(reader)
            if message is None:
                break
            call = self._calls.get(int(message.get("id", -1)))
            if call is None:
                continue
            future, on_event = call
            if "event" in message:
                on_event(message["event"])
            elif not future.done():
                if "error" in message:
                    future.set_exception(from_record(message["error"]))
                else:
                    future.set_result(message.get("result"))
        for future, _ in self._calls.values():
            if not future.done():
                future.set_exception(CIRunnerError("the step broker went away (the run's"
                                                   " driver stopped)"))

    async def call(
        self, op: str, args: dict[str, Any],
        on_event: Callable[[dict[str, Any]], None] = lambda _e: None,
    ) -> Any:
        await self._connect()
        assert self._writer is not None
        self._next += 1
        call_id = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (future, on_event)
        try:
            self._writer.write(_frame({"id": call_id, "op": op, "args": args}))
            return await future
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._writer.write(_frame({"id": call_id, "op": "cancel", "args": {}}))
            raise
        finally:
            del self._calls[call_id]


# -- the trusted side ----------------------------------------------------------------


class _Announcement:
    """A step's detail (its process group or container, its sandbox), sent to the
    pipeline process for the journal once the step has run ``ANNOUNCE_AFTER_S``: a
    runner that takes the run over needs it while the step runs. A step done sooner
    (most light steps) has it come back with its result: one message less each way."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send
        self._detail: dict[str, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, detail: dict[str, Any]) -> None:
        self._detail = detail
        self._timer = asyncio.get_running_loop().call_later(ANNOUNCE_AFTER_S, self._fire)

    def _fire(self) -> None:
        detail, self._detail = self._detail, None
        if detail is not None:
            self._send({"started": detail})

    def stop(self) -> dict[str, Any] | None:
        """The detail if it was not sent (it goes with the result then)."""
        if self._timer is not None:
            self._timer.cancel()
        detail, self._detail = self._detail, None
        return detail


class StepBroker:
    """Serves one run's pipeline process from a thread of the driver's process."""

    def __init__(
        self, context: RunContext, sock: socket.socket, *, redactor: Redactor | None = None,
        output: int | None = None, pipeline_log: Path | None = None,
        on_output: Callable[[str], None] | None = None, files: socket.socket | None = None,
    ) -> None:
        """``output``: a pipe of the pipeline process's stdout and stderr, copied to
        ``pipeline_log`` masked with ``redactor`` (which learns each secret resolved),
        and passed, masked, whole lines at a time, to ``on_output`` (the live view).
        ``files``: a socket on which the pipeline's code asks, a byte at a time, for the
        worktree's files (``dispatch.unfilled``); each is answered with one byte."""
        from ci_runner.dispatch.redact import Redactor

        self.context = context
        self._sock = sock
        self.redactor = redactor if redactor is not None else Redactor()
        self._output = output
        self._pipeline_log = pipeline_log
        self._on_output = on_output
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        # One Docker client for the run's heavy steps, connected in the background when
        # the pipeline names images; and their containers, removed while the run goes on.
        self._docker: asyncio.Future[DockerClient | None] | None = None
        self._removals: Removals | None = None
        self._closing = threading.Event()
        self._tree: Any = None
        self._db: Any = None
        self._wraps: dict[bool, list[str]] = {}  # built once per run: ~2 ms each
        self._swept = False
        self._logs: Path | None = None  # the run's log folder
        self._root: Path | None = None  # its worktree, resolved
        self._cgroups: list[StepCgroup] = []  # removed when their last process is gone
        self._run_cgroup: RunCgroup | None = None
        self._filled = False
        self._filling: asyncio.Lock | None = None
        self._files_sock = files
        self._copier: _PipelineOutput | None = None
        # Values a step masked (a workflow's ::add-mask::), for the rest of the run.
        self._masks = AddedMasks(paths.run_logs(context.run_id) / ADDED_MASKS)
        self.redactor.add(self._masks.values)

    def _add_mask(self, value: str) -> None:
        self._masks.add(value)
        self.redactor.add([value])

    def start(self) -> None:
        # The thread's own handle on the pipeline's socket, taken here: whoever owns
        # ``sock`` may close it at any time once a pipeline process has gone (one that
        # failed to load, say), before the thread gets to it.
        self._conn: socket.socket | None = self._sock.dup()
        self._thread = threading.Thread(target=self._main, name="ci-runner-broker",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def close(self) -> None:
        """Stop serving: commands still running are stopped, then the thread ends."""
        if self._loop is not None and self._stopped is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(30)
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()  # the thread never took it over
        self._sock.close()
        if self._files_sock is not None:
            self._files_sock.close()
        if self._db is not None:
            self._db.close()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._ready.set()
        copier = _PipelineOutput(self._output, self._pipeline_log, self.redactor,
                                 self._on_output)
        copier.start(self._loop)
        self._copier = copier
        self._warm_docker()
        asking = self._serve_files()
        try:
            await self._serve_requests()
        finally:
            if asking is not None:
                asking.cancel()
            await self._close_docker()
            copier.stop()

    async def _serve_requests(self) -> None:
        assert self._stopped is not None
        conn, self._conn = self._conn, None
        if conn is None:
            return  # closed before it started serving
        reader, writer = await asyncio.open_connection(sock=conn)
        tasks: dict[int, asyncio.Task[None]] = {}
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            while True:
                read = asyncio.ensure_future(_read(reader))
                done, _ = await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    read.cancel()
                    break
                try:
                    message = read.result()
                except (UsageError, ValueError):
                    break  # not our protocol: the pipeline process gets nothing more
                if message is None:
                    break  # the pipeline process is gone
                call_id = message.get("id")
                if not isinstance(call_id, int):
                    break
                if message.get("op") == "cancel":
                    task = tasks.get(call_id)
                    if task is not None:
                        task.cancel()
                    continue
                task = asyncio.ensure_future(
                    self._answer(writer, call_id, str(message.get("op")),
                                 message.get("args")))
                tasks[call_id] = task
                task.add_done_callback(_forget(tasks, call_id))
        finally:
            stop.cancel()
            for task in list(tasks.values()):
                task.cancel()
            if tasks:
                await asyncio.wait(list(tasks.values()), timeout=30)
            writer.close()
            for cgroup in self._cgroups:
                cgroup.remove(wait_s=2.0)
            self._cgroups = []
            if self._run_cgroup is not None:
                self._run_cgroup.leave()  # and what the run's steps left running dies

    async def _answer(
        self, writer: asyncio.StreamWriter, call_id: int, op: str, args: Any
    ) -> None:
        def event(payload: dict[str, Any]) -> None:
            writer.write(_frame({"id": call_id, "event": payload}))

        handler: Callable[..., Awaitable[Any]] | None = getattr(self, f"_op_{op}", None)
        try:
            if handler is None or not isinstance(args, dict):
                raise UsageError(f"the step broker has no request {op!r}")
            result = await handler(event, **args)
            reply: dict[str, Any] = {"id": call_id, "result": result}
        except asyncio.CancelledError:
            return
        except CIRunnerError as exc:
            reply = {"id": call_id, "error": to_record(exc)}
        except TypeError as exc:  # arguments that are not the request's
            reply = {"id": call_id, "error": to_record(UsageError(f"bad {op} request: {exc}"))}
        except OSError as exc:  # a full disk under the step's log, say: the step fails
            from ci_runner.errors import ExecutorError

            reply = {"id": call_id, "error": to_record(ExecutorError(
                f"{op} failed: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")))}
        except Exception as exc:  # a bug: unanswered, the pipeline would wait for ever
            import traceback

            traceback.print_exc()
            reply = {"id": call_id, "error": to_record(CIRunnerError(
                f"{op} failed: {type(exc).__name__}: {exc} (a bug in ci-runner's step"
                " broker: its traceback is on the runner's stderr)"))}
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(_frame(reply))

    # -- requests --------------------------------------------------------------------

    async def _op_cache_key(
        self, _event: Callable[[dict[str, Any]], None], *, inputs: list[str],
        material: dict[str, Any],
    ) -> str:
        if self._tree is None:
            from ci_runner.workspace.inputs import TreeIndex

            # Read from the repository, not the worktree: the sandbox's user owns that
            # (git would call it dubious), and the commit's tree is the same.
            self._tree = await asyncio.to_thread(TreeIndex, self.context.repo,
                                                 self.context.sha)
        from ci_runner.workspace.inputs import input_key

        return input_key(self._tree, list(inputs), material)

    def _serve_files(self) -> asyncio.Task[None] | None:
        if self._files_sock is None:
            return None
        return asyncio.ensure_future(self._answer_files(self._files_sock.dup()))

    async def _answer_files(self, sock: socket.socket) -> None:
        """The pipeline's code read the worktree outside a step: check its files out, and
        answer b"1" (or b"0" if that failed: the read then fails, and so will the step
        that needs them, saying why)."""
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            while await reader.read(1):
                try:
                    await self.files()
                    writer.write(b"1")
                except Exception as exc:
                    print(f"ci-runner: could not check out the worktree's files: {exc}",
                          file=sys.stderr, flush=True)
                    writer.write(b"0")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _op_files(self, _event: Callable[[dict[str, Any]], None]) -> None:
        await self.files()

    async def files(self) -> None:
        """Check out the worktree's files, once per drive, the first time a step needs
        them: until then it holds only the pipeline's folder, so a run whose steps are
        all served from the cache never checks out the rest of the tree."""
        if self._filled:
            return
        if self._filling is None:
            self._filling = asyncio.Lock()
        async with self._filling:  # steps run side by side (step.parallel) wait for one
            if self._filled:
                return
            notes = await asyncio.to_thread(self._fill)
            self._filled = True
        for note in notes:  # what the checkout left out: in the run's output and on stderr
            print(f"note: {note}", file=sys.stderr, flush=True)
        if notes and self._copier is not None:
            self._copier.note("".join(f"ci-runner: {note}\n" for note in notes))

    def _fill(self) -> list[str]:
        from ci_runner.workspace import fill, has_files
        from ci_runner.workspace.snapshots import checkout_source

        ctx = self.context
        if has_files(ctx.workspace):
            return []
        notes = fill(checkout_source(ctx.repo, ctx.snapshot_store, ctx.git_common_dir),
                     ctx.sha, ctx.workspace, submodules=ctx.submodules)
        ctx.confinement.hand_over_workspace()  # written by git as us: the sandbox's now
        return notes

    async def _op_artifacts(
        self, _event: Callable[[dict[str, Any]], None], *, step: str,
        patterns: list[str] | None = None, path: str | None = None, name: str | None = None,
    ) -> list[dict[str, Any]]:
        from ci_runner.dispatch import artifacts

        await self.files()
        root = self.context.workspace

        def keep() -> list[dict[str, Any]]:
            if path is not None:
                items = [artifacts.store(root, Path(path), name)]
            else:
                items = [artifacts.store(root, p)
                         for p in artifacts.collect(root, list(patterns or []))]
            if items:
                self._record_artifacts(step, items)
            return items

        return await asyncio.to_thread(keep)

    def _record_artifacts(self, step: str, items: list[dict[str, Any]]) -> None:
        from ci_runner.store import connect, memo

        if self._db is None:
            self._db = connect(paths.database())
        memo.add_artifacts(self._db, self.context.run_id, step, items)

    async def _op_redact(self, event: Callable[[dict[str, Any]], None], *, text: str) -> str:
        """``text`` masked as the run masks what it stores (its secrets, ::add-mask::
        values): how a step's name may show a value without holding it."""
        return self.redactor.text(str(text))

    async def _op_exec(
        self, event: Callable[[dict[str, Any]], None], *, name: str, occurrence: int,
        attempt: int, argv: list[str] | str, env: dict[str, str], secrets: list[str],
        cwd: str, timeout_s: float, image: str | None = None,
        network: bool | str | None = None,
        services: dict[str, str] | None = None, cache: dict[str, str] | None = None,
        memory: str = "2g", cpus: float = 2.0, previous: dict[str, Any] | None = None,
        pids: int | None = None, log_cap: int | None = None, files: bool = False,
        add_mask: bool = False,
    ) -> dict[str, Any]:
        from ci_runner.dispatch.seal import seal
        from ci_runner.dispatch.steplog import StepLog
        from ci_runner.engine import leases
        from ci_runner.executors import CommandSpec, Masker
        from ci_runner.secrets import resolve_secrets

        ctx = self.context
        label = name if occurrence == 1 else f"{name}#{occurrence}"
        self._check_untrusted(name, secrets, network)
        await self.files()
        workdir = self._workdir(cwd)
        values = resolve_secrets(list(secrets), environ=os.environ,
                                 secrets_file=ctx.secrets_file)
        self.redactor.add(values.values())  # masked in all the driver stores from now on
        masker = Masker([*values.values(), *self._masks.values])
        display = masker.mask(argv if isinstance(argv, str) else _join(argv))
        if self._logs is None:
            self._logs = paths.run_logs(ctx.run_id)
        log_path = self._logs / paths.step_log_name(name, occurrence)
        labels = {"ci-runner.run": ctx.run_id, "ci-runner.step": label}
        limit = _pids(name, pids)
        if image is not None:
            _check_container_limits(name, memory, cpus)
        if not self._swept:
            # A request comes only once the driver holds the run's lease: step cgroups of
            # the run still there are a killed driver's, whose steps a takeover stops.
            from ci_runner.executors.limits import remove_leftovers

            self._swept = True
            remove_leftovers(f"{ctx.run_id}-")
        cgroup = self._cgroup_for(f"{ctx.run_id}-{label}-{attempt}", limit, image is None)
        # The count when this step begins: a new cgroup's is 0; the run's shared one was
        # read after the step before (one read of pids.events a step, not two).
        refused_before = cgroup.seen_refused
        client = None if image is None else await self._docker_client(label, image)
        executor = self._executor(name, label, attempt, image, network, services, cache,
                                  memory, cpus, labels, cgroup, client)
        with StepLog(log_path, max_bytes=_log_cap(name, log_cap)) as log:

            def on_output(text: str) -> None:
                log.write(text)
                event({"output": text})

            announcement = _Announcement(event)

            def on_start(started: Mapping[str, Any]) -> None:
                # Recorded so a runner that takes this run over can stop the group (or
                # adopt the container), never a recycled pid's: host and start time match.
                detail: dict[str, Any] = {
                    "cmd": display, "attempt": attempt, "log": str(log_path),
                    "host": socket.gethostname(), "image": image,
                    "sandbox": ctx.confinement.kind if image is None else "docker",
                    **started,
                }
                if isinstance(started.get("pgid"), int):
                    detail["pgid_start"] = leases.start_time(started["pgid"])
                    detail["seal"] = seal(detail)  # nothing unsealed is ever killed
                announcement.start(detail)

            outcome = None
            if previous and previous.get("container") and image is not None:
                # The runner died while this step's container ran: take its result
                # (waiting for it if it still runs) instead of running it twice.
                log.note(f"--- adopting the container of attempt {previous.get('attempt')}\n")
                from ci_runner.executors import ContainerExecutor

                if isinstance(executor, ContainerExecutor):
                    outcome = await executor.adopt(labels, on_output)
            box = None
            if files:
                from ci_runner.dispatch.stepfiles import ENV, StepFiles

                box = StepFiles.make(ctx, label, attempt, light=image is None)
            unsent = None
            if outcome is None:
                log.note(f"--- attempt {attempt}: {display} ({time.strftime('%H:%M:%S')})\n")
                step_env = _step_env(env, image is None, ctx.confinement)
                if box is not None:
                    step_env[ENV] = str(box.inside)
                spec = CommandSpec(argv=argv, cwd=workdir, env=step_env,
                                   secrets=values, timeout_s=timeout_s,
                                   masks=tuple(self._masks.values),
                                   on_mask=self._add_mask if add_mask else None)
                try:
                    outcome = await executor.run(spec, on_output, on_start=on_start)
                finally:
                    unsent = announcement.stop()
                    refused = cgroup.refused() - refused_before
                    if cgroup is not self._run_cgroup:
                        self._remove_cgroups(cgroup)
            else:
                refused = 0
            if refused:
                on_output(f"--- this step hit its process limit ({cgroup.limit} processes):"
                          f" {refused} forks were refused; raise it with pids=\n")
            log.note(f"--- exit code {outcome.exit_code} after {outcome.duration_s:.3f}s\n")
        result = {"exit_code": outcome.exit_code, "duration_s": round(outcome.duration_s, 6),
                  "output_tail": outcome.output_tail, "timed_out": outcome.timed_out,
                  "display": display}
        if box is not None:
            # Masked with what the step itself masked too (::add-mask::).
            result["files"] = box.collect(Masker([*values.values(), *self._masks.values]))
        if refused:
            result["process_limit"] = {"limit": cgroup.limit, "refused_forks": refused}
        if unsent is not None:
            result["started"] = unsent
        if log.truncated:  # the run shows it: the log stops at its cap, the step ran on
            result["log_truncated"] = {"cap_bytes": log.max_bytes,
                                       "dropped_bytes": log.dropped_bytes}
        return result

    def _cgroup_for(self, name: str, limit: int | None, light: bool) -> StepCgroup:
        """The pids cgroup a light step is born in: the run's (joined once by this
        thread), or one of its own when it sets ``pids=``."""
        if not light:
            # A heavy step's processes are in its container's cgroup (its pids_limit):
            # none here, so a run of heavy steps never joins the run's (~15 ms, once).
            outside = StepCgroup(name, DEFAULT_PIDS)
            outside.path = None
            return outside
        if limit is not None:
            own = StepCgroup(name, limit)
            own.create()
            return own
        if self._run_cgroup is None:
            self._run_cgroup = RunCgroup(f"{self.context.run_id}-run", DEFAULT_PIDS)
            if not self._run_cgroup.join():
                self._run_cgroup.path = None  # nowhere to make it: no limit (where() says)
        return self._run_cgroup

    def _remove_cgroups(self, done: StepCgroup | None = None) -> None:
        """Remove step cgroups whose processes are gone; those still exiting are tried
        again after the next step (waiting here would cost every step ~10 ms)."""
        pending = [*self._cgroups, *([done] if done is not None else [])]
        self._cgroups = [c for c in pending if not c.remove()]

    def _check_untrusted(self, name: str, secrets: list[str],
                         network: bool | str | None) -> None:
        if not self.context.untrusted:
            return
        if secrets:
            raise UsageError(
                f"step {name!r} asks for secrets {', '.join(map(str, secrets))}: runs of pull"
                " requests from forks get no secrets (run it from a branch of the repo)",
                step=name,
            )
        if network:
            raise UsageError(
                f"step {name!r} asks for network: runs of pull requests from forks get none",
                step=name,
            )

    def _workdir(self, cwd: str) -> Path:
        if self._root is None:
            self._root = self.context.workspace.resolve()
        root = self._root
        if cwd in ("", "."):
            return root
        target = (root / cwd).resolve()
        if not target.is_relative_to(root):
            raise UsageError(f"cwd {cwd!r} is outside the run's worktree")
        return target

    def _executor(
        self, name: str, label: str, attempt: int, image: str | None,
        network: bool | str | None,
        services: dict[str, str] | None, cache: dict[str, str] | None, memory: str,
        cpus: float, labels: dict[str, str], cgroup: StepCgroup,
        client: DockerClient | None = None,
    ) -> Executor:
        from ci_runner.executors import HostExecutor

        ctx = self.context
        if image is None:
            if network and not isinstance(network, bool):
                raise UsageError(f"step {name!r}: a light step's network is True or False")
            # A light step has the host's network unless it says network=False; a
            # fork's never has any (asking for it was refused above).
            wants_net = network is not False and not ctx.untrusted
            if wants_net not in self._wraps:
                self._wraps[wants_net] = ctx.confinement.step_wrap(network=wants_net)
            wrap = self._wraps[wants_net]
            if cgroup.path is None and ctx.confinement.kind == "bwrap":
                # No cgroup to be had: the sandbox's own RLIMIT_NPROC (see limits.py).
                # An absolute path: the step's own PATH must not choose what sets its limit.
                prlimit = shutil.which("prlimit", path="/usr/bin:/bin") or "/usr/bin/prlimit"
                wrap = [*wrap, prlimit, f"--nproc={cgroup.limit}", "--"]
            return HostExecutor(wrap=cgroup.wrap(wrap))
        from ci_runner.executors import ContainerExecutor, Removals

        caches = {}
        if cache:
            from ci_runner.dispatch.pipeline import cache_volume  # imports the engine's step

            caches = {cache_volume(ctx.cache_scope, n): p for n, p in cache.items()}
        if self._removals is None:
            self._removals = Removals()
        return ContainerExecutor(
            image, network=False if ctx.untrusted else (network or False),
            services=dict(services or {}),
            caches=caches,
            labels=labels | {"ci-runner.attempt": str(attempt)},
            memory=memory, cpus=cpus, workspace=ctx.workspace, client=client,
            removals=self._removals,
        )

    # -- Docker, for heavy steps -----------------------------------------------------------

    def _warm_docker(self) -> None:
        """Connect to Docker now, while the pipeline process starts, if the pipeline's
        source names an image: a run's first heavy step then costs what the next ones
        do (importing the SDK alone takes ~60 ms). Only a guess, made to be cheap: when
        wrong, a run without heavy steps made an unused connection in a thread of its
        own, or one with them connects at its first heavy step, as without the guess."""
        from ci_runner.dispatch.envelope import PIPELINE_FILE

        done: concurrent.futures.Future[DockerClient | None] = concurrent.futures.Future()
        folder = (self.context.workspace / PIPELINE_FILE).parent

        def connect() -> None:
            try:
                from ci_runner.executors import ready_client
                from ci_runner.executors.container import names_images

                client = ready_client() if names_images(folder) else None
            except BaseException as exc:  # whatever it is, the step connects again and says
                done.set_exception(exc)
                return
            if client is not None and self._closing.is_set():
                client.close()  # the run ended first: nobody will use it
                client = None
            done.set_result(client)

        # A daemon thread, not the loop's pool: the run's end never waits for a guess.
        threading.Thread(target=connect, name="ci-runner-docker", daemon=True).start()
        self._docker = asyncio.wrap_future(done)

    async def _docker_client(self, label: str, image: str) -> DockerClient:
        """The run's client; made now (by this step, whose name an error then gives)
        unless the warm-up made one."""
        from ci_runner.executors import ready_client

        if self._docker is not None:
            with contextlib.suppress(Exception):
                warmed = await asyncio.shield(self._docker)
                if warmed is not None:
                    return warmed

        async def connect() -> DockerClient | None:
            return await asyncio.to_thread(ready_client, step=label, image=image)

        connecting = asyncio.ensure_future(connect())
        self._docker = connecting  # shared with steps that ask meanwhile (step.parallel)
        client = await asyncio.shield(connecting)
        assert client is not None
        return client

    async def _close_docker(self) -> None:
        """Wait for the finished steps' containers to be removed, then close the client."""
        self._closing.set()
        if self._removals is not None:
            await self._removals.drain()
        if self._docker is not None and self._docker.done() and not self._docker.cancelled():
            client = None if self._docker.exception() else self._docker.result()
            if client is not None:
                client.close()


class _PipelineOutput:
    """Copies the pipeline process's own output (prints, warnings, tracebacks) into its
    pipeline.log, a line at a time, masked and capped like a step's log, and shows it
    (``on_text``): the driver holds the pipe's other end."""

    CHUNK = 1 << 16

    def __init__(self, fd: int | None, path: Path | None, redactor: Redactor,
                 on_text: Callable[[str], None] | None = None) -> None:
        from ci_runner.dispatch.steplog import StepLog

        self._fd = fd if path is not None else None
        self._log = StepLog(path) if path is not None else None
        self._redactor = redactor
        self._on_text = on_text
        self._pending = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._fd is None:
            return
        self._loop = loop
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, self.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            return
        self._pending += data
        # Whole lines only (a secret is not cut by a chunk's end), but never hold more
        # than a chunk of one endless line.
        cut = self._pending.rfind(b"\n") + 1
        if not cut and len(self._pending) >= self.CHUNK:
            cut = len(self._pending)
        if cut:
            self._write(self._pending[:cut])
            self._pending = self._pending[cut:]

    def note(self, text: str) -> None:
        """ci-runner's own lines in the pipeline's output (a submodule left empty)."""
        if self._log is not None:
            self._write(text.encode())

    def _write(self, data: bytes) -> None:
        assert self._log is not None
        text = self._redactor.text(data.decode("utf-8", "replace"))
        with contextlib.suppress(OSError):  # a full disk: the view still shows it
            self._log.write(text)
        if self._on_text is not None:
            try:
                self._on_text(text)
            except Exception:  # a broken view must not stop the copy (nor the run)
                self._on_text = None

    def stop(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):  # what is left in the pipe: the child is gone
            while chunk := os.read(self._fd, self.CHUNK):
                self._pending += chunk
        if self._pending:
            self._write(self._pending)
            self._pending = b""
        os.close(self._fd)  # ours since the broker took it from the ChildProcess
        self._fd = None
        if self._log is not None:
            self._log.close()


def _log_cap(name: str, cap: int | None) -> int:
    from ci_runner.dispatch.steplog import DEFAULT_LOG_CAP

    if cap is None:
        return DEFAULT_LOG_CAP
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1024:
        raise UsageError(f"step {name!r}: log_cap is a number of bytes, at least 1024")
    return cap


def _pids(name: str, pids: int | None) -> int | None:
    if pids is None:
        return None
    if not isinstance(pids, int) or isinstance(pids, bool) or not 1 <= pids <= 1_000_000:
        raise UsageError(f"step {name!r}: pids must be a whole number from 1 to 1000000")
    return pids


_MEMORY = re.compile(r"\d+(\.\d+)?([kmg]b?|b)?", re.IGNORECASE)  # as Docker reads it


def _check_container_limits(name: str, memory: Any, cpus: Any) -> None:
    if isinstance(memory, bool) or not (
            (isinstance(memory, int) and memory > 0)
            or (isinstance(memory, str) and _MEMORY.fullmatch(memory))):
        raise UsageError(f"step {name!r}: memory is a size like '512m' or '2g', not {memory!r}")
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
        raise UsageError(f"step {name!r}: cpus is a number of CPUs above 0 (like 1.5),"
                         f" not {cpus!r}")


def _forget(tasks: dict[int, asyncio.Task[None]], call_id: int) -> Callable[[Any], None]:
    def done(_task: Any) -> None:
        tasks.pop(call_id, None)

    return done


ADDED_MASKS = ".added-masks"  # in the run's log folder, 0600; never served


class AddedMasks:
    """The values a run's steps masked with ``::add-mask::``: kept in a private file
    beside the run's logs so a resumed run masks them too, as it does its secrets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: list[str] = []
        try:
            self.values = [v for v in json.loads(path.read_text("utf-8")) if isinstance(v, str)]
        except (OSError, ValueError, TypeError):
            self.values = []

    def add(self, value: str) -> None:
        if value in self.values:
            return
        self.values.append(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".part"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self.values, out)
        self.path.with_suffix(".part").replace(self.path)


def _step_env(env: dict[str, str], light: bool, confinement: Confinement) -> dict[str, str]:
    if not light:
        return dict(env)
    return {**confinement.step_env(), **env}


def _join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)
