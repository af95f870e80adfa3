"""The `ci-runner` command: run pipelines, list and inspect runs, read logs, write starters.

Exit codes: 0 complete, 1 pipeline failed, 2 usage or configuration error,
3 the run is waiting (sleep or event) and has hibernated, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ci_runner import paths
from ci_runner.cli.control import (
    LatestArg,
    Scope,
    ScopeOpt,
    ServerOpt,
    no_runs,
    resolve_run,
    scope_of,
)
from ci_runner.cli.foreground import drive_in_foreground
from ci_runner.errors import CIRunnerError, UsageError
from ci_runner.statuses import USER_RUN_STATUSES

app = typer.Typer(
    name="ci-runner",
    help="Durable CI pipelines from .ci/pipeline.py, run in a git worktree at a sha.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RepoOpt = Annotated[Path, typer.Option("--repo", "-C", help="The git repository (default: here).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object.")]


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("ci-runner")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        number = "unknown (not installed: `python3 -m pip install .`)"
    typer.echo(f"ci-runner {number}")
    raise typer.Exit


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True,
        help="Print ci-runner's version and exit.")] = False,
    db: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional
        "--db", metavar="URL|FILE",
        help="The database: a postgresql:// URL a fleet shares, or a SQLite file"
             " (default: CI_RUNNER_DB, else the file in CI_RUNNER_HOME).")] = None,
) -> None:
    """Durable CI pipelines from .ci/pipeline.py, run in a git worktree at a sha."""
    if db is not None:
        from ci_runner import paths

        # Through the environment, so the processes this one starts use it too.
        os.environ[paths.DB_ENV] = db
        paths.database()  # a bad value is refused here, in one line


def _params(values: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} must look like KEY=VALUE")
        params[key.strip()] = value
    return params


@app.command()
def run(
    repo: RepoOpt = Path(),
    rev: Annotated[str, typer.Option(help="Commit, branch or tag to run at.")] = "HEAD",
    include_uncommitted: Annotated[bool, typer.Option(
        "--include-uncommitted", help="Run on a snapshot of tracked changes and untracked files."
    )] = False,
    param: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045 - typer needs Optional
        "--param", "-p", help="KEY=VALUE passed to the pipeline as event.payload (repeatable)."
    )] = None,
    pipeline: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Which Pipeline class, when .ci/pipeline.py defines several."
    )] = None,
    keep_workspace: Annotated[bool, typer.Option(
        "--keep-workspace", help="Keep the run's worktree after it ends."
    )] = False,
    secrets_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="YAML file of NAME: value secrets (mode 600); else secrets come from the env."
    )] = None,
    only: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="Run only these steps (comma-separated); the others are recorded as skipped."
    )] = None,
    skip: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="Skip these steps (comma-separated)."
    )] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Run steps with inputs= even when a cached result matches."
    )] = False,
    sandbox: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--sandbox", metavar="auto|bwrap|landlock|off",
        help="Where the pipeline and its light steps run: auto (bubblewrap, else"
             " Landlock, else none, saying so), bwrap, landlock, or off."
    )] = None,
    timeout: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Fail the run if it runs longer than this ('30 minutes'; waits do not count)."
    )] = None,
    workflow: WorkflowOpt = None,
    job: JobOpt = None,
    matrix: MatrixOpt = None,
    event: EventOpt = None,
    platform: PlatformOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the repo's pipeline at a commit in a fresh worktree, with a live view.

    A repo without .ci/pipeline.py runs its GitHub workflows (.github/workflows)."""
    from ci_runner.dispatch.confine import chosen_mode
    from ci_runner.dispatch.runs import (
        RunRequest,
        discard_child,
        open_engine,
        start_run,
        warm_child,
    )
    from ci_runner.engine.driver import new_instance_id

    mode = chosen_mode(sandbox)
    request = RunRequest(
        repo_path=repo, rev=rev, include_uncommitted=include_uncommitted,
        params=_params(param or []), pipeline=pipeline, keep_workspace=keep_workspace,
        secrets_file=secrets_file.resolve() if secrets_file else None,
        only=split_names(only), skip=split_names(skip), no_cache=no_cache, sandbox=mode,
        timeout_s=_timeout(timeout),
        workflows=selection(workflow, job, matrix, event, platform),
    )
    run_id = new_instance_id()
    # First, so its start-up overlaps all that follows.
    child = warm_child(run_id, repo_path=repo, sandbox=mode)
    if mode == "auto" and child.info.kind != "bwrap":
        from ci_runner.cli.foreground import warning_line

        warning_line(child.info.reason)
    try:
        with open_engine() as engine:
            check_selection(engine, request)
            start_run(engine, request, run_id=run_id)
    except BaseException:
        # Nothing was stored for a run that could not start: leave nothing of it.
        discard_child(run_id, child)
        raise
    raise typer.Exit(drive_in_foreground(run_id, json_out=json_out, child=child))


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    from ci_runner.engine.policy import seconds

    try:
        number = float(value)  # plain seconds, as a number on the command line
    except ValueError:
        return seconds(value, what="--timeout")
    if number <= 0:
        raise UsageError(f"--timeout must be more than 0, not {value!r}")
    return number


def split_names(values: list[str] | None) -> tuple[str, ...]:
    """``--only a,b --only c`` -> ``("a", "b", "c")``; a comma in parentheses is part
    of a name (a workflow's matrix cell: ``test (3.12, ubuntu-latest) / Run pytest``)."""
    import re

    return tuple(n.strip() for v in values or ()
                 for n in re.split(r",(?![^()]*\))", v) if n.strip())


def check_selection(engine: Any, request: Any) -> None:
    """--only/--skip take any step name: a step may be one the last run never reached
    (it failed early), or new in this commit. The run says at its end which selected
    names it never reached. Refused: a name that cannot be a step's, or one both run
    and skipped."""
    from ci_runner.dispatch.runs import check_names

    check_names(request.only, request.skip)


@app.command()
def demo(
    path: Annotated[Optional[Path], typer.Argument(  # noqa: UP045
        help="Where to make the demo repo (default: CI_RUNNER_HOME/demo).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a small demo repo with a pipeline and run it: a first look in one command."""
    from ci_runner.cli.demo import make_demo_repo

    where = make_demo_repo((path or paths.home() / "demo").resolve())
    if not json_out:
        typer.echo(f"demo repo: {where}")
    run(repo=where, rev="HEAD", include_uncommitted=False, param=None, pipeline=None,
        keep_workspace=False, secrets_file=None, only=None, skip=None, no_cache=False,
        workflow=None, job=None, matrix=None, event=None, platform=None, json_out=json_out)


@app.command("send-event")
def send_event(
    run_id: Annotated[str, typer.Argument(
        metavar="RUN", help="The run: an id, a unique prefix of one, or `latest`.")],
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="The event type.")],
    payload: Annotated[Optional[str], typer.Option(help="JSON payload.")] = None,  # noqa: UP045
    repo: ScopeOpt = None,
) -> None:
    """Send an event to a run; it is kept until the run waits for it."""
    from ci_runner.dispatch.runs import open_engine
    from ci_runner.engine.step import valid_event_type

    try:
        import json

        data = json.loads(payload) if payload is not None else None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from exc
    valid_event_type(event_type)
    with open_engine() as engine:
        full = resolve_run(engine.conn, run_id, repo)
        engine.send_event(full, event_type, data)
    typer.echo(f"sent {event_type!r} to run {full}; `ci-runner resume {full}` wakes it")


@app.command()
def runs(
    repo: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--repo", "-C", show_default=False,
        help="Only this repository's runs (default: the git repo here; outside one, all).")]
    = None,
    all_repos: Annotated[bool, typer.Option("--all", help="Every repository's runs.")] = False,
    status: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="STATUS", show_default=False,
        help="Only runs in this status (comma-separated): " + ", ".join(USER_RUN_STATUSES)
             + ".")] = None,
    branch: Annotated[Optional[str], typer.Option(  # noqa: UP045
        metavar="NAME", show_default=False, help="Only runs of this branch.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List recent runs of this repo (--all: of every repo), newest first."""
    if all_repos and repo is not None:
        raise UsageError("--all lists every repository's runs: give --repo or --all, not both")
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    if branch is not None and not branch.strip():
        raise UsageError("--branch needs a branch name")
    statuses = _statuses(status)
    if server is not None:
        from ci_runner.cli import remote

        api = remote.client(server)
        records = remote.list_runs(api, repo=None if repo is None else str(repo),
                                   statuses=status, branch=branch, limit=limit)
        filtered = status is not None or branch is not None or repo is not None
        _print_runs(records, json_out=json_out,
                    empty=f"no run on {api.url} matches" if filtered
                    else f"no runs on {api.url} that you may see")
        return
    from contextlib import closing

    from ci_runner.cli.report import list_records
    from ci_runner.store import connect

    scope = Scope(None, None) if all_repos else scope_of(repo)
    # The store alone: a listing needs no engine (whose import is a third of the time).
    with closing(connect(paths.database())) as conn:
        records = list_records(conn, tenant=scope.tenant, limit=limit,
                               statuses=statuses, branch=branch)
        empty = "" if records or json_out else _nothing_listed(
            conn, scope, filtered=status is not None or branch is not None)
    _print_runs(records, json_out=json_out, empty=empty)


def _print_runs(records: list[dict[str, Any]], *, json_out: bool, empty: str) -> None:
    """``runs``' output, of this machine's runs or a server's."""
    if json_out:
        import json

        typer.echo(json.dumps(records))
        return
    if not records:
        typer.echo(empty)
        return
    from ci_runner.statuses import said

    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        ok = sum(1 for s in r["steps"] if s["status"] == "complete")
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        sha = (r["sha"] or "")[:10] + ("+" if r["snapshot"] else "")
        status = said(r["status"], waiting_for=r["waiting_for"])
        typer.echo(f"{r['run_id']}  {status:<20} {r['repo']:<20} {sha:<11} "
                   f"{ok}/{len(r['steps'])} steps  {took:>7}  {when}")


def _statuses(words: str | None) -> tuple[str, ...] | None:
    """``--status failed,cancelled`` -> the engine's words for them."""
    if words is None:
        return None
    from ci_runner.statuses import engine_words_of

    try:
        return engine_words_of(words)
    except ValueError as exc:
        raise UsageError(f"--status: {exc}") from exc


def _nothing_listed(conn: Any, scope: Scope, *, filtered: bool) -> str:
    from ci_runner.store import journal as j

    if not filtered or not j.count_instances(conn, tenant=scope.tenant):
        return no_runs(conn, scope)
    wider = " (`--all` looks in every repo)" if scope.tenant is not None else ""
    return f"no run{scope.of()} matches{wider}"


@app.command()
def show(
    run_id: LatestArg = None,
    json_out: JsonOpt = False,
    repo: ScopeOpt = None,
    server: ServerOpt = None,
) -> None:
    """Show one run: its commit, status, and every step."""
    if server is not None:
        from ci_runner.cli import remote

        record = remote.record(remote.client(server), run_id,
                               None if repo is None else str(repo))
    else:
        from ci_runner.cli.report import run_record
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            record = run_record(engine.conn, resolve_run(engine.conn, run_id, repo))
    import json

    from ci_runner.cli.view import summary
    from ci_runner.statuses import said

    if json_out:
        typer.echo(json.dumps(record))
        return
    ref = f" ({record['ref']})" if record["ref"] else ""
    snap = " + uncommitted changes" if record["snapshot"] else ""
    typer.echo(f"run      {record['run_id']}\nrepo     {record['repo_path']}\n"
               f"commit   {record['sha']}{ref}{snap}\ntrigger  {record['trigger']}\n"
               f"status   {said(record['status'], waiting_for=record['waiting_for'])}")
    if record["params"]:
        typer.echo(f"params   {json.dumps(record['params'])}")
    for s in record["steps"]:
        took = f"{s['duration_s']:.2f}s" if s["duration_s"] is not None else "-"
        code = f"exit {s['exit_code']}" if s["exit_code"] is not None else ""
        tries = f"{s['attempts']} attempt{'s' if s['attempts'] != 1 else ''}"
        typer.echo(f"  {s['status']:<11} {s['name']:<24} {took:>8}  {tries:<11} {code}")
        if s["error"] and s["status"] != "complete":  # why it failed, was rejected or cancelled
            typer.echo(f"              {s['error']}")
        if s.get("skipped_because"):
            typer.echo(f"              skipped: {s['skipped_because']}")
        if s.get("summary"):  # a workflow step's $GITHUB_STEP_SUMMARY
            typer.echo("              summary:")
            for line in s["summary"].rstrip().splitlines():
                typer.echo(f"                {line}")
    typer.echo(summary(record))


@app.command()
def logs(
    run_id: LatestArg = None,
    step: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        metavar="[STEP]", show_default=False,
        help="One step's log (`pipeline`: the pipeline's own output).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output.")]
    = False,
    failed: Annotated[bool, typer.Option("--failed", help="Only the failed steps' logs.")]
    = False,
    repo: ScopeOpt = None,
    server: ServerOpt = None,
) -> None:
    """Print a run's step logs and the pipeline's own output (secrets are masked)."""
    if failed and step is not None:
        raise UsageError("give a STEP or --failed, not both")
    if server is not None:
        from ci_runner.cli import remote
        from ci_runner.cli.logs import print_remote_logs

        print_remote_logs(remote.client(server), run_id, step, follow=follow, failed=failed,
                          repo=None if repo is None else str(repo))
        return
    from ci_runner.cli.logs import print_logs

    print_logs(run_id, step, follow=follow, failed=failed, repo=repo)


@app.command()
def login(
    url: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        metavar="[URL]", show_default=False, envvar="CI_RUNNER_SERVER",
        help="The server, as https://HOST[:PORT].")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow plain http:// to a host other than this machine (the"
        " token then crosses the network readable).")] = False,
) -> None:
    """Log in to a team's `ci-runner serve`: the token (asked for, or read from stdin) is
    checked with the server and kept for `--server URL` (or CI_RUNNER_SERVER)."""
    from ci_runner.cli import remote

    if url is None:
        raise UsageError("give the server: `ci-runner login https://HOST[:PORT]`")
    where, user, kept = remote.login(url, remote.read_token(), insecure=insecure)
    who = f"as {user}" if user else "with the server's shared token"
    typer.echo(f"logged in to {where} {who} (token kept in {kept}); use it with"
               f" --server {where} or {remote.SERVER_ENV}={where}")


@app.command()
def logout(
    url: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        metavar="[URL]", show_default=False,
        help="The server (default: the only one logged in to).")] = None,
) -> None:
    """Forget a server's token on this machine (the server keeps it valid)."""
    from ci_runner.cli import remote

    typer.echo(f"logged out of {remote.logout(url)}: its token is no longer kept here")


@app.command()
def init(
    repo: RepoOpt = Path(),
    template: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Starter to copy (default: picked from the repo's files).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing pipeline.")]
    = False,
) -> None:
    """Write a starter .ci/pipeline.py into the repository."""
    from ci_runner.cli.starters import write_starter

    path, name = write_starter(repo, template, force=force)
    typer.echo(f"wrote {path} (starter {name!r}); try it: ci-runner run --include-uncommitted")


from ci_runner.cli import (  # noqa: E402
    control,
    images,
    kept,
    prune,
    secrets,
    serve,
    ui,
    watch,
    workflows,
)
from ci_runner.cli.workflows import (  # noqa: E402
    EventOpt,
    JobOpt,
    MatrixOpt,
    PlatformOpt,
    WorkflowOpt,
    selection,
)

control.register(app)
workflows.register(app)
serve.register(app)
images.register(app)
kept.register(app)
prune.register(app)
secrets.register(app)
watch.register(app)
ui.register(app)


def _narrowed(argv: list[str]) -> typer.Typer:
    """``app`` holding just the command ``argv`` starts with, when there is one.

    Typer turns every registered command into a click command on each start (~25 ms
    for all of ours, mostly evaluating annotations); running one command needs one.
    Anything else (``--help``, a typo) gets the whole app and its full messages.
    """
    if not argv or argv[0] in _GROUP_ONLY:
        return _summaries()
    if argv[0].startswith("-"):
        return app
    from typer.main import get_command_name

    narrow = typer.Typer(name=app.info.name, add_completion=False,
                         pretty_exceptions_enable=False, rich_markup_mode=None)
    narrow.callback()(_group)  # stays a group: `ci-runner NAME ...` parses as before
    for info in app.registered_commands:
        if info.callback and (info.name or get_command_name(info.callback.__name__)) == argv[0]:
            narrow.registered_commands = [info]
            return narrow
    for group in app.registered_groups:
        if group.name == argv[0]:
            narrow.registered_groups = [group]
            return narrow
    return app


# What the group answers alone, before any command is looked at: its help (every
# command's name and summary) and its version. Anything else starting with "-" (a typo,
# "--") gets the whole app.
_GROUP_ONLY = ("--help", "--version", "-V")


def _summaries() -> typer.Typer:
    """``app`` with each command's parameters left out: the top-level help lists only
    names and summaries, and building every command's parameters from its annotations
    is most of the time `ci-runner --help` took. The help text is typer's own, from the
    same names, docstrings and settings (tests/test_cli_startup.py compares it)."""
    import copy

    def bare(typer_app: typer.Typer) -> typer.Typer:
        lean = copy.copy(typer_app)
        lean.registered_commands = [_without_params(info)
                                    for info in typer_app.registered_commands]
        lean.registered_groups = []
        for group in typer_app.registered_groups:
            kept = copy.copy(group)
            if group.typer_instance is not None:
                kept.typer_instance = bare(group.typer_instance)
            lean.registered_groups.append(kept)
        return lean

    return bare(app)


def _without_params(info: Any) -> Any:
    import copy

    original = info.callback
    if original is None:
        return info

    def command() -> None:
        raise AssertionError("only the top-level help is built from these")

    command.__name__, command.__doc__ = original.__name__, original.__doc__
    command.__qualname__ = original.__qualname__
    kept = copy.copy(info)
    kept.callback = command
    return kept


def _group() -> None:
    """Nothing to do: its presence keeps ``_narrowed``'s app a group of commands."""


def main() -> None:
    try:
        try:
            _narrowed(sys.argv[1:])(prog_name="ci-runner")
        except CIRunnerError:
            raise
        except Exception as exc:  # an OSError or sqlite3's (not imported for --help)
            full = disk_full(exc)
            if full is None:
                raise
            raise full from exc
    except CIRunnerError as exc:
        message = f"error: {exc.message}"
        if sys.stderr.isatty():
            message = f"\x1b[31m{message}\x1b[0m"
        print(message, file=sys.stderr)
        sys.exit(exc.exit_code)


def disk_full(exc: BaseException) -> CIRunnerError | None:
    """The one line a full disk deserves, or None when ``exc`` is something else."""
    from ci_runner.errors import disk_full as is_full

    if not is_full(exc):
        return None
    return CIRunnerError(
        f"the disk is full ({paths.home()}): nothing committed is lost; free space (`ci-runner"
        " prune`, or `ci-runner cancel RUN_ID` for the run filling it, which frees its"
        " worktree first), then `ci-runner resume RUN_ID` (`ci-runner runs` lists them)")
