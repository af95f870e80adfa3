"""Commands that act on existing runs: pending, approve, reject, cancel, pause, unpause,
retry, resume and the worker."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from typing import Annotated, Optional

import typer

from ci_runner import paths
from ci_runner.cli.foreground import drive_in_foreground
from ci_runner.errors import UsageError

RunArg = Annotated[str, typer.Argument(
    metavar="RUN_ID", help="The run (a unique prefix is enough).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DetachOpt = Annotated[bool, typer.Option(
    "--detach", help="Resume in the background instead of in this terminal.")]
CommentOpt = Annotated[Optional[str], typer.Option(help="Why; recorded on the run.")]  # noqa: UP045


def drive_detached(run_id: str) -> int:
    """Start `ci-runner resume RUN_ID` in its own session; its output goes to the run's log."""
    log_dir = paths.run_logs(run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "resume.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ci_runner", "resume", run_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=os.environ.copy(),
        )
    return proc.pid


def register(app: typer.Typer) -> None:
    @app.command()
    def pending(json_out: JsonOpt = False) -> None:
        """List runs waiting for an approval or an event."""
        from ci_runner.dispatch.control import pending_records
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            records = pending_records(engine)
        if json_out:
            typer.echo(json.dumps(records))
            return
        if not records:
            typer.echo("nothing is waiting")
            return
        for r in records:
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["since"]))
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["timeout_at"]))
            message = f"  {r['message']}" if r["message"] else ""
            typer.echo(f"{r['run_id']}  {r['repo']}@{(r['sha'] or '')[:10]}  step "
                       f"{r['step']!r} waits for {r['what']} since {since} (times out "
                       f"{until}){message}")

    def _decide(run_id: str, comment: str | None, who: str | None, detach: bool,
                json_out: bool, *, reject: bool) -> None:
        from ci_runner.dispatch.control import decide
        from ci_runner.dispatch.runs import open_engine, warm_child
        from ci_runner.store import journal as j

        by = who or getpass.getuser()
        verb = "rejected" if reject else "approved"
        with open_engine() as engine:
            full = str(j.get_instance(engine.conn, run_id)["id"])
            # The pipeline process starts while the approval is being stored.
            child = None if detach else warm_child(full)
            try:
                decide(engine, full, by=by, comment=comment, reject=reject)
            except BaseException:
                if child is not None:
                    child.close()
                raise
        if child is None:
            pid = drive_detached(full)
            typer.echo(f"{verb} run {full} as {by}; resuming in the background (pid {pid}):"
                       f" ci-runner logs {full} --follow")
            return
        if not json_out:
            typer.echo(f"{verb} run {full} as {by}; resuming it")
        raise typer.Exit(drive_in_foreground(full, json_out=json_out, child=child))

    @app.command()
    def approve(
        run_id: RunArg,
        comment: CommentOpt = None,
        who: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--as", help="Approve as this name (default: your user name).")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Approve a run waiting at wait_for_approval, and resume it."""
        _decide(run_id, comment, who, detach, json_out, reject=False)

    @app.command()
    def reject(
        run_id: RunArg,
        comment: CommentOpt = None,
        who: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--as", help="Reject as this name (default: your user name).")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Reject a run waiting at wait_for_approval (it fails unless it catches Rejected)."""
        _decide(run_id, comment, who, detach, json_out, reject=True)

    @app.command()
    def cancel(run_id: RunArg) -> None:
        """Terminate a run: its processes stop and it is recorded as terminated."""
        import sqlite3

        from ci_runner.dispatch.control import cancel as do_cancel
        from ci_runner.dispatch.control import free_space_of
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.errors import disk_full

        try:
            engine = open_engine()
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc) or not free_space_of(run_id):
                raise
            # A disk so full that the database cannot open: the run's worktree (found
            # by its id, the database unread) went first; now there is room.
            engine = open_engine()
        with engine:
            full = do_cancel(engine, run_id)
        typer.echo(f"run {full} terminated")

    @app.command()
    def pause(run_id: RunArg) -> None:
        """Pause a run (a running one pauses before its next step)."""
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.store import journal as j

        with open_engine() as engine:
            full = j.get_instance(engine.conn, run_id)["id"]
            state = j.request_pause(engine.conn, full)
        typer.echo(f"run {full} {state}; `ci-runner unpause {full}` continues it")

    @app.command()
    def unpause(run_id: RunArg, detach: DetachOpt = False, json_out: JsonOpt = False) -> None:
        """Continue a paused run, in the foreground unless --detach."""
        from ci_runner.dispatch.control import needs_driver
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.store import journal as j

        with open_engine() as engine:
            full = j.get_instance(engine.conn, run_id)["id"]
            status = j.unpause(engine.conn, full)
            due = full in needs_driver(engine)
        if status == "running":
            typer.echo(f"run {full}: pause withdrawn")
            return
        if not due:
            # Hibernated again (an approval, a long sleep): nothing to drive until then.
            typer.echo(f"run {full} unpaused; it is {status} again (`ci-runner pending`)")
            return
        if detach:
            typer.echo(f"run {full} unpaused; resuming in the background (pid "
                       f"{drive_detached(full)})")
            return
        raise typer.Exit(drive_in_foreground(full, json_out=json_out))

    @app.command()
    def retry(
        run_id: RunArg,
        from_step: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--from", help="Keep the results of the steps before this one.")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Run a run again, keeping the results before --from STEP (none without it)."""
        from ci_runner.dispatch.control import retry as do_retry
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            full = do_retry(engine, run_id, from_step)
        if detach:
            typer.echo(f"run {full} retrying in the background (pid {drive_detached(full)})")
            return
        raise typer.Exit(drive_in_foreground(full, json_out=json_out))

    @app.command()
    def resume(
        run_id: Annotated[Optional[str], typer.Argument(  # noqa: UP045
            metavar="[RUN_ID]", help="The run to resume.")] = None,
        all_runs: Annotated[bool, typer.Option(
            "--all", help="Every run that needs a driver: dead runners, due timers, events.")]
        = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Drive a hibernated, orphaned or interrupted run on from its last committed step."""
        if (run_id is None) == (not all_runs):
            raise UsageError("give a RUN_ID or --all")
        if run_id is not None:
            raise typer.Exit(drive_in_foreground(run_id, json_out=json_out))
        from ci_runner.dispatch.control import needs_driver
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            ids = needs_driver(engine)
            # Runs a Ctrl-C stopped: no worker takes them, but --all is the user asking.
            from ci_runner.store import journal as j

            ids += [i for i in j.with_status(engine.conn, "interrupted") if i not in ids]
        if not ids:
            typer.echo("no run needs resuming")
            return
        codes = [drive_in_foreground(rid, json_out=json_out) for rid in ids]
        raise typer.Exit(_combined(codes))

    @app.command()
    def worker(
        concurrency: Annotated[int, typer.Option(help="Runs driven at once.")] = 4,
        poll: Annotated[float, typer.Option(help="Seconds between looks for work.")] = 1.0,
        once: Annotated[bool, typer.Option(
            "--once", help="Drive what needs a driver now, then exit.")] = False,
    ) -> None:
        """Drive due and queued runs, and take over runs whose runner died, until stopped."""
        from ci_runner.dispatch.worker import Worker

        if concurrency < 1 or poll <= 0:
            raise UsageError("--concurrency must be >= 1 and --poll > 0")
        Worker(concurrency=concurrency, poll_s=poll).serve(once=once)


def _combined(codes: list[int]) -> int:
    if any(c in (1, 2, 130) for c in codes):
        return max(c for c in codes if c in (1, 2, 130))
    return 3 if 3 in codes else 0

