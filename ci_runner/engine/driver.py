"""The Engine: creates instances and drives them, holding a fenced lease while they run.

Driving an instance means: take its lease, start the per-run child process (or,
embedded, run the workflow in this process), answer its requests, heartbeat,
and commit its outcome: complete, errored, terminated, or hibernated with no
process left behind. Every (re)start replays ``run()`` from the top; committed
steps return their stored result without running again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from ci_runner.engine import leases, policy
from ci_runner.engine.deferred import Deferred
from ci_runner.engine.process import ChildProcess, ProcessHandle, start_child
from ci_runner.engine.service import Observer, Redactor, Rules, StepService
from ci_runner.errors import (
    CIRunnerError,
    LeaseLost,
    PipelineCrashed,
    RunTimeout,
    UsageError,
    to_record,
)
from ci_runner.store import connect
from ci_runner.store import journal as j
from ci_runner.store.db import is_url

# How often an idle driver checks whether its run was cancelled.
CONTROL_POLL_S = 1.0
# How long a begin or a process group may wait to be written with the step's result
# (a short step's result comes sooner): one commit instead of two or three. At 2 ms,
# a busy machine's 2-ms steps missed it 4 times in 5. A driver killed meanwhile has
# not recorded the attempt (it runs again as attempt 1) nor its process group (which
# the run's cgroup and the orphan sweep still find; see ``dispatch.control``).
HOLD_S = 0.01

OrphanReaper = Callable[[dict[str, Any]], None]
# Given the instance's row, stops what its dead driver left running that the journal
# does not name (a step begun just before the driver died: see deferred.py).
OrphanSweeper = Callable[[Any], None]
Outcome = dict[str, Any]


def new_instance_id() -> str:
    # Time-ordered prefix so ids sort by creation; random tail so they never collide.
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


class LocalHost:
    """``Host`` for the embedded engine: the Step calls the service directly."""

    def __init__(self, service: StepService) -> None:
        self._service = service

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        return self._service.handle(op, args)

    def notify(self, op: str, **args: Any) -> None:
        self._service.handle(op, args)


class Engine:
    """A durable engine over one database (a SQLite file or PostgreSQL). Not thread-safe:
    one per thread."""

    def __init__(
        self,
        db_path: Path | str,
        *,
        inline_sleep_max_s: float = policy.INLINE_SLEEP_MAX_S,
        lease_ttl_s: float = leases.LEASE_TTL_S,
        reap_orphan: OrphanReaper | None = None,
        fork_children: bool = False,
        rules: Rules | None = None,
        sweep_orphans: OrphanSweeper | None = None,
    ) -> None:
        """``fork_children``: start pipeline processes by forking this one when it has a
        single thread (see ``ci_runner.engine.process``), else by spawning.
        ``reap_orphan`` stops a step's processes the journal names (its ``detail``);
        ``sweep_orphans`` whatever else a dead driver of the instance left behind."""
        # A SQLite file's path, or a postgresql:// URL (which Path would mangle).
        self.db_path: Path | str = db_path if is_url(db_path) else Path(db_path)
        self.fork_children = fork_children
        self.conn = connect(self.db_path)
        self.inline_sleep_max_s = inline_sleep_max_s
        self.lease_ttl_s = lease_ttl_s
        self.owner = leases.owner_id()
        self._reap_orphan = reap_orphan
        self._sweep_orphans = sweep_orphans
        self.rules = rules
        # What an interrupted drive leaves the instance as: 'queued' (any worker takes it
        # on, as after a server's shutdown) or a status of the application's that only an
        # explicit resume drives again (a person's Ctrl-C).
        self.interrupted_status = "queued"

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- instances ---------------------------------------------------------------

    def create(
        self,
        workflow: str | type,
        payload: Any,
        *,
        tenant: str = "default",
        instance_id: str | None = None,
        claim: bool = False,
    ) -> str:
        """Store a new queued instance of ``workflow`` (an import path or a class).

        ``claim`` leases it to this engine at once, so that a worker does not pick it
        up before this engine drives it.
        """
        iid = instance_id or new_instance_id()
        name = workflow if isinstance(workflow, str) else (
            f"{workflow.__module__}:{workflow.__qualname__}")
        j.create_instance(self.conn, instance_id=iid, tenant=tenant, workflow=name,
                          payload=payload, owner=self.owner if claim else None,
                          ttl_s=self.lease_ttl_s)
        return iid

    def get(self, instance_id: str) -> dict[str, Any]:
        row = j.get_instance(self.conn, instance_id)
        return dict(row)

    def send_event(self, instance_id: str, event_type: str, payload: Any = None) -> int:
        return j.send_event(self.conn, instance_id, event_type, payload)

    # -- driving -------------------------------------------------------------------

    def drive(
        self,
        instance_id: str,
        *,
        observer: Observer | None = None,
        workflow: type | None = None,
        stdio: IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        child: ChildProcess | None = None,
        redactor: Redactor | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Run the instance until it completes, fails or hibernates; returns its status.

        With ``workflow`` (a class) the run happens in this process (embedded use);
        otherwise a child process imports the stored workflow path and runs it. A
        ``child`` from ``spawn_child`` saves its start-up time from the critical path.
        """
        row = j.get_instance(self.conn, instance_id)
        instance_id = row["id"]
        epoch = j.acquire_lease(
            self.conn, instance_id, owner=self.owner, ttl_s=self.lease_ttl_s,
            owner_dead=not leases.owner_alive(row["owner"]) or _handed_over(row["owner"]),
        )
        journal = j.Journal(self.conn, instance_id, epoch)
        self._reap(journal)
        if row["owner"] not in (None, self.owner) and not leases.owner_alive(row["owner"]):
            # A step's first attempt starts before its begin (and its process group) is
            # written: what the dead driver started last may be unknown to the journal,
            # and must not run on beside the step's next attempt.
            if self._sweep_orphans is not None:
                self._sweep_orphans(row)
            # Taken from a driver that died holding it. Those before it may have died
            # too, with no step committed since: wait longer each time, and past a few
            # give up, saying why (a step that kills its runner must not run sixty times
            # a minute). Counted after the wait: a driver killed while it waits ran nothing.
            if journal.crashes >= policy.CRASH_RERUNS:
                error = to_record(PipelineCrashed(
                    f"the run's runner died {journal.crashes + 1} times in a row without a step"
                    " finishing; it is not driven again (look at the log of the step it was"
                    " running: it may exhaust memory or kill its parent)",
                    crashes=journal.crashes + 1))
                journal.finish("errored", error=error)
                return "errored"
            time.sleep(min(policy.CRASH_BACKOFF_S * 2 ** journal.crashes, 30.0))
            journal.count_crash()
        beat = _Heartbeat(journal, self.lease_ttl_s)
        service = StepService(journal, observer, heartbeat=beat, rules=self.rules,
                              redactor=redactor)
        # How long this drive may last; a run waiting for an event holds no time.
        service.limit_time(timeout_s)
        service.observe({"type": "instance", "status": "running", "id": instance_id})
        try:
            if workflow is not None:
                outcome = self._drive_here(row, workflow, service)
            else:
                child = child or self.spawn_child(stdio=stdio, env=env, cwd=cwd,
                                                  fork=self.fork_children)
                outcome = self._drive_child(row, service, beat, child)
        except LeaseLost:
            # Cancelled or taken over: whoever holds the instance now says what it is.
            return str(j.get_instance(self.conn, instance_id)["status"])
        except KeyboardInterrupt:
            # Stop the steps' own process groups too: they are not in our terminal's group.
            self._reap(journal)
            journal.release(self.interrupted_status)
            raise
        try:
            outcome = service.redact("outcome", outcome)
        except CIRunnerError as exc:
            outcome = {"kind": "errored", "error": to_record(exc)}
        status = self._commit(journal, outcome, service)
        service.observe({"type": "instance", "status": status, "id": instance_id,
                         "error": outcome.get("error"), "waiting_for": outcome.get("waiting_for")})
        return status

    def _drive_here(self, row: Any, workflow: type, service: StepService) -> Outcome:
        import asyncio

        from ci_runner.engine.runtime import execute
        from ci_runner.engine.step import Step, WorkflowEvent

        event = WorkflowEvent(json.loads(row["payload"]), row["created_at"], row["id"])
        step = Step(LocalHost(service), inline_sleep_max_s=self.inline_sleep_max_s)
        return asyncio.run(execute(workflow(), event, step))

    def spawn_child(
        self,
        *,
        stdio: IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        fork: bool = False,
    ) -> ChildProcess:
        """Start a pipeline process now; it imports the runtime while the caller works.
        ``fork``: fork this process rather than start an interpreter, if it has a
        single thread (see ``ci_runner.engine.process``)."""
        return start_child(stdio=stdio, env=env, cwd=cwd, fork=fork)

    def _reap(self, journal: j.Journal) -> None:
        # Steps left running by a dead driver may still have processes: stop them first.
        if self._reap_orphan is None:
            return
        for detail in journal.running_details():
            self._reap_orphan(detail)

    def _commit(self, journal: j.Journal, outcome: Outcome, service: StepService) -> str:
        kind = outcome["kind"]
        if kind == "hibernate":
            journal.hibernate(
                status=outcome["status"], wake_at=outcome["wake_at"],
                waiting_for=outcome["waiting_for"],
            )
            return str(outcome["status"])
        if kind == "complete":
            cancelled = journal.finish("complete", output=outcome.get("output"))
            status = "complete"
        elif kind == "terminated":
            cancelled, status = journal.finish("terminated"), "terminated"
        else:
            cancelled = journal.finish("errored", error=outcome.get("error"))
            status = "errored"
        for name, occurrence in cancelled:  # the view shows them ended, as the journal does
            service.observe({"type": "step", "name": name, "occurrence": occurrence,
                             "status": "cancelled", "error": {
                                 "type": "Cancelled", "message": "cancelled: the run ended",
                                 "fields": {}}})
        return status

    def _drive_child(
        self, row: Any, service: StepService, beat: _Heartbeat, child: ChildProcess
    ) -> Outcome:
        try:
            child.conn.send_bytes(json.dumps({
                "workflow": row["workflow"], "payload": json.loads(row["payload"]),
                "created_at": row["created_at"], "instance_id": row["id"],
                "inline_sleep_max_s": self.inline_sleep_max_s,
                # What a replay will find; any other step may begin without asking.
                "recorded": service.journal.recorded(),
            }).encode())
            return self._serve(child.conn, child.proc, service, beat)
        except (BrokenPipeError, ConnectionResetError):
            return self._crashed(child.proc, service, {})
        finally:
            child.close()

    def _serve(
        self, conn: Connection, proc: ProcessHandle, service: StepService,
        beat: _Heartbeat,
    ) -> Outcome:
        current: dict[str, Any] = {}
        # Begins sent ahead and steps' details (process groups), written with the step's
        # own commit when that is already in the pipe (a short command), else as soon as
        # the pipe runs dry, so a crash can still find the group.
        held = Deferred(service)
        try:
            while True:
                try:
                    ready = conn.poll(0)
                    if not ready:  # the pipe ran dry: what the view buffered goes out
                        service.idle()
                        ready = conn.poll(HOLD_S if held else CONTROL_POLL_S)
                except (EOFError, OSError):
                    ready = True
                if service.deadline is not None and time.monotonic() > service.deadline:
                    proc.kill()
                    held.flush()
                    self._reap(service.journal)
                    return {"kind": "errored", "error": to_record(RunTimeout(
                        f"the run timed out after {service.timeout_s:g}s and was stopped"
                        " (its processes with it)", timeout_s=service.timeout_s))}
                if not ready and held:
                    held.flush()
                    continue
                if not ready:
                    beat()
                    if not service.journal.still_ours():  # cancelled, or taken over
                        raise LeaseLost(f"run {service.journal.instance_id} is no longer ours")
                    continue
                try:
                    message = json.loads(conn.recv_bytes(policy.MAX_MESSAGE_BYTES))
                except OSError as exc:
                    if "bad message length" not in str(exc):  # the pipe broke: as EOF
                        held.flush()
                        self._reap(service.journal)
                        return self._crashed(proc, service, current)
                    # Too big to be one of ours: the pipe cannot be read on past it.
                    proc.kill()
                    held.flush()
                    self._reap(service.journal)
                    return {"kind": "errored", "error": to_record(UsageError(
                        f"the pipeline process sent a message over"
                        f" {policy.MAX_MESSAGE_BYTES >> 20} MiB (a step's result is limited"
                        f" to {policy.MAX_RESULT_BYTES >> 20} MiB)"))}
                except EOFError:
                    held.flush()
                    # The pipeline process is gone; what it started must not run on alone.
                    self._reap(service.journal)
                    return self._crashed(proc, service, current)
                op, args = message["op"], message["args"]
                if op == "begin":
                    current = args
                    if not message.get("reply"):  # begun ahead: the pipeline did not wait
                        try:
                            service.check_begin(args)
                        except CIRunnerError as exc:  # no answer to give: end the run
                            proc.kill()
                            held.flush()
                            return {"kind": "errored", "error": to_record(exc)}
                        held.begin(args)
                        continue
                if op == "set_detail":
                    held.detail((args["name"], args["occurrence"]), args["detail"])
                    continue
                if op not in ("output", "notice"):
                    args = held.settle(op, args)
                if op == "outcome":
                    conn.send_bytes(b"{}")
                    return dict(args)
                try:
                    answer = service.handle(op, args)
                except CIRunnerError as exc:
                    if isinstance(exc, LeaseLost):
                        raise
                    answer = {"__error__": to_record(exc)}
                if message.get("reply"):
                    if service.journal.control == "pause":
                        answer = {**answer, "pause": True}  # begin the next step by asking
                    conn.send_bytes(json.dumps(answer).encode())
        except LeaseLost:
            proc.kill()
            # Steps whose process groups were not written yet are stopped here: whoever
            # cancelled the run cannot know them.
            if self._reap_orphan is not None:
                for detail in held.details():
                    self._reap_orphan(detail)
            raise

    def _crashed(
        self, proc: ProcessHandle, service: StepService, current: dict[str, Any]
    ) -> Outcome:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # alive but not talking to us: end it
            proc.kill()
            code = proc.wait()
        where = f" during step {current['name']!r}" if current else ""
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        error = to_record(PipelineCrashed(
            f"the pipeline process {how}{where} (os._exit, a crash or the OOM killer?)",
            exit_code=code,
        ))
        if current and current.get("kind") != "sleep":
            # Record the crash on the step too, so `show` points at where it happened.
            service.handle("fail", {"name": current["name"], "occurrence": current["occurrence"],
                                    "error": error, "final": True})
        return {"kind": "errored", "error": error}


def _handed_over(owner: str | None) -> bool:
    """Whether the run's holder is the fleet worker that claimed it for this process
    (``store.claims``): it hands its lease over, and is alive doing so."""
    return owner is not None and owner == os.environ.get("CI_RUNNER_HANDOVER")


class _Heartbeat:
    """Renews the lease when due; cheap to call on every request."""

    def __init__(self, journal: j.Journal, ttl_s: float) -> None:
        self._journal = journal
        self._ttl_s = ttl_s
        self._next = time.monotonic() + leases.HEARTBEAT_EVERY_S

    def __call__(self) -> None:
        t = time.monotonic()
        if t >= self._next:
            self._journal.heartbeat(self._ttl_s)
            self._next = t + leases.HEARTBEAT_EVERY_S
