"""`ci-runner serve`: the webhook server. Its modules are imported only when it runs, so
the other commands never pay for FastAPI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ci_runner.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: Annotated[Optional[Path], typer.Option(  # noqa: UP045 - typer needs Optional
            "--config", "-c", help="The server's YAML config (repos, secrets, limits).")] = None,
        host: Annotated[Optional[str], typer.Option(  # noqa: UP045
            help="Address to listen on (default: server.host, else 127.0.0.1).")] = None,
        port: Annotated[Optional[int], typer.Option(  # noqa: UP045
            help="Port to listen on (default: server.port, else 8080).")] = None,
        print_example_config: Annotated[bool, typer.Option(
            "--print-example-config", help="Print a commented example config and exit.")]
        = False,
        no_workers: Annotated[bool, typer.Option(
            "--no-workers", help="Intake and API only: `ci-runner worker` processes (on any"
            " host, with a PostgreSQL --db) drive the runs.")] = False,
    ) -> None:
        """Run CI for many repos from their forges' webhooks (GitHub, Gitea, Forgejo, GitLab)."""
        from ci_runner.server.config import EXAMPLE_CONFIG, load_config

        if print_example_config:
            typer.echo(EXAMPLE_CONFIG, nl=False)
            return
        if config is None:
            raise UsageError("give --config FILE (`ci-runner serve --print-example-config`"
                             " prints one to start from)")
        from ci_runner.server.lifecycle import serve as run_server

        run_server(load_config(config), host=host, port=port, workers=not no_workers)
