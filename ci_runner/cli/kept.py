"""What runs keep: `ci-runner artifacts RUN_ID [--download DIR]` and `ci-runner cache`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ci_runner.cli.control import LatestArg, ScopeOpt

cache_app = typer.Typer(help="The input-keyed step cache (step.run(..., inputs=[...])).",
                        no_args_is_help=True)
RepoOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--repo", "-C", help="Only this repository's entries (default: the repo here, if any).")]


def _tenant(repo: Path | None, *, all_repos: bool) -> str | None:
    if all_repos:
        return None
    from ci_runner.workspace import open_repo, tenant_key

    return tenant_key(open_repo(repo or Path()))


@cache_app.command("list")
def cache_list(
    repo: RepoOpt = None,
    all_repos: Annotated[bool, typer.Option("--all", help="Every repository.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List cached step results: key, step, the run that made it, hits."""
    from ci_runner.dispatch.runs import open_engine
    from ci_runner.store import memo

    with open_engine() as engine:
        rows = [dict(r) for r in memo.cache_entries(engine.conn,
                                                    _tenant(repo, all_repos=all_repos))]
    if json_out:
        typer.echo(json.dumps([{k: v for k, v in r.items() if k != "result"} for r in rows]))
        return
    if not rows:
        typer.echo("the step cache is empty")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))
        typer.echo(f"{r['key'][:16]}  {r['step']:<24} from {r['run_id']}  {r['hits']} hits  "
                   f"{when}")


@cache_app.command("clear")
def cache_clear(
    repo: RepoOpt = None,
    all_repos: Annotated[bool, typer.Option("--all", help="Every repository.")] = False,
) -> None:
    """Forget cached step results (of this repo, or --all)."""
    from ci_runner.dispatch.runs import open_engine
    from ci_runner.store import memo

    with open_engine() as engine:
        count = memo.cache_clear(engine.conn, _tenant(repo, all_repos=all_repos))
    typer.echo(f"removed {count} cached step result{'s' if count != 1 else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")

    @app.command()
    def artifacts(
        run_id: LatestArg = None,
        download: Annotated[Optional[Path], typer.Option(  # noqa: UP045
            help="Copy the artifacts into this folder.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
        repo: ScopeOpt = None,
    ) -> None:
        """List a run's artifacts, or copy them out with --download DIR."""
        from ci_runner.cli.control import resolve_run
        from ci_runner.dispatch import artifacts as store
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.store import memo

        with open_engine() as engine:
            full = resolve_run(engine.conn, run_id, repo)
            items = [dict(r) for r in memo.artifacts_of(engine.conn, full)]
        if download is not None:
            written = store.download(items, download)
            typer.echo(f"copied {len(written)} artifact(s) to {download}")
            return
        if json_out:
            typer.echo(json.dumps(items))
            return
        if not items:
            typer.echo(f"run {full} kept no artifacts")
        for item in items:
            typer.echo(f"{item['path']:<40} {item['size']:>10} B  {item['sha256'][:12]}  "
                       f"({item['step']})")
