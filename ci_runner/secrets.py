"""Turns the secret names a step asks for into values, without ever echoing a value.

A secret comes from the user's secrets file (a YAML mapping ``NAME: value``) if it
is there, else from the environment. The file must be private to its owner, as ssh
insists for keys. Error messages name secrets and files, never values: even YAML
syntax errors are reported without the snippet PyYAML would quote.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import yaml

from ci_runner.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve_secrets(
    names: Iterable[str],
    *,
    environ: Mapping[str, str],
    secrets_file: Path | None = None,
) -> dict[str, str]:
    """Map each name to its value: the secrets file first, then ``environ``.

    A missing secrets file counts as empty. Raises ``UsageError`` for a bad name, a
    name set nowhere, a file others can read, or a value that is not a string.
    """
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"bad secret name {name!r}: use letters, digits and _, not starting with a digit",
                name=name,
            )
    if not wanted:
        return {}
    from_file = _load(secrets_file) if secrets_file is not None else {}
    resolved: dict[str, str] = {}
    for name in wanted:
        if name in from_file:
            resolved[name] = _as_text(name, from_file[name], secrets_file)
        elif name in environ:
            resolved[name] = environ[name]
        else:
            where = f" or add it to {secrets_file}" if secrets_file is not None else ""
            raise UsageError(f"secret {name!r} is not set: export {name}=...{where}", name=name)
    return resolved


def check_secrets_file(path: Path) -> None:
    """Validate a secrets file named on the command line before anything runs: it must
    exist (a typo must not fall back to the environment silently), be private, and parse."""
    if not path.exists():
        raise UsageError(f"secrets file {path} does not exist", path=str(path))
    _load(path)


def _load(path: Path) -> dict[Any, Any]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read secrets file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise UsageError(
            f"secrets file {path} is open to group or others: chmod 600 {path}", path=str(path)
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read secrets file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"secrets file {path} is not UTF-8 text: re-save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"secrets file {path} is not valid YAML ({_where(exc)}): fix it") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"secrets file {path} is not a mapping: write one NAME: value per line")
    return data


def _where(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending line, which may hold a secret: keep only line and problem.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"line {exc.problem_mark.line + 1}: {exc.problem}"
    return type(exc).__name__


def _as_text(name: str, value: Any, path: Path | None) -> str:
    if isinstance(value, str):
        return value
    # YAML would turn TOKEN: 0x1F into 31 and TOKEN: 012 into 10: never guess, ask for quotes.
    if value is None:
        raise UsageError(f"secret {name!r} in {path} has no value: write {name}: '...'", name=name)
    raise UsageError(
        f"secret {name!r} in {path} is not a string (YAML read it as {type(value).__name__}):"
        " quote its value",
        name=name,
    )
