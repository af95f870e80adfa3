"""Commands that act on existing runs: pending, approve, reject, cancel, pause, unpause,
retry, resume and the worker; and how a command line names a run (``resolve_run``).

A run is named by its id, a unique prefix of it, or ``latest``: the newest run of the
repository the command runs in (``--repo``/``-C`` names another; outside a repository,
the newest run of any). Commands that read a run or drive it on (show, logs, artifacts,
resume, retry, unpause) default to ``latest``; ``approve``/``reject`` default to the one run
waiting for an approval. Commands that stop a run (cancel, pause) want it named, if
only as ``latest``: a stray command must not stop a run nobody meant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ci_runner import paths
from ci_runner.cli.foreground import drive_in_foreground
from ci_runner.errors import RunNotFound, UsageError

if TYPE_CHECKING:
    import sqlite3

    from ci_runner.cli.remote import Client
    from ci_runner.engine.driver import Engine

LATEST = "latest"

RunArg = Annotated[Optional[str], typer.Argument(  # noqa: UP045 - typer needs Optional
    metavar="RUN", show_default=False,
    help="The run: an id, a unique prefix of one, or `latest` (must be given).")]
LatestArg = Annotated[Optional[str], typer.Argument(  # noqa: UP045
    metavar="[RUN]", show_default=False,
    help="The run: an id, a unique prefix of one, or `latest` (the default: the newest"
         " run of this repo).")]
ApprovalArg = Annotated[Optional[str], typer.Argument(  # noqa: UP045
    metavar="[RUN]", show_default=False,
    help="The run: an id, a unique prefix of one, or `latest` (the default: the one run"
         " of this repo waiting for an approval).")]
ScopeOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--repo", "-C", show_default=False,
    help="The repo whose runs `latest` means (default: the git repo here; outside one,"
         " every repo).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DetachOpt = Annotated[bool, typer.Option(
    "--detach", help="Resume in the background instead of in this terminal.")]
CommentOpt = Annotated[Optional[str], typer.Option(help="Why; recorded on the run.")]  # noqa: UP045
ServerOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    "--server", envvar="CI_RUNNER_SERVER", metavar="URL", show_default=False,
    help="Act on this team server's runs, through its API (`ci-runner login URL`"
         " first).")]


@dataclass(frozen=True)
class Scope:
    """Whose runs a command means: one repository's (``tenant``), or every one's."""

    tenant: str | None
    name: str | None
    """The repository's name, for messages (None: every repository)."""

    def of(self) -> str:
        return f" of {self.name}" if self.name else ""


def scope_of(repo: Path | None) -> Scope:
    """``--repo`` when given, else the git repository the command runs in, else all."""
    from ci_runner.errors import NotAGitRepository
    from ci_runner.workspace import open_repo, tenant_key

    if repo is None:
        try:
            info = open_repo(Path.cwd())
        except NotAGitRepository:
            return Scope(None, None)
    else:
        info = open_repo(repo)
    return Scope(tenant_key(info), info.name)


def resolve_run(conn: sqlite3.Connection, ref: str | None, repo: Path | None = None) -> str:
    """The full id of the run ``ref`` names: an id, a unique prefix, or ``latest`` (also
    what None means). An ambiguous prefix is an error that lists its candidates."""
    from ci_runner.store import journal as j

    if ref is None or ref == LATEST:
        scope = scope_of(repo)
        found = j.newest_instance(conn, tenant=scope.tenant)
        if found is None:
            raise RunNotFound(no_runs(conn, scope))
        return found
    if not ref.strip():
        raise UsageError("the run is empty: give a run id, a unique prefix of one, or latest")
    try:
        return str(j.get_instance(conn, ref)["id"])
    except RunNotFound:
        candidates = j.instances_with_prefix(conn, ref, limit=1000)
        if len(candidates) < 2:
            raise
    from ci_runner.runnames import ambiguous

    raise ambiguous(ref, candidates)


def no_runs(conn: sqlite3.Connection, scope: Scope) -> str:
    """What to say when a scope holds no run at all."""
    from ci_runner.store import journal as j

    if scope.tenant is not None and j.count_instances(conn):
        return (f"no run{scope.of()} yet: `ci-runner run` starts one (`ci-runner runs --all`"
                " lists other repos' runs)")
    return "no runs yet: `ci-runner run` in a repo with .ci/pipeline.py starts one"


def awaiting_approval(engine: Engine, repo: Path | None) -> str:
    """The one run waiting for an approval (in the repo here, else anywhere): what
    ``approve`` and ``reject`` act on when no run is named."""
    from ci_runner import runnames
    from ci_runner.dispatch.control import pending_records

    scope = scope_of(repo)
    found = runnames.awaiting_approval(pending_records(engine, tenant=scope.tenant),
                                       scope.of())
    if found is not None:
        return found
    elsewhere = (runnames.approvals(pending_records(engine))
                 if scope.tenant is not None else [])
    n = len(elsewhere)
    hint = (f"; {n} run{'s' if n > 1 else ''} of other repos {'do' if n > 1 else 'does'}"
            " (`ci-runner pending` lists them): name one" if n else "")
    raise UsageError(f"no run{scope.of()} waits for an approval{hint}")


def named(run_id: str | None, verb: str) -> str:
    """``run_id``, which a command that stops runs must be given."""
    if run_id is None:
        raise UsageError(f"name the run to {verb}: `ci-runner {verb} RUN` (an id, a unique"
                         f" prefix, or `latest`)")
    return run_id


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
    def pending(json_out: JsonOpt = False, server: ServerOpt = None) -> None:
        """List runs waiting for an approval or an event."""
        if server is not None:
            from ci_runner.cli import remote

            records, stopped = remote.pending(remote.client(server)), []
        else:
            from ci_runner.dispatch.control import pending_records
            from ci_runner.dispatch.runs import open_engine
            from ci_runner.store import journal as j

            with open_engine() as engine:
                records = pending_records(engine)
                # Not waiting for anything but the user: said here so nobody forgets them.
                stopped = [] if json_out else j.with_status(engine.conn, "interrupted")
        if json_out:
            typer.echo(json.dumps(records))
            return
        if not records and not stopped:
            typer.echo("nothing is waiting")
            return
        for r in records:
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["since"]))
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["timeout_at"]))
            message = f"  {r['message']}" if r["message"] else ""
            typer.echo(f"{r['run_id']}  {r['repo']}@{(r['sha'] or '')[:10]}  step "
                       f"{r['step']!r} waits for {r['what']} since {since} (times out "
                       f"{until}){message}")
        for rid in stopped:
            typer.echo(f"{rid}  interrupted: `ci-runner resume {rid}` drives it on,"
                       f" `ci-runner cancel {rid}` ends it")

    def _decide(run_id: str | None, repo: Path | None, comment: str | None, who: str | None,
                detach: bool, json_out: bool, server: str | None, *, reject: bool) -> None:
        if server is not None:
            _decide_remotely(run_id, comment, who, detach, json_out, server, reject=reject)
            return
        import getpass

        from ci_runner.dispatch.control import decide
        from ci_runner.dispatch.runs import open_engine, warm_child

        by = who or getpass.getuser()
        verb = "rejected" if reject else "approved"
        with open_engine() as engine:
            if run_id is None:
                full = awaiting_approval(engine, repo)
            else:
                full = resolve_run(engine.conn, run_id, repo)
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
        run_id: ApprovalArg = None,
        comment: CommentOpt = None,
        who: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--as", help="Approve as this name (default: your user name; never against"
            " a server, which records the logged-in user).")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
        repo: ScopeOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Approve a run waiting at wait_for_approval, and resume it."""
        _decide(run_id, repo, comment, who, detach, json_out, server, reject=False)

    @app.command()
    def reject(
        run_id: ApprovalArg = None,
        comment: CommentOpt = None,
        who: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--as", help="Reject as this name (default: your user name; never against"
            " a server, which records the logged-in user).")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
        repo: ScopeOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Reject a run waiting at wait_for_approval (it fails unless it catches Rejected)."""
        _decide(run_id, repo, comment, who, detach, json_out, server, reject=True)

    @app.command()
    def cancel(run_id: RunArg = None, repo: ScopeOpt = None, server: ServerOpt = None) -> None:
        """Cancel a run: its processes and containers stop and it is recorded cancelled."""
        if server is not None:
            from ci_runner.cli import remote

            ref = named(run_id, "cancel")
            typer.echo(f"run {remote.cancel(remote.client(server), ref)} cancelled")
            return
        import sqlite3

        from ci_runner.dispatch.control import cancel as do_cancel
        from ci_runner.dispatch.control import free_space_of
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.errors import disk_full

        ref = named(run_id, "cancel")
        try:
            engine = open_engine()
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc) or ref == LATEST or not free_space_of(ref):
                raise
            # A disk so full that the database cannot open: the run's worktree (found
            # by its id, the database unread) went first; now there is room.
            engine = open_engine()
        with engine:
            full = do_cancel(engine, resolve_run(engine.conn, ref, repo))
        typer.echo(f"run {full} cancelled")

    @app.command()
    def pause(run_id: RunArg = None, repo: ScopeOpt = None) -> None:
        """Pause a run (a running one pauses before its next step)."""
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.store import journal as j

        with open_engine() as engine:
            full = resolve_run(engine.conn, named(run_id, "pause"), repo)
            state = j.request_pause(engine.conn, full)
        typer.echo(f"run {full} {state}; `ci-runner unpause {full}` continues it")

    @app.command()
    def unpause(run_id: LatestArg = None, detach: DetachOpt = False,
                json_out: JsonOpt = False, repo: ScopeOpt = None) -> None:
        """Continue a paused run, in the foreground unless --detach."""
        from ci_runner.dispatch.control import needs_driver
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.store import journal as j

        with open_engine() as engine:
            full = resolve_run(engine.conn, run_id, repo)
            status = j.unpause(engine.conn, full)
            due = full in needs_driver(engine)
        if status == "running":
            typer.echo(f"run {full}: pause withdrawn")
            return
        if not due:
            # Hibernated again (an approval, a long sleep): nothing to drive until then.
            from ci_runner.statuses import phrase

            typer.echo(f"run {full} unpaused; it is {phrase(status)} again"
                       " (`ci-runner pending`)")
            return
        if detach:
            typer.echo(f"run {full} unpaused; resuming in the background (pid "
                       f"{drive_detached(full)})")
            return
        raise typer.Exit(drive_in_foreground(full, json_out=json_out))

    @app.command()
    def retry(
        run_id: LatestArg = None,
        from_step: Annotated[Optional[str], typer.Option(  # noqa: UP045
            "--from", help="Keep the results of the steps before this one.")] = None,
        detach: DetachOpt = False,
        json_out: JsonOpt = False,
        repo: ScopeOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Run a run again, keeping the results before --from STEP (none without it)."""
        if server is not None:
            from ci_runner.cli import remote

            api = remote.client(server)
            full = remote.retry(api, run_id, from_step)
            if detach:
                typer.echo(f"run {full} retrying on {api.url}: ci-runner logs {full} --follow"
                           f" --server {api.url}")
                return
            raise typer.Exit(follow_remote_run(api, full, json_out=json_out))
        from ci_runner.dispatch.control import retry as do_retry
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            full = do_retry(engine, resolve_run(engine.conn, run_id, repo), from_step)
        if detach:
            typer.echo(f"run {full} retrying in the background (pid {drive_detached(full)})")
            return
        raise typer.Exit(drive_in_foreground(full, json_out=json_out))

    @app.command()
    def resume(
        run_id: LatestArg = None,
        all_runs: Annotated[bool, typer.Option(
            "--all", help="Every run that needs a driver: dead runners, due timers, events.")]
        = False,
        json_out: JsonOpt = False,
        repo: ScopeOpt = None,
    ) -> None:
        """Drive a hibernated, orphaned or interrupted run on from its last committed step."""
        from ci_runner.dispatch.control import needs_driver
        from ci_runner.dispatch.runs import open_engine

        if all_runs and (run_id is not None or repo is not None):
            raise UsageError("--all resumes every run that needs it: give RUN or --all, not"
                             " both")
        if not all_runs:
            with open_engine() as engine:
                full = resolve_run(engine.conn, run_id, repo)
            raise typer.Exit(drive_in_foreground(full, json_out=json_out))
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
        from ci_runner import paths
        from ci_runner.dispatch.worker import Worker

        if concurrency < 1 or poll <= 0:
            raise UsageError("--concurrency must be >= 1 and --poll > 0")
        db = paths.database()
        if isinstance(db, str):  # PostgreSQL: one of a fleet, claiming with SKIP LOCKED
            from ci_runner.dispatch.fleet import FleetWorker

            FleetWorker(concurrency=concurrency, poll_s=poll, url=db).serve(once=once)
            return
        Worker(concurrency=concurrency, poll_s=poll).serve(once=once)


def _decide_remotely(run_id: str | None, comment: str | None, who: str | None, detach: bool,
                     json_out: bool, server: str, *, reject: bool) -> None:
    """Approve or reject on a server, as the logged-in user; then, unless --detach,
    follow the run there until it stops, as a local approval drives it here."""
    from ci_runner.cli import remote

    if who is not None:
        raise UsageError("--as does not apply with --server: the server records the logged-in"
                         " user (log in with that user's token to decide as them)")
    api = remote.client(server)
    full, by = remote.decide(api, run_id, comment=comment, reject=reject)
    verb = "rejected" if reject else "approved"
    if detach:
        typer.echo(f"{verb} run {full} as {by} on {api.url}: ci-runner logs {full} --follow"
                   f" --server {api.url}")
        return
    if not json_out:
        typer.echo(f"{verb} run {full} as {by}; the server resumes it")
    raise typer.Exit(follow_remote_run(api, full, json_out=json_out))


def follow_remote_run(api: Client, run_id: str, *, json_out: bool) -> int:
    """Show a server's run with the view a local run gets (its steps as they change,
    their new output, the summary; the record with --json) until it stops; the exit
    code its outcome means, as for a local run."""
    from ci_runner.cli import remote
    from ci_runner.cli.foreground import show_end
    from ci_runner.cli.view import make_view

    view = make_view(json_mode=json_out)
    view.header(remote.record(api, run_id))
    try:
        record = remote.watch(api, run_id, view)
    except KeyboardInterrupt:
        view.close(remote.record(api, run_id))
        typer.echo(f"stopped watching; the server drives run {run_id} on (`ci-runner logs"
                   f" {run_id} --follow --server {api.url}`)", err=True)
        return 130
    return show_end(view, record, json_out=json_out)


def _combined(codes: list[int]) -> int:
    if any(c in (1, 2, 130) for c in codes):
        return max(c for c in codes if c in (1, 2, 130))
    return 3 if 3 in codes else 0

