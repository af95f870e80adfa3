"""`ci-runner secrets set|list|rm`: the repo's secrets, kept in a private file of its own.

A value never comes from the command line (it would sit in the shell history and in
`ps` for every user to read): it comes from a hidden prompt, or from stdin when stdin
is not a terminal (`pass show token | ci-runner secrets set TOKEN`).
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

secrets_app = typer.Typer(
    help="Secrets for this repo's steps (step.run(..., secrets=[NAME])), kept in a file"
    " only you can read.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The secret's name, e.g. TOKEN.")]
RepoOpt = Annotated[Path, typer.Option("--repo", "-C", help="The git repository (default: here).")]


def _store(repo: Path) -> tuple[Path, Path]:
    """The repo's store file, and the repo's top folder (to name it in messages)."""
    from ci_runner.secrets import store_path
    from ci_runner.workspace import open_repo, tenant_key

    info = open_repo(repo)
    return store_path(tenant_key(info)), info.root


def _read_value(name: str) -> str:
    from ci_runner.errors import UsageError

    if sys.stdin is None:
        raise UsageError(f"no value for {name!r}: pipe it in on stdin or run in a terminal")
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        # `echo token |` and files saved by editors end in a newline that is not the secret.
        for ending in ("\r\n", "\n"):
            if text.endswith(ending):
                return text[: -len(ending)]
        return text
    try:
        return getpass.getpass(f"value for {name} (hidden): ")
    except EOFError:
        return ""


@secrets_app.command("set")
def set_(name: NameArg, repo: RepoOpt = Path()) -> None:
    """Store a secret for the repo: the value is read from a hidden prompt, or from stdin
    when it is not a terminal (one trailing newline dropped); never from an argument."""
    from ci_runner.secrets import check_name, set_secret

    check_name(name)  # before asking for a value that would then be thrown away
    path, root = _store(repo)
    value = _read_value(name)
    set_secret(path, name, value)
    typer.echo(f"stored secret {name} for {root}; steps that list it in secrets=[...]"
               " receive it")


@secrets_app.command("list")
def list_(
    repo: RepoOpt = Path(),
    json_out: Annotated[bool, typer.Option("--json", help="A JSON list of names.")] = False,
) -> None:
    """List the names of the repo's secrets (never their values)."""
    from ci_runner.secrets import secret_names

    names = secret_names(_store(repo)[0])
    if json_out:
        typer.echo(json.dumps(names))
        return
    if not names:
        typer.echo("no secrets stored for this repo: `ci-runner secrets set NAME`")
    for name in names:
        typer.echo(name)


@secrets_app.command("rm")
def rm(name: NameArg, repo: RepoOpt = Path()) -> None:
    """Delete one of the repo's secrets."""
    from ci_runner.secrets import remove_secret

    remove_secret(_store(repo)[0], name)
    typer.echo(f"removed secret {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")
