"""`ci-runner images`: build the sandbox images offline and list them."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

images_app = typer.Typer(help="Sandbox images for heavy steps (image=...).", no_args_is_help=True)


@images_app.command("build")
def build(
    name: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="One image (base, python, postgres, busybox...); default: all.")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even if present.")] = False,
) -> None:
    """Build sandbox images offline: a Debian root file system, then sandbox_images/*."""
    from ci_runner import images
    from ci_runner.errors import UsageError

    if name is not None and name not in images.known_names():
        raise UsageError(f"no sandbox image {name!r}; known: {', '.join(images.known_names())}")
    for tag in images.build(name, rebuild=rebuild, log=typer.echo):
        typer.echo(f"built {tag}")


@images_app.command("list")
def list_(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List the ci-runner images present in the Docker engine."""
    from ci_runner import images

    rows = images.list_images()
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no ci-runner images yet: `ci-runner images build`")
    for row in rows:
        when = str(row.get("created") or "-")[:16].replace("T", " ")
        typer.echo(f"{row['reference']:<36} {row['size'] / 1e6:>8.1f} MB  {when}")


def register(app: typer.Typer) -> None:
    app.add_typer(images_app, name="images")
