"""Watch mode: run the pipeline on a snapshot of the working tree after every quiet spell
of edits, and stop a run as soon as an edit makes it stale.

Three threads. watchfiles reports changes in one, which drops what cannot change a
snapshot (``.git/``, and what git itself ignores, asked of ``git check-ignore``); a run
is driven in another (an engine is per-thread); the loop in the caller's thread takes
both through one queue, together with signals, so every decision is made in one place
and in order:

- a relevant change cancels the run being driven at once (terminated, its processes
  and containers stopped, recorded as superseded), and a new run starts once the tree
  has been quiet for the debounce;
- a run that hibernated (waiting for an approval, an event or a long sleep) is no
  longer driven here, so a change never cancels it;
- SIGINT or SIGTERM cancels the run being driven and waits until its processes are
  gone and its worktree is removed, so nothing keeps running and nothing is left
  half-done.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ci_runner.errors import CIRunnerError, InvalidState, LeaseLost, UsageError

if TYPE_CHECKING:
    from types import FrameType

    from ci_runner.engine.driver import Engine
    from ci_runner.engine.process import ChildProcess
    from ci_runner.engine.service import Observer
    from ci_runner.workspace import RepoInfo

# watchfiles ends a batch after this long without a raw event (or after _BATCH_MAX_MS):
# small, because the debounce that matters is judged on relevant changes only.
_BATCH_QUIET_MS = 10
_BATCH_MAX_MS = 300
# How often the watcher thread wakes when nothing happens; its first wake-up also says
# that the watch is armed.
_IDLE_WAKE_MS = 250
_SPARE_PREFIX = ".watch-spare-"
# Statuses in which a run is still being driven here, so a change may cancel it.
_CANCELLABLE = ("queued", "running")


@dataclass(frozen=True)
class WatchOptions:
    """What ``ci-runner watch`` was asked for."""

    path: Path  # the folder to watch; the repository containing it is the one run
    debounce_s: float  # how long the tree must be quiet before a run starts
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    secrets_file: Path | None = None
    run_now: bool = False  # run once at start, before any change


class Screen(Protocol):
    """What the loop reports; ``cli/watch.py`` draws it."""

    def watching(self, root: Path, options: WatchOptions) -> None:
        """The watch is armed: a change from now on triggers a run."""

    def run_started(self, record: dict[str, Any]) -> Observer:
        """A run was stored; returns the observer that receives its step events."""

    def run_ended(self, record: dict[str, Any]) -> None:
        """The run stopped being driven here: ended, hibernated or superseded."""

    def problem(self, message: str) -> None:
        """Something went wrong but the watch goes on (a run could not start, say)."""


@dataclass
class _Active:
    """The run being driven by this watch, in the driver thread."""

    run_id: str
    workspace: Path
    child: ChildProcess
    thread: threading.Thread | None = None
    error: BaseException | None = None
    cancel_tried: bool = False
    cancelled: bool = False  # terminated by this watch (not ended or hibernated first)


def superseded(record: dict[str, Any]) -> bool:
    """Whether a run record is of a run that a newer change superseded."""
    error = record.get("error") or {}
    return bool(isinstance(error, dict) and (error.get("fields") or {}).get("superseded"))


class Watch:
    """The watch loop; ``serve`` runs until a signal (or ``stop``) and returns the exit code."""

    def __init__(self, options: WatchOptions, screen: Screen) -> None:
        self.options = options
        self.screen = screen
        # SimpleQueue: its put is reentrant, so the signal handlers may call it even when
        # the signal lands while this thread is inside the queue.
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop_watching = threading.Event()
        self._active: _Active | None = None
        # The next run's pipeline process, started while the watch is idle: its start-up
        # (~100 ms of imports) is then off the path from a save to the first step.
        # The next run's id, its pipeline process's log folder, and that process.
        self._spare: tuple[str, Path, ChildProcess] | None = None
        self._root: Path | None = None

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop, from any thread (what the signal handlers do)."""
        self._events.put(("stop", signum))

    def serve(self) -> int:
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.workspace import open_repo

        options = self.options
        if options.debounce_s < 0:
            raise UsageError("--debounce must be 0 ms or more")
        root = options.path.resolve()
        if not root.is_dir():
            raise UsageError(f"{options.path} is not a folder: watch a folder of a git repository")
        repo = open_repo(root)
        self._root = repo.root
        watcher = threading.Thread(target=self._watch_files, args=(root, repo),
                                   name="ci-runner-watch-files", daemon=True)
        restore = self._handle_signals()
        try:
            with open_engine() as engine:
                watcher.start()
                kind, value = self._events.get()  # "ready", unless something came first
                if kind == "failed":
                    raise value
                if kind == "stop":
                    return 128 + int(value)
                _remove_stale_spares()
                self._warm_spare(engine)
                self.screen.watching(root, options)
                try:
                    return self._loop(engine, repo, due=time.monotonic() if options.run_now
                                      else None)
                finally:
                    self._drop_spare()
        finally:
            self._stop_watching.set()
            if watcher.is_alive():
                watcher.join(timeout=5)
            restore()

    # -- the loop ------------------------------------------------------------------

    def _loop(self, engine: Engine, repo: RepoInfo, *, due: float | None) -> int:
        try:
            while True:
                timeout = None if due is None else max(0.0, due - time.monotonic())
                try:
                    kind, value = self._events.get(timeout=timeout)
                except queue.Empty:  # quiet for the debounce: run the tree as it is now
                    due = None
                    if self._active is not None:  # cancelled, its driver is finishing
                        self._finish(engine)
                    self._start(engine, repo)
                    continue
                if kind == "changes":
                    due = time.monotonic() + self.options.debounce_s
                    if self._active is not None:
                        self._cancel(engine, self._active, superseded=True)
                elif kind == "ended":
                    if self._active is not None and self._active.run_id == value:
                        self._finish(engine)
                    if self._active is None:
                        self._warm_spare(engine)  # for the next run, while nothing runs
                elif kind == "stop":
                    name = signal.Signals(value).name
                    if self._active is not None:
                        self._cancel(engine, self._active, superseded=False,
                                     reason=f"the watch was stopped ({name})")
                        self._finish(engine)
                    return 128 + int(value)
                elif kind == "failed":
                    raise value
        finally:
            if self._active is not None:  # a bug got us here: still leave nothing running
                self._cancel(engine, self._active, superseded=False,
                             reason="the watch stopped on an error")
                self._finish(engine)

    def _start(self, engine: Engine, repo: RepoInfo) -> None:
        from ci_runner.cli.report import run_record
        from ci_runner.dispatch.runs import RunRequest, discard_child, start_run, warm_child
        from ci_runner.engine.driver import new_instance_id

        options = self.options
        request = RunRequest(
            repo_path=repo.root, include_uncommitted=True, trigger="watch",
            params=options.params, pipeline=options.pipeline,
            secrets_file=options.secrets_file, only=options.only, skip=options.skip,
        )
        spare = self._take_spare()
        run_id, child = spare if spare is not None else (new_instance_id(), None)
        child = child or warm_child(run_id, repo_path=repo.root)
        try:
            start_run(engine, request, run_id=run_id)
        except BaseException as exc:
            discard_child(run_id, child)
            if isinstance(exc, CIRunnerError):
                self.screen.problem(f"no run: {exc.message}")
                return
            raise
        record = run_record(engine.conn, run_id, with_steps=False)
        active = _Active(run_id, Path(record["workspace"]), child)
        observer = self.screen.run_started(record)
        active.thread = threading.Thread(target=self._drive, args=(active, observer),
                                         name=f"ci-runner-drive-{run_id}", daemon=True)
        self._active = active
        active.thread.start()

    def _drive(self, active: _Active, observer: Observer) -> None:
        from ci_runner.dispatch.runs import drive_run, open_engine

        try:
            with open_engine() as engine:
                drive_run(engine, active.run_id, observer=observer, child=active.child)
        except (LeaseLost, InvalidState):
            pass  # cancelled under it (the loop did it) or before it took the run
        except BaseException as exc:
            active.error = exc
        finally:
            active.child.close()  # a no-op unless driving failed before the child ran
            self._events.put(("ended", active.run_id))

    def _cancel(
        self, engine: Engine, active: _Active, *, superseded: bool, reason: str = ""
    ) -> None:
        """Terminate the run being driven, unless it has stopped being driven here
        (ended, or hibernated at an approval) in the meantime."""
        from ci_runner.dispatch.runs import reap_orphan
        from ci_runner.store import journal as j

        if active.cancel_tried:
            return
        active.cancel_tried = True
        message = reason or "superseded: a newer change to the working tree started a new run"
        why = {"type": "Cancelled", "message": message,
               "fields": {"superseded": superseded, "by": "watch"}}
        try:
            # Bumps the lease epoch: from here on the driver cannot commit anything. Only
            # from queued/running, checked atomically: an approval wait is left alone.
            running = j.terminate(engine.conn, active.run_id, error=why,
                                  only_if=_CANCELLABLE)
        except InvalidState:
            return  # it ended, or hibernated at an approval, on its own just now
        active.cancelled = True
        for detail in running:
            reap_orphan(detail)
        # The driver would notice within a second; killing its pipeline process makes it
        # notice now, even when the pipeline is busy in Python rather than in a command.
        if active.child.proc.poll() is None:
            active.child.proc.kill()
        if any(d.get("container") for d in running):
            _remove_containers(active.run_id)

    def _finish(self, engine: Engine) -> None:
        """Wait for the driver thread, clean up after a cancel, and report the run."""
        from ci_runner.cli.report import run_record
        from ci_runner.dispatch.envelope import unwrap_params
        from ci_runner.dispatch.runs import finish_workspace

        active = self._active
        assert active is not None and active.thread is not None
        active.thread.join()
        self._active = None
        if active.cancelled:
            # A command the pipeline started just before the cancel may not have been
            # recorded yet, so the engine could not stop it: find it by where it runs.
            from ci_runner.executors import stop_processes_in

            stop_processes_in(active.workspace)
            row = engine.get(active.run_id)
            if row["status"] in ("complete", "errored", "terminated"):
                metadata, _ = unwrap_params(json.loads(row["payload"]))
                finish_workspace(metadata)  # again: the driver may have stopped before it
                if _used_containers(engine, active.run_id):
                    _remove_containers(active.run_id)
        self.screen.run_ended(run_record(engine.conn, active.run_id))
        if isinstance(active.error, CIRunnerError):  # the run is recorded; say what failed
            self.screen.problem(f"run {active.run_id}: {active.error.message}")
        elif active.error is not None:
            raise active.error

    # -- the spare pipeline process ---------------------------------------------------

    def _warm_spare(self, engine: Engine) -> None:
        """Start the next run's pipeline process, in that run's sandbox (its id is
        chosen now: the sandbox binds its worktree's path). Its output goes to a folder
        of its own in logs/, renamed to the run's log folder when a run takes it (the
        open file follows the rename), so a run's ``pipeline.log`` is where it always is."""
        import uuid

        from ci_runner import paths
        from ci_runner.dispatch.runs import warm_child
        from ci_runner.engine.driver import new_instance_id

        if self._spare is not None:
            return
        folder = paths.home() / "logs" / f"{_SPARE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        run_id = new_instance_id()
        # From the loop's thread, never a driver's: the child's parent-death signal
        # follows the thread that started it, and the loop's outlives every run.
        self._spare = (run_id, folder, warm_child(run_id, repo_path=self._root,
                                                  log_dir=folder))

    def _take_spare(self) -> tuple[str, ChildProcess] | None:
        from ci_runner import paths
        from ci_runner.dispatch.runs import discard_child

        if self._spare is None:
            return None
        run_id, folder, child = self._spare
        self._spare = None
        if child.proc.poll() is not None:  # it died idle (OOM killer, a stray kill)
            discard_child(run_id, child)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        folder.rename(paths.run_logs(run_id))
        return run_id, child

    def _drop_spare(self) -> None:
        from ci_runner.dispatch.runs import discard_child

        if self._spare is not None:
            run_id, folder, child = self._spare
            self._spare = None
            discard_child(run_id, child)
            shutil.rmtree(folder, ignore_errors=True)

    # -- the file watcher -------------------------------------------------------------

    def _watch_files(self, root: Path, repo: RepoInfo) -> None:
        from watchfiles import watch

        relevant = _Relevance(repo.root, root)
        armed = False
        try:
            for changes in watch(
                root, watch_filter=None, debounce=_BATCH_MAX_MS, step=_BATCH_QUIET_MS,
                stop_event=self._stop_watching, rust_timeout=_IDLE_WAKE_MS,
                yield_on_timeout=True, raise_interrupt=False,
            ):
                if not armed:
                    armed = True
                    self._events.put(("ready", None))
                paths = relevant([path for _change, path in changes])
                if paths:
                    self._events.put(("changes", paths))
        except BaseException as exc:
            self._events.put(("failed", exc))

    # -- signals ----------------------------------------------------------------------

    def _handle_signals(self) -> Callable[[], None]:
        """Turn SIGINT and SIGTERM into a stop request the loop handles in order, so a
        Ctrl-C never lands in the middle of storing a run."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop(signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, old in previous.items():
                signal.signal(s, old)

        return restore


class _Relevance:
    """Keeps the changed paths that can change a snapshot of the tree: not under
    ``.git/`` or CI_RUNNER_HOME, and not ignored by git (``.gitignore``,
    ``.git/info/exclude``, ``core.excludesFile``: the rules ``git add --all`` follows
    when the snapshot is taken, so the two always agree)."""

    def __init__(self, repo_root: Path, watched: Path) -> None:
        from ci_runner import paths

        self.root = repo_root
        self.watched = watched
        self.home = paths.home()

    def __call__(self, changed: list[str]) -> list[str]:
        candidates = set()
        for raw in changed:
            path = Path(raw)
            try:
                rel = path.relative_to(self.root)
            except ValueError:
                continue
            if ".git" in rel.parts or path.is_relative_to(self.home):
                continue
            candidates.add(rel.as_posix())
        if not candidates:
            return []
        return sorted(candidates - self._ignored(sorted(candidates)))

    def _ignored(self, rel_paths: list[str]) -> set[str]:
        done = subprocess.run(
            ["git", "check-ignore", "--stdin", "-z"], cwd=self.root, check=False,
            input=("\0".join(rel_paths) + "\0").encode(), capture_output=True,
        )
        if done.returncode not in (0, 1):
            # A path git refuses to judge (inside a submodule, say): count the batch as
            # relevant; a run too many is better than a change missed.
            return set()
        return {p.decode("utf-8", "surrogateescape") for p in done.stdout.split(b"\0") if p}


def _remove_stale_spares() -> None:
    """Remove the spare folders of watches that were killed (SIGKILL skips cleanup)."""
    from ci_runner import paths
    from ci_runner.engine.leases import start_time

    logs = paths.home() / "logs"
    if not logs.is_dir():
        return
    for folder in logs.glob(f"{_SPARE_PREFIX}*"):
        pid = folder.name.removeprefix(_SPARE_PREFIX).split("-")[0]
        if pid.isdigit() and start_time(int(pid)) == "0":
            shutil.rmtree(folder, ignore_errors=True)


def _used_containers(engine: Engine, run_id: str) -> bool:
    from ci_runner.store import journal as j

    return any((j.loads(row["detail"]) or {}).get("image")
               for row in j.steps_of(engine.conn, run_id))


def _remove_containers(run_id: str) -> None:
    from ci_runner.executors import remove_containers

    # No Docker engine to ask means no container of this run can be running.
    with suppress(CIRunnerError):
        remove_containers({"ci-runner.run": run_id})
