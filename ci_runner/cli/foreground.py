"""Driving a run in this terminal, and what its outcome means for the exit code."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ci_runner.engine.process import ChildProcess


def drive_in_foreground(
    run_id: str, *, json_out: bool, child: ChildProcess | None = None
) -> int:
    """Drive the run here with the live view, like `run`; returns the exit code."""
    from ci_runner.cli.report import run_record
    from ci_runner.cli.view import make_view
    from ci_runner.dispatch.runs import drive_run, open_engine

    with open_engine() as engine:
        view = make_view(json_mode=json_out)
        view.header(run_record(engine.conn, run_id, with_steps=False))
        try:
            drive_run(engine, run_id, observer=view, child=child)
        except KeyboardInterrupt:
            view.close(run_record(engine.conn, run_id))
            typer.echo(f"interrupted: nothing of it runs now, and nothing drives it again until"
                       f" `ci-runner resume {run_id}` (or `ci-runner cancel {run_id}`)",
                       err=True)
            return 130
        record = run_record(engine.conn, run_id)
    return show_end(view, record, json_out=json_out)


def show_end(view: Any, record: dict[str, Any], *, json_out: bool) -> int:
    """A run shown in this terminal has stopped (driven here, or followed on a server):
    the view's summary, the record with --json, and the exit code its outcome means."""
    from ci_runner.cli.report import exit_code

    said_apart = usage_error(record)
    # A configuration error is said once, on its own `error:` line (below), not also in
    # the summary; any other error is in the summary, with the pipeline's lines.
    view.close({**record, "error": None} if said_apart else record)
    if json_out:
        typer.echo(json.dumps(record))
    if said_apart:
        from ci_runner.errors import error_line as one_line

        error_line(one_line(record["error"]))
    return exit_code(record)


def usage_error(record: dict[str, Any]) -> bool:
    """Whether the run ended on a usage or configuration error (exit code 2)."""
    from ci_runner.cli.report import EXIT_USAGE, exit_code

    return exit_code(record) == EXIT_USAGE and bool(record.get("error"))


def error_line(message: str) -> None:
    text = f"error: {message}"
    if sys.stderr.isatty():
        text = f"\x1b[31m{text}\x1b[0m"
    print(text, file=sys.stderr)


def warning_line(message: str) -> None:
    text = f"warning: {message}"
    if sys.stderr.isatty():
        text = f"\x1b[33m{text}\x1b[0m"
    print(text, file=sys.stderr)
