"""The per-run child process: imports the workflow and runs it, asking the driver
through a pipe for every durable decision. It opens no database.

A pipeline that crashes, hangs or calls ``os._exit`` takes down only this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import resource
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from ci_runner.errors import from_record, to_record

_PR_SET_PDEATHSIG = 1
PRELOAD_ENV = "CI_RUNNER_PRELOAD"  # modules to import while waiting for the run


class PipeHost:
    """``Host`` over the driver's pipe: length-framed JSON, one request at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        data = json.dumps({"op": op, "args": args, "reply": True}).encode()
        with self._lock:
            self._conn.send_bytes(data)
            answer: dict[str, Any] = json.loads(self._conn.recv_bytes())
        if "__error__" in answer:
            raise from_record(answer["__error__"])
        return answer

    def notify(self, op: str, **args: Any) -> None:
        data = json.dumps({"op": op, "args": args}).encode()
        with self._lock:
            self._conn.send_bytes(data)


def ignore_signal(_signum: int, _frame: object) -> None:
    """The pipeline process's SIGINT handler (see ``_harden``)."""


def _harden() -> None:
    # Die with the driver: a killed runner must not leave its pipeline running.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    # Ctrl-C reaches the whole foreground group; the driver decides what it means. A
    # handler that does nothing, not SIG_IGN: an ignored signal stays ignored across
    # exec, and every step's command would start deaf to SIGINT.
    signal.signal(signal.SIGINT, ignore_signal)
    # Inherited by every light step: no core dumps of secrets-bearing processes.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _pidfd_child_watcher() -> None:
    # Python < 3.12 watches each subprocess with a thread of its own; a pidfd costs
    # no thread (~0.3 ms less per light step). 3.12+ uses pidfds by default.
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel without pidfd support
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def main(fd: int, *, parent: int | None = None, confined: bool = False) -> None:
    """Serve one run over the pipe ``fd``; ``parent`` is the driver's pid when known
    (a forked child), else the driver is whoever started this interpreter.
    ``confined``: started by a sandbox (bubblewrap) that is our parent, as PID 1 of a
    namespace of its own, and that dies with the driver."""
    _harden()
    conn = Connection(fd)
    if not confined and (os.getppid() == 1 or (parent is not None and os.getppid() != parent)):
        os._exit(1)  # the driver died before we set the death signal
    # Import the runtime before the driver has work for us: it may start us early. So
    # are the modules the caller names (PRELOAD_ENV), which its workflow will need.
    from ci_runner.engine.runtime import execute, import_path
    from ci_runner.engine.step import Step, WorkflowEvent

    for name in filter(None, os.environ.pop(PRELOAD_ENV, "").split(",")):
        # A module that fails here fails again, saying why, when the workflow needs it.
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    try:
        init = json.loads(conn.recv_bytes())
    except EOFError:  # the driver did not need us after all
        os._exit(0)
    host = PipeHost(conn)
    # The pipeline's prints and warnings reach the live view as they happen, not when a
    # pipe's buffer fills (a forked child has the CLI's streams, a spawned one pipes').
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    _pidfd_child_watcher()
    try:
        workflow = import_path(init["workflow"])()
        outcome = asyncio.run(execute(
            workflow,
            WorkflowEvent(init["payload"], init["created_at"], init["instance_id"]),
            Step(host, inline_sleep_max_s=init["inline_sleep_max_s"],
                 recorded=init.get("recorded")),
        ))
    except BaseException as exc:
        outcome = {"kind": "errored", "error": to_record(exc)}
    sys.stdout.flush()
    sys.stderr.flush()
    host.request("outcome", **outcome)
    # Threads of a plain-def pipeline may still block on a parked step: do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), confined="--confined" in sys.argv[2:])
