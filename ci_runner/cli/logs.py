"""`ci-runner logs`: print a run's step logs and the pipeline's own output, optionally
following them as they grow.

A run's log folder holds one file per step that printed something and ``pipeline.log``,
the pipeline process's own output (its prints, warnings and tracebacks, masked by the
broker). The pipeline's output is shown as one more section, ``pipeline``, when it is
not empty.

Following a whole run (``-f`` without a STEP) keeps each step's output together: a
``==> step <==`` line says whose lines follow whenever that changes, as in the
non-following output. Once several steps run at the same time their lines interleave,
and from then on each line starts with its step's name instead (``[test] ...``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ci_runner import paths
from ci_runner.cli.report import step_label
from ci_runner.errors import RunNotFound, UsageError
from ci_runner.store import journal as j

if TYPE_CHECKING:
    import sqlite3

    from ci_runner.cli.remote import Client

FOLLOW_POLL_S = 0.2
PIPELINE = "pipeline"
# Statuses in which nothing drives the run on by itself: following it would wait forever.
_IDLE = ("interrupted", "paused")


@dataclass(frozen=True)
class Section:
    """One log the command prints: a step's, or the pipeline's own (``step`` False);
    ``path`` is None for a log read from a server."""

    label: str
    path: Path | None
    step: bool = True


class LogSource(Protocol):
    """Where a follower reads a run's logs: this machine's files, or a server's API."""

    run_id: str

    def state(self) -> tuple[bool, str | None]:
        """Whether the run has stopped (nothing more comes by itself), and when it
        stopped without ending, the note that says so."""

    def sections(self) -> list[Section]: ...

    def read(self, section: Section, offset: int) -> bytes:
        """What ``section``'s log holds from byte ``offset``."""

    def running(self) -> int:
        """How many of its steps run now."""


def print_logs(run_ref: str | None, step: str | None, *, follow: bool, failed: bool = False,
               repo: Path | None = None) -> None:
    from ci_runner.dispatch.runs import open_engine

    with open_engine() as engine:
        run_id, step = _run_and_step(engine.conn, run_ref, step, repo)
        sections = _sections(engine.conn, run_id, step, failed=failed)
        if not follow:
            if failed and not sections:
                status = j.get_instance(engine.conn, run_id)["status"]
                _note(f"no step of run {run_id} failed (it is {_word(status)})")
            for section in sections:
                _dump(engine.conn, run_id, section,
                      header=step is None and (len(sections) > 1 or failed))
            return
        _Follower(_LocalLogs(engine.conn, run_id, step, failed), step).run()


def print_remote_logs(api: Client, run_ref: str | None, step: str | None, *, follow: bool,
                      failed: bool = False, repo: str | None = None) -> None:
    """``logs`` against a server: the same sections, headers and following."""
    from ci_runner.cli import remote

    found, step = _remote_run(api, run_ref, step, repo)
    source = _RemoteLogs(api, str(found["run_id"]), step, failed, found)
    if follow:
        _Follower(source, step).run()
        return
    sections = source.sections()
    if failed and not sections:
        _note(f"no step of run {source.run_id} failed (it is {found['status']})")
    for section in sections:
        data, exists = remote.step_log(api, source.run_id, section.label)
        _write(section, data if exists else None,
               header=step is None and (len(sections) > 1 or failed))


def _remote_run(api: Client, ref: str | None, step: str | None,
                repo: str | None) -> tuple[dict[str, Any], str | None]:
    """As ``_run_and_step``: ``logs test`` with no run "test" is the latest run's step."""
    from ci_runner.cli import remote
    from ci_runner.cli.control import LATEST

    try:
        return remote.record(api, ref, repo), step
    except RunNotFound as not_a_run:
        if ref is None or ref == LATEST or step is not None:
            raise
        try:
            found = remote.record(api, None, repo)
        except RunNotFound:
            raise not_a_run from None
        known = remote.labels(found)
        if ref in known or ref == PIPELINE:
            return found, ref
        raise RunNotFound(
            f"no run {ref!r}, nor a step {ref!r} in the latest run on {api.url}"
            f" ({found['run_id']}, steps: {', '.join(known) or 'none'}); `ci-runner runs"
            " --server URL` lists the runs") from None


def _run_and_step(conn: sqlite3.Connection, ref: str | None, step: str | None,
                  repo: Path | None) -> tuple[str, str | None]:
    """The run and step a command line means. ``logs test``, with no run called "test",
    is step ``test`` of the latest run, when it has one."""
    from ci_runner.cli.control import LATEST, resolve_run, scope_of

    try:
        return resolve_run(conn, ref, repo), step
    except RunNotFound as not_a_run:
        if ref is None or ref == LATEST or step is not None:
            raise
        try:
            latest = resolve_run(conn, None, repo)
        except RunNotFound:
            raise not_a_run from None
        labels = _labels(conn, latest)
        if ref in labels or ref == PIPELINE:
            return latest, ref
        raise RunNotFound(
            f"no run {ref!r}, nor a step {ref!r} in the latest run{scope_of(repo).of()}"
            f" ({latest}, steps: {', '.join(labels) or 'none'}); `ci-runner runs` lists the"
            " runs") from None


def _labels(conn: sqlite3.Connection, run_id: str) -> list[str]:
    return [step_label(r["name"], r["occurrence"]) for r in j.steps_of(conn, run_id,
                                                                       results=False)]


def _sections(conn: sqlite3.Connection, run_id: str, step: str | None, *,
              failed: bool) -> list[Section]:
    """What to print, in order: the steps' logs, then the pipeline's when not empty."""
    rows = j.steps_of(conn, run_id, results=False)
    sections = [Section(step_label(r["name"], r["occurrence"]),
                        paths.step_log(run_id, r["name"], r["occurrence"]))
                for r in rows if not failed or r["status"] == "failed"]
    own_log = paths.pipeline_log(run_id)
    own = Section(PIPELINE, own_log, step=False)
    if step is not None:
        chosen = [s for s in sections if s.label == step]
        if not chosen and step == PIPELINE:  # a step of that name comes first
            return [own]
        if not chosen:
            known = [step_label(r["name"], r["occurrence"]) for r in rows]
            raise UsageError(f"run {run_id} has no step {step!r} (steps:"
                             f" {', '.join(known) or 'none'}; and {PIPELINE}, its own output)")
        return chosen
    wanted = not failed or j.get_instance(conn, run_id)["status"] == "errored"
    if wanted and _size(conn, run_id, own_log):
        sections.append(own)
    return sections


def _size(conn: sqlite3.Connection, run_id: str, path: Path) -> int:
    from ci_runner.store.db import is_postgres

    if is_postgres(conn):  # a fleet's logs are in its database, whichever host wrote them
        from ci_runner.store import steplogs

        return steplogs.size(conn, run_id, path.name)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read(conn: sqlite3.Connection, run_id: str, path: Path, offset: int = 0) -> bytes | None:
    """A log of this machine's (or, on PostgreSQL, of the fleet's) from ``offset``; None
    when there is none."""
    from ci_runner.store.db import is_postgres

    if is_postgres(conn):
        from ci_runner.store import steplogs

        return steplogs.read(conn, run_id, path.name, offset)
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return None


def _dump(conn: sqlite3.Connection, run_id: str, section: Section, *, header: bool) -> None:
    assert section.path is not None
    _write(section, _read(conn, run_id, section.path), header=header)


def _write(section: Section, data: bytes | None, *, header: bool) -> None:
    """A whole log; ``data`` None: the step wrote none."""
    if header:
        sys.stdout.write(f"==> {section.label} <==\n")
    if data is not None:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
    elif not section.step:
        sys.stdout.write("(the pipeline printed nothing)\n")
    else:  # a silent step writes no log file (`show` has its exit code)
        sys.stdout.write("(no output)\n" if header else "(no output recorded for this step)\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _word(status: str) -> str:
    from ci_runner.statuses import run_word

    return run_word(status)


@dataclass
class _LocalLogs:
    """A run of this machine: its journal and its log files."""

    conn: sqlite3.Connection
    run_id: str
    step: str | None
    failed: bool

    def state(self) -> tuple[bool, str | None]:
        status = j.get_instance(self.conn, self.run_id)["status"]
        done = status in j.TERMINAL or status in j.HIBERNATING or status in _IDLE
        if not done or status in j.TERMINAL:
            return done, None
        return True, (f"run {self.run_id} is {_word(status)}: nothing more comes until it"
                      f" is driven on (`ci-runner resume {self.run_id}`)")

    def sections(self) -> list[Section]:
        return _sections(self.conn, self.run_id, self.step, failed=self.failed)

    def read(self, section: Section, offset: int) -> bytes:
        assert section.path is not None
        return _read(self.conn, self.run_id, section.path, offset) or b""

    def running(self) -> int:
        return sum(1 for r in j.steps_of(self.conn, self.run_id, results=False)
                   if r["status"] in ("running", "retrying"))


@dataclass
class _RemoteLogs:
    """A run on a server, read through its API; ``record`` is the last one fetched."""

    api: Client
    run_id: str
    step: str | None
    failed: bool
    record: dict[str, Any]
    # Logs read whole: their step had ended when the record was fetched, before the read.
    read_whole: set[str] = field(default_factory=set)
    own_seen: bool = False  # the pipeline printed something (then it is listed)

    def state(self) -> tuple[bool, str | None]:
        from ci_runner.cli import remote
        from ci_runner.cli.report import ENDED
        from ci_runner.statuses import said

        self.record = remote.record(self.api, self.run_id)
        status = str(self.record["status"])
        if not remote.stopped(self.record):
            return False, None
        if status in ENDED:
            return True, None
        word = said(status, waiting_for=self.record.get("waiting_for"))
        return True, (f"run {self.run_id} is {word}: nothing more comes until it is driven"
                      f" on (`ci-runner show {self.run_id}` says how)")

    def sections(self) -> list[Section]:
        steps = self.record.get("steps") or []
        sections = [Section(str(s["name"]), None) for s in steps
                    if not self.failed or s["status"] == "failed"]
        own = Section(PIPELINE, None, step=False)
        if self.step is not None:
            chosen = [s for s in sections if s.label == self.step]
            if not chosen and self.step == PIPELINE:
                return [own]
            if not chosen:
                known = [str(s["name"]) for s in steps]
                raise UsageError(f"run {self.run_id} has no step {self.step!r} (steps:"
                                 f" {', '.join(known) or 'none'}; and {PIPELINE}, its own"
                                 " output)")
            return chosen
        wanted = not self.failed or self.record["status"] == "failed"
        self.own_seen = self.own_seen or (wanted and bool(self.read(own, 0)))
        if wanted and self.own_seen:
            sections.append(own)
        return sections

    def read(self, section: Section, offset: int) -> bytes:
        from ci_runner.cli import remote

        label = section.label
        if not section.step and label in remote.labels(self.record):
            return b""  # a step named "pipeline" hides the pipeline's own output here
        if section.step and label in self.read_whole:
            return b""
        data = remote.step_log(self.api, self.run_id, label, offset)[0]
        status = next((s["status"] for s in self.record.get("steps") or []
                       if s["name"] == label), None)
        if section.step and status is not None and status not in remote.UNFINISHED:
            self.read_whole.add(label)
        return data

    def running(self) -> int:
        return sum(1 for s in self.record.get("steps") or []
                   if s["status"] in ("running", "retrying"))


@dataclass
class _Follower:
    """Prints what the run's logs gain until nothing drives the run any more."""

    source: LogSource
    step: str | None
    offsets: dict[tuple[str, bool], int] = field(default_factory=dict)
    prefixed: bool = False  # sticky: once steps interleave, every line says its step
    last: str | None = None  # whose output was printed last
    mid_line: bool = False  # the terminal's cursor is not at a line's start
    rounds: int = 0

    def run(self) -> None:
        while True:
            done, note = self.source.state()
            # Read after the status: what a run that has ended wrote is all there.
            self._round()
            if done:
                self._end_line()
                if note is not None:
                    _note(note)
                return
            time.sleep(FOLLOW_POLL_S)

    def _round(self) -> None:
        sections = self.source.sections()
        news = [(s, data) for s in sections if (data := self._new(s))]
        self.rounds += 1
        if self.step is None and not self.prefixed:
            # The first round catches up with what was written before: steps that ran
            # one after the other are not interleaved by being read together.
            together = self.rounds > 1 and sum(1 for s, _ in news if s.step) > 1
            self.prefixed = together or self.source.running() > 1
        for section, data in news:
            self._emit(section, data.decode("utf-8", errors="replace"), len(sections))
        sys.stdout.flush()

    def _new(self, section: Section) -> bytes:
        key = (section.label, section.step)
        offset = self.offsets.get(key, 0)
        data = self.source.read(section, offset)
        self.offsets[key] = offset + len(data)
        return data

    def _emit(self, section: Section, text: str, count: int) -> None:
        out = sys.stdout
        if self.last is not None and self.last != section.label:
            self._end_line()
        if self.step is None and not self.prefixed and self.last != section.label and (
                self.last is not None or count > 1):
            out.write(f"==> {section.label} <==\n")
        prefix = f"[{section.label}] " if self.prefixed else ""
        lines = text.split("\n")
        for i, line in enumerate(lines):
            end = "\n" if i < len(lines) - 1 else ""
            if not line and not end:
                break  # the text ended with its line
            if not self.mid_line:
                out.write(prefix)
            out.write(line + end)
            self.mid_line = not end
        self.last = section.label

    def _end_line(self) -> None:
        """Another log's output starts on a line of its own."""
        if self.mid_line:
            sys.stdout.write("\n")
            self.mid_line = False
