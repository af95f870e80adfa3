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
from typing import TYPE_CHECKING

from ci_runner import paths
from ci_runner.cli.report import step_label
from ci_runner.errors import RunNotFound, UsageError
from ci_runner.store import journal as j

if TYPE_CHECKING:
    import sqlite3

FOLLOW_POLL_S = 0.2
PIPELINE = "pipeline"
# Statuses in which nothing drives the run on by itself: following it would wait forever.
_IDLE = ("interrupted", "paused")


@dataclass(frozen=True)
class Section:
    """One log the command prints: a step's, or the pipeline's own (``step`` False)."""

    label: str
    path: Path
    step: bool = True


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
                _dump(section, header=step is None and (len(sections) > 1 or failed))
            return
        _Follower(engine.conn, run_id, step, failed=failed).run()


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
    own = Section(PIPELINE, paths.pipeline_log(run_id), step=False)
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
    if wanted and _size(own.path):
        sections.append(own)
    return sections


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _dump(section: Section, *, header: bool) -> None:
    if header:
        sys.stdout.write(f"==> {section.label} <==\n")
    if section.path.exists():
        sys.stdout.write(section.path.read_text(encoding="utf-8", errors="replace"))
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
class _Follower:
    """Prints what the run's logs gain until nothing drives the run any more."""

    conn: sqlite3.Connection
    run_id: str
    step: str | None
    failed: bool
    offsets: dict[Path, int] = field(default_factory=dict)
    prefixed: bool = False  # sticky: once steps interleave, every line says its step
    last: str | None = None  # whose output was printed last
    mid_line: bool = False  # the terminal's cursor is not at a line's start
    rounds: int = 0

    def run(self) -> None:
        while True:
            status = j.get_instance(self.conn, self.run_id)["status"]
            done = status in j.TERMINAL or status in j.HIBERNATING or status in _IDLE
            # Read after the status: what a run that has ended wrote is all there.
            self._round()
            if done:
                self._end_line()
                if status not in j.TERMINAL:
                    _note(f"run {self.run_id} is {_word(status)}: nothing more comes until"
                          f" it is driven on (`ci-runner resume {self.run_id}`)")
                return
            time.sleep(FOLLOW_POLL_S)

    def _round(self) -> None:
        sections = _sections(self.conn, self.run_id, self.step, failed=self.failed)
        news = [(s, data) for s in sections if (data := self._new(s.path))]
        self.rounds += 1
        if self.step is None and not self.prefixed:
            # The first round catches up with what was written before: steps that ran
            # one after the other are not interleaved by being read together.
            together = self.rounds > 1 and sum(1 for s, _ in news if s.step) > 1
            self.prefixed = together or self._running() > 1
        for section, data in news:
            self._emit(section, data.decode("utf-8", errors="replace"), len(sections))
        sys.stdout.flush()

    def _new(self, path: Path) -> bytes:
        offset = self.offsets.get(path, 0)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return b""
        self.offsets[path] = offset + len(data)
        return data

    def _running(self) -> int:
        return sum(1 for r in j.steps_of(self.conn, self.run_id, results=False)
                   if r["status"] in ("running", "retrying"))

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
