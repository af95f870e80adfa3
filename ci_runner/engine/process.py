"""Starting the per-run pipeline process: spawned (a fresh interpreter) or forked.

A fresh interpreter costs ~100 ms before it can run a step (start-up, site, the
runtime's imports). A single-threaded caller (`ci-runner run`, `approve`) can
instead fork itself: the child has every module its parent imported already, and
imports the rest while the parent forks the worktree. A caller with threads (the
webhook server, watch mode) always spawns: forking a threaded process copies locks
other threads may hold.

Either way the child keeps only its stdio and the pipe to the driver: a forked
child closes every other descriptor it inherited (the database file among them),
so it holds no database handle, just as a spawned one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any, Protocol


class ProcessHandle(Protocol):
    """What the driver needs of the child: ``subprocess.Popen`` or ``Forked``."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class ChildProcess:
    """A started pipeline process, waiting for the instance it should run.

    ``side`` is a socket the caller handed the child besides its pipe (closed with
    it), ``extra`` more such sockets, ``info`` whatever the caller wants to remember
    about how it was started."""

    def __init__(
        self, proc: ProcessHandle, conn: Connection, *, side: socket.socket | None = None,
        info: Any = None, output: int | None = None,
    ) -> None:
        self.proc = proc
        self.conn = conn
        self.side = side
        self.info = info
        self.output = output  # a pipe's read end the child's stdout goes to, if any
        self.extra: tuple[socket.socket, ...] = ()

    def close(self) -> None:
        self.conn.close()
        if self.side is not None:
            self.side.close()
            self.side = None
        for sock in self.extra:
            sock.close()
        self.extra = ()
        if self.output is not None:
            os.close(self.output)
            self.output = None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Forked:
    """A forked child, with the part of ``Popen``'s interface the driver uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._returncode: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def poll(self) -> int | None:
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self._returncode = -signal.SIGKILL
                return self._returncode
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None and self._returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self._returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self._returncode = -signal.SIGKILL
            return self._returncode
        deadline = time.monotonic() + (timeout or 0.0)
        pause = 0.0005
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pipeline process {self.pid}", timeout or 0.0)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return code

    def kill(self) -> None:
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Confinement:
    """How to put a pipeline process in a sandbox, decided by the caller (the engine
    knows nothing of sandboxes): ``wrap`` is an argv prefix for a spawned child (it
    must keep inherited descriptors, as bubblewrap does); ``fork`` says whether the
    child may be a fork of the caller (a fork carries the caller's memory, so a
    sandboxed child never is). ``keep_fds`` are passed to the child besides its pipe."""

    wrap: tuple[str, ...] = ()
    fork: bool = True
    keep_fds: tuple[int, ...] = ()


def start_child(
    *,
    stdio: IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    fork: bool = False,
    confinement: Confinement | None = None,
) -> ChildProcess:
    """Start a pipeline process now; it imports the runtime while the caller works.

    ``fork`` is a wish: it is honoured only when this process has a single thread
    and the confinement can be entered by a forked child.
    """
    confined = confinement or Confinement()
    if fork and confined.fork and hasattr(os, "fork") and threading.active_count() == 1:
        return _fork(stdio=stdio, env=env, cwd=cwd, confinement=confined)
    ours, theirs = socket.socketpair()
    argv = [sys.executable, "-m", "ci_runner.engine.child", str(theirs.fileno())]
    if confined.wrap:
        argv = [*confined.wrap, *argv, "--confined"]
    try:
        proc = subprocess.Popen(
            argv,
            pass_fds=(theirs.fileno(), *confined.keep_fds),
            stdin=subprocess.DEVNULL,
            stdout=stdio,
            stderr=subprocess.STDOUT if stdio is not None else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    finally:
        theirs.close()
    return ChildProcess(proc, Connection(ours.detach()))


def _fork(
    *, stdio: IO[Any] | None, env: Mapping[str, str] | None, cwd: Path | None,
    confinement: Confinement,
) -> ChildProcess:
    ours, theirs = socket.socketpair()
    parent = os.getpid()
    # Buffered output would otherwise be written twice, once by each process.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 1
        try:
            fd = _become_child(theirs.detach(), stdio=stdio, env=env, cwd=cwd,
                               keep=confinement.keep_fds)
            from ci_runner.engine.child import main

            main(fd, parent=parent)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    return ChildProcess(Forked(pid), Connection(ours.detach()))


def _become_child(
    fd: int, *, stdio: IO[Any] | None, env: Mapping[str, str] | None, cwd: Path | None,
    keep: tuple[int, ...] = (),
) -> int:
    """Give the forked child the stdio and descriptors a spawned child would have:
    stdin from /dev/null, stdout and stderr to ``stdio``, the pipe ``fd`` (and
    ``keep``), nothing else."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    if stdio is not None:
        os.dup2(stdio.fileno(), 1)
        os.dup2(stdio.fileno(), 2)
    low = 3
    for kept in sorted({fd, *keep}):
        os.closerange(low, kept)
        low = kept + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))  # close_range(2): one call each
    if env is not None and env is not os.environ:
        os.environ.clear()
        os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    # The parent's Python-level handlers are not ours. Ctrl-C reaches the whole
    # foreground group and the driver decides what it means (as ``child._harden``).
    from ci_runner.engine.child import ignore_signal

    signal.signal(signal.SIGINT, ignore_signal)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return fd
