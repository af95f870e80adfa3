"""`ci-runner prune`: forget old finished runs and what only they kept."""

from __future__ import annotations

import json
from typing import Annotated

import typer

DEFAULT_AGE = "30 days"


def register(app: typer.Typer) -> None:
    @app.command()
    def prune(
        older_than: Annotated[str, typer.Option(
            help="Age: runs that ended longer ago than this go (e.g. '30 days', '12 hours').")]
        = DEFAULT_AGE,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Say what would go; change nothing.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    ) -> None:
        """Forget finished runs older than --older-than: records, logs, kept worktrees,
        artifacts nothing else uses, old cache entries and webhook deliveries.
        Runs that wait, sleep, are paused or run stay, however old."""
        from ci_runner.dispatch.runs import open_engine
        from ci_runner.engine.policy import seconds
        from ci_runner.prune import prune as forget

        age = seconds(older_than, what="--older-than")
        with open_engine() as engine:
            done = forget(engine.conn, older_than_s=age, dry_run=dry_run)
        if json_out:
            typer.echo(json.dumps({"dry_run": dry_run, **done.to_json()}))
            return
        verb = "would remove" if dry_run else "removed"
        typer.echo(
            f"{verb} {_n(done.runs, 'run')} that ended over {older_than} ago,"
            f" {_n(done.deliveries, 'webhook delivery', 'webhook deliveries')},"
            f" {_n(done.cache_entries, 'cache entry', 'cache entries')},"
            f" {_n(done.objects, 'artifact object')}: {_mb(done.bytes_freed)}"
            + ("" if dry_run or not done.mirrors_gc else
               f"; garbage-collected {_n(done.mirrors_gc, 'mirror')}")
            + ("" if not done.snapshot_objects else
               f"; {'would delete' if dry_run else 'deleted'}"
               f" {_n(done.snapshot_objects, 'snapshot object')}")
        )
        for problem in done.problems:
            typer.echo(f"warning: {problem}", err=True)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
