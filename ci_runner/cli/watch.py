"""`ci-runner watch`: rerun the pipeline on the working tree whenever it changes.

The loop is ``ci_runner.watch``; this module parses the options and draws the screen
with the views of ``cli/view.py``: on a terminal, each run clears the screen and shows
a one-line history of recent runs above its live step view; in a pipe, plain lines.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from ci_runner.cli.view import RunView
    from ci_runner.watch import WatchOptions

# Editors write a save as a burst of events within a few ms; 150 ms of quiet ends it
# and keeps a save-to-first-step time under half a second (benchmarks/bench_watch.py).
DEFAULT_DEBOUNCE_MS = 150
HISTORY_LINES = 8
_CLEAR = "\x1b[H\x1b[2J"


class WatchScreen:
    """Implements ``ci_runner.watch.Screen`` on a terminal (live) or a pipe (plain)."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.banner = ""
        self.history: deque[str] = deque(maxlen=HISTORY_LINES)
        self.view: RunView | None = None

    def _print(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def watching(self, root: Path, options: WatchOptions) -> None:
        selection = ""
        if options.only:
            selection += f", only {','.join(options.only)}"
        if options.skip:
            selection += f", skipping {','.join(options.skip)}"
        self.banner = (f"watching {root}{selection}: a run starts "
                       f"{options.debounce_s * 1000:.0f} ms after the last change; Ctrl-C stops")
        self._print(self.banner)

    def run_started(self, record: dict[str, Any]) -> RunView:
        from ci_runner.cli.view import make_view

        if self.live:
            sys.stdout.write(_CLEAR)
            self._print(self.banner)
            for line in self.history:
                self._print(line)
        self.view = make_view(json_mode=False)
        self.view.header(record)
        return self.view

    def run_ended(self, record: dict[str, Any]) -> None:
        if self.view is not None:
            self.view.close(record)
            self.view = None
        line = history_line(record)
        self.history.append(line)
        self._print(line)

    def problem(self, message: str) -> None:
        line = f"✗ {time.strftime('%H:%M:%S')} {message}"
        self.history.append(line)
        self._print(line)


def history_line(record: dict[str, Any]) -> str:
    """One line per run: when, which, how it ended, and what to do when it waits."""
    from ci_runner.cli.report import WAITING
    from ci_runner.cli.view import ICONS
    from ci_runner.watch import superseded

    status, rid = record["status"], record["run_id"]
    steps = record.get("steps", [])
    ok = sum(1 for s in steps if s["status"] == "complete")
    seconds = record.get("duration_s")
    took = f" after {seconds:.2f}s" if seconds is not None else ""
    when = time.strftime("%H:%M:%S", time.localtime(record["created_at"]))
    head = f"{when} run {rid}"
    counts = f"{ok}/{len(steps)} steps"
    if superseded(record):
        return f"{ICONS['skipped']} {head} superseded by a change{took}, {counts}"
    if status == "complete":
        return f"{ICONS['complete']} {head} complete{took}, {counts}"
    if status in WAITING:
        if record.get("waiting_for") == "approval":
            return (f"{ICONS['waiting']} {head} waits for approval: ci-runner approve {rid}"
                    " (a change does not cancel it)")
        return f"{ICONS['waiting']} {head} {status}: ci-runner resume {rid}"
    line = f"{ICONS['failed']} {head} {status}{took}, {counts}"
    message = str((record.get("error") or {}).get("message") or "")
    return f"{line}: {message.splitlines()[0]}" if message.strip() else line


def register(app: typer.Typer) -> None:
    @app.command()
    def watch(
        path: Annotated[Path, typer.Argument(
            help="The folder to watch (default: here); its git repository is run.")] = Path(),
        only: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
            help="Run only these steps (comma-separated); the others are recorded as skipped."
        )] = None,
        skip: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
            help="Skip these steps (comma-separated)."
        )] = None,
        debounce: Annotated[int, typer.Option(
            metavar="MS", help="Start a run this many milliseconds after the last change.")]
        = DEFAULT_DEBOUNCE_MS,
        param: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
            "--param", "-p", help="KEY=VALUE passed to the pipeline as event.payload."
        )] = None,
        pipeline: Annotated[Optional[str], typer.Option(  # noqa: UP045
            help="Which Pipeline class, when .ci/pipeline.py defines several.")] = None,
        secrets_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
            help="YAML file of NAME: value secrets (mode 600); else the repo's"
            " `ci-runner secrets`, then the environment.")] = None,
        now: Annotated[bool, typer.Option(
            "--now", help="Also run once at start, before any change.")] = False,
    ) -> None:
        """Run the pipeline on a snapshot of the working tree after every change; a change
        during a run supersedes it. Ignores .git/ and what git ignores."""
        from ci_runner.cli.app import _params, check_selection, split_names
        from ci_runner.dispatch.runs import RunRequest, open_engine
        from ci_runner.watch import Watch, WatchOptions

        if secrets_file is not None:
            from ci_runner.secrets import check_secrets_file

            secrets_file = secrets_file.resolve()
            check_secrets_file(secrets_file)
        options = WatchOptions(
            path=path, only=split_names(only), skip=split_names(skip),
            params=_params(param or []), pipeline=pipeline, secrets_file=secrets_file,
            debounce_s=debounce / 1000, run_now=now,
        )
        if options.only or options.skip:
            with open_engine() as engine:
                check_selection(engine, RunRequest(repo_path=path, only=options.only,
                                                   skip=options.skip, pipeline=pipeline))
        screen = WatchScreen(live=sys.stdout.isatty())
        raise typer.Exit(Watch(options, screen).serve())
