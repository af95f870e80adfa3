"""Runs light steps as host subprocesses, each in a process group of its own.

Light steps are the hot path of a pipeline, so this is a thin layer over asyncio's
subprocess machinery: no shell unless the step asks for one, no ``preexec_fn`` (it
forces fork over vfork in CPython; rlimits are inherited from the runner instead),
no reader task. A step owns its whole process group: on timeout, cancellation, or
plain exit, whatever is left in the group is terminated, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ci_runner.errors import ExecutorError
from ci_runner.executors.base import CommandResult
from ci_runner.executors.masking import Masker
from ci_runner.executors.output import MaskedOutput

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Generator, Mapping, Sequence

    from ci_runner.executors.base import CommandSpec, OutputSink, StartInfo

_KEPT_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TZ",
    "TMPDIR",
    "SHELL",
)
_TIMEOUT_EXIT_CODE = 124
_PROC = Path("/proc")


def scrubbed_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a step sees: a few host basics, ``CI=true``, ``CI_RUNNER=1``, then ``extra``.

    Everything else in the runner's environment (tokens, cloud credentials) stays out.
    """
    env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    env["CI"] = "true"
    env["CI_RUNNER"] = "1"
    env.update(extra)
    return env


def kill_process_group(pgid: int, *, grace_s: float = 2.0) -> None:
    """SIGTERM the process group, SIGKILL whatever is still alive after ``grace_s``.

    No error if the group is already gone. Blocking: crash recovery calls it for
    groups a dead runner left behind (``run`` uses a non-blocking twin). Refuses
    (``ValueError``) group ids 0 and 1, and skips the caller's own group.
    """
    for pause in _terminate(pgid, grace_s):
        time.sleep(pause)


def stop_processes_in(workspace: Path, *, spare: Collection[int] = ()) -> int:
    """Stop every process of ours whose working directory is in ``workspace`` (deleted
    already or not), but those in ``spare``; returns how many were found.

    The net under a cancelled or crashed run: a command started just before the cancel
    may not have had its process group recorded yet. A process leading a session of
    its own (every step's command does) is stopped with its whole group; one sharing
    another group (the pipeline process, or what it started without a session) is
    stopped alone, so the group of whoever ran `ci-runner run` is never signalled.
    Processes with a controlling terminal (someone's shell cd'ed into a kept worktree)
    are left alone: a step's processes never have one.
    """
    found: dict[int, tuple[int, int]] = {}  # pid -> (pgid, session)
    ours = {os.getpid(), *spare}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            cwd = str((entry / "cwd").readlink())
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # gone, or not ours to look at
        if not Path(cwd.removesuffix(" (deleted)")).is_relative_to(workspace):
            continue
        # "pid (comm) state ppid pgrp session tty_nr ...": comm may hold ") ".
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[4]) == 0:  # no controlling terminal
            found[int(entry.name)] = (int(fields[2]), int(fields[3]))
    # A whole group only when its leader leads a session and is itself in the worktree:
    # a step's command. The pipeline process shares the driver's group, which may lead
    # a session too (started by systemd or setsid), so it goes alone.
    groups = {pgid for pgid, session in found.values()
              if pgid == session and pgid in found and pgid > 1 and pgid != os.getpgrp()}
    singles = {pid for pid, (pgid, _) in found.items() if pgid not in groups}
    for pid in singles:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pgid in groups:
        kill_process_group(pgid)
    return len(groups) + len(singles)


class HostExecutor:
    """Runs each command as a host subprocess in a new session (so a new process group).

    ``kill_grace_s`` is how long a timed-out or leftover group gets between SIGTERM
    and SIGKILL.
    """

    def __init__(self, *, kill_grace_s: float = 2.0, wrap: Sequence[str] = ()) -> None:
        """``wrap``: an argv prefix the command runs under (a sandbox such as
        ``bwrap ... --``, which drops root's powers itself)."""
        self.kill_grace_s = kill_grace_s
        self.wrap = list(wrap)

    async def run(
        self,
        spec: CommandSpec,
        on_output: OutputSink,
        *,
        on_start: Callable[[StartInfo], None] | None = None,
    ) -> CommandResult:
        """Run ``spec`` to completion; ``on_start`` gets ``{"pgid": ...}``; see ``Executor.run``."""
        argv = ["sh", "-c", spec.argv] if isinstance(spec.argv, str) else list(spec.argv)
        masker = Masker([*spec.secrets.values(), *spec.masks])
        program = argv[0] if argv else ""
        env = scrubbed_env(spec.env)
        if argv and self.wrap:
            # Wrapped, a missing program would only be the wrapper's exit code 127.
            missing = _missing(program, spec.cwd, env.get("PATH", ""))
            if missing is not None:
                raise _start_error(missing, program, spec.cwd, masker)
            argv = [*self.wrap, *argv]
        if not argv:
            raise ExecutorError(
                f"empty command (step cwd {spec.cwd}): give the step a program to run",
                cwd=str(spec.cwd),
            )
        env.update(spec.secrets)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        protocol = _StepProtocol(loop, masker, on_output, spec.on_mask)
        transport: _PidfdProcess | asyncio.SubprocessTransport
        try:
            if _HAVE_PIDFD:
                transport = _PidfdProcess(loop, protocol, argv, spec.cwd, env)
            else:
                transport, _ = await loop.subprocess_exec(
                    lambda: protocol,
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise _start_error(exc, program, spec.cwd, masker) from exc

        # A session leader's process group id is its pid.
        pgid = transport.get_pid()
        grace = self.kill_grace_s
        timed_out = False
        try:
            if on_start is not None:
                on_start({"pgid": pgid})
            await asyncio.wait(
                (protocol.exited, protocol.aborted),
                timeout=spec.timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not protocol.exited.done():
                timed_out = not protocol.aborted.done()
                await _stop_group(pgid, grace)
                await protocol.exited
            # A step's forgotten background processes (daemons, `cmd &`) die with it.
            await _stop_group(pgid, grace)
            if not protocol.drained.done():
                # Only a process that left the group (setsid) can still hold the pipe
                # now; stop reading rather than wait for it.
                await asyncio.wait((protocol.drained,), timeout=grace)
        except BaseException:
            # Cancelled, or on_start failed: the group must not outlive the step.
            await _stop_group(pgid, grace)
            await asyncio.wait((protocol.exited,), timeout=grace)
            raise
        finally:
            transport.close()
        if protocol.sink_error is not None:
            raise protocol.sink_error

        returncode = transport.get_returncode()
        assert returncode is not None
        if timed_out:
            exit_code = _TIMEOUT_EXIT_CODE
        elif returncode < 0:
            exit_code = 128 - returncode
        else:
            exit_code = returncode
        return CommandResult(
            exit_code=exit_code,
            duration_s=time.monotonic() - started,
            output_tail=protocol.output_tail(),
            timed_out=timed_out,
        )


def _missing(program: str, cwd: Path, path: str) -> OSError | None:
    """Why ``program`` cannot be started from ``cwd`` with ``path``, or None."""
    if "/" not in program and (program, path) in _FOUND:
        return None  # found before: a run's steps mostly run the same few programs
    import shutil

    if not cwd.is_dir():
        return FileNotFoundError(program)
    if "/" in program:
        target = cwd / program
        if not target.exists():
            return FileNotFoundError(program)
        return None if os.access(target, os.X_OK) else PermissionError(program)
    if shutil.which(program, path=path) is None:
        return FileNotFoundError(program)
    if len(_FOUND) < 4096:
        _FOUND.add((program, path))
    return None


_FOUND: set[tuple[str, str]] = set()


def _pidfd_works() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


_HAVE_PIDFD = _pidfd_works()


class _PidfdProcess:
    """A step's process watched through a pidfd and its output pipe, both on the loop.

    asyncio's subprocess transport costs ~0.3 ms more per command (a child watcher,
    a transport and pipe protocols); this is the same events with none of that:
    ``Popen`` (vfork), a reader on the pipe and a reader on the pidfd.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, protocol: _StepProtocol, argv: list[str],
        cwd: Path, env: dict[str, str],
    ) -> None:
        self._loop = loop
        self._protocol = protocol
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._out = self._proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._reading = self._watching = True
        loop.add_reader(self._out, self._readable)
        loop.add_reader(self._pidfd, self._exited)

    def _readable(self) -> None:
        try:
            data = os.read(self._out, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._protocol.pipe_data_received(1, data)
            return
        self._stop_reading()
        self._protocol.pipe_connection_lost(1, None)

    def _exited(self) -> None:
        self._stop_watching()
        self._proc.wait()  # already a zombie: reaps at once
        self._protocol.process_exited()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._out)

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._pidfd)

    def get_pid(self) -> int:
        return self._proc.pid

    def get_returncode(self) -> int | None:
        return self._proc.returncode

    def close(self) -> None:
        self._stop_reading()
        self._stop_watching()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        os.close(self._pidfd)
        if self._proc.returncode is None:
            self._proc.poll()


class _StepProtocol(asyncio.SubprocessProtocol):
    """Forwards the step's merged output as it arrives, straight from loop callbacks
    (no reader task or stream buffer in between), and tells run() when it exited."""

    def __init__(self, loop: asyncio.AbstractEventLoop, masker: Masker, sink: OutputSink,
                 on_mask: Callable[[str], None] | None = None) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.drained: asyncio.Future[None] = loop.create_future()
        self.aborted: asyncio.Future[None] = loop.create_future()
        self.output = MaskedOutput(masker, sink, on_sink_error=self._abort, on_mask=on_mask)

    @property
    def sink_error(self) -> BaseException | None:
        return self.output.sink_error

    def _abort(self) -> None:
        if not self.aborted.done():
            self.aborted.set_result(None)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.output.feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.output.close()
        if not self.drained.done():
            self.drained.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def output_tail(self) -> str:
        return self.output.tail()


def _start_error(exc: OSError, program: str, cwd: Path, masker: Masker) -> ExecutorError:
    if not cwd.is_dir():
        message = f"step cwd does not exist: {cwd}: create it or fix the step's cwd"
    elif isinstance(exc, FileNotFoundError):
        message = f"command not found: {program} (step cwd {cwd}): install it or check PATH"
    elif isinstance(exc, PermissionError):
        message = f"command not executable: {program} (step cwd {cwd}): check its mode and path"
    else:
        message = f"could not start {program} (step cwd {cwd}): {exc.strerror or exc}"
    return ExecutorError(masker.mask(message), command=masker.mask(program), cwd=str(cwd))


async def _stop_group(pgid: int, grace_s: float) -> None:
    steps = _terminate(pgid, grace_s)
    try:
        for pause in steps:
            await asyncio.sleep(pause)
    finally:
        # Cancelled mid-grace: closing the generator still sends the SIGKILL.
        steps.close()


def _terminate(pgid: int, grace_s: float) -> Generator[float, None, None]:
    """SIGTERM, then yield pauses until the group is gone or grace is up, then SIGKILL.

    A generator so the blocking and the asyncio callers share one policy and each
    sleeps its own way.
    """
    if pgid <= 1:
        raise ValueError(f"refusing to kill process group {pgid}: not a step's group")
    if pgid == os.getpgrp() or not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    pause = 0.002
    alive = True
    try:
        while True:
            alive = _group_alive(pgid)
            left = deadline - time.monotonic()
            if not alive or left <= 0:
                return
            yield min(pause, left)
            pause = min(pause * 2, 0.1)
    finally:
        if alive:
            _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal the group; False if there is nothing we can signal (gone, or not ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    # killpg(pgid, 0) succeeds for zombies too, and where nothing reaps orphans (PID 1
    # in many containers) they stay forever: only a member that is not a zombie counts.
    if not _PROC.is_dir():
        return True
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:
                continue  # exited while we looked
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False
