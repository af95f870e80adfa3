"""Turns the secret names a step asks for into values, without ever echoing a value,
and keeps each repo's secrets in a private file (``ci-runner secrets set|list|rm``).

A secret comes from the user's secrets file (a YAML mapping ``NAME: value``) if it
is there, else from the environment. The secrets file is ``--secrets-file``, or else
the repo's store file under ``CI_RUNNER_HOME/secrets/`` when it has one. Every
secrets file must be private to its owner, as ssh insists for keys. Error messages
name secrets and files, never values: even YAML syntax errors are reported without
the snippet PyYAML would quote. PyYAML is imported only when a file is read or
written, so a run without secrets does not pay for it.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner import paths
from ci_runner.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import yaml

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
        check_name(name)
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


def check_name(name: str) -> None:
    """Refuse a name that could not be an environment variable."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"bad secret name {name!r}: use letters, digits and _, not starting with a digit",
            name=name,
        )


def check_secrets_file(path: Path) -> None:
    """Validate a secrets file named on the command line before anything runs: it must
    exist (a typo must not fall back to the environment silently), be private, and parse."""
    if not path.exists():
        raise UsageError(f"secrets file {path} does not exist", path=str(path))
    _load(path)


def _load(path: Path) -> dict[Any, Any]:
    import yaml

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
    import yaml

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


# -- the per-repo store ------------------------------------------------------------


def store_path(tenant: str) -> Path:
    """The file ``ci-runner secrets set`` writes for the repo whose tenant key is ``tenant``
    (``ci_runner.workspace.tenant_key``): the same for every worktree of the repo."""
    return paths.home() / "secrets" / f"{sha256(tenant.encode()).hexdigest()[:24]}.yaml"


def stored_secrets_file(tenant: str) -> Path | None:
    """The repo's store file, checked like ``--secrets-file``, or None when it has none."""
    path = store_path(tenant)
    if not path.exists():
        return None
    check_secrets_file(path)
    return path


def secret_names(path: Path) -> list[str]:
    """The names in a secrets file, sorted; never its values."""
    return sorted(str(name) for name in _load(path))


def set_secret(path: Path, name: str, value: str) -> None:
    """Store ``name: value`` in the secrets file at ``path``, replacing an older value.

    The file is rewritten whole and renamed into place, so a reader sees the old file
    or the new one, never half of one; it is created 0600 in a 0700 folder.
    """
    check_name(name)
    if not value:
        raise UsageError(f"secret {name!r} has an empty value: nothing was stored", name=name)
    if "\0" in value:
        raise UsageError(f"secret {name!r} holds a NUL byte, which no environment variable can"
                         " carry: nothing was stored", name=name)
    with _locked(path):
        data = _load(path)
        data[name] = value
        _write(path, data)


def remove_secret(path: Path, name: str) -> None:
    """Delete ``name`` from the secrets file (the file too, once it is empty)."""
    check_name(name)
    with _locked(path):
        data = _load(path)
        if name not in data:
            raise UsageError(
                f"no secret {name!r} is stored for this repo: `ci-runner secrets list` shows"
                " the names", name=name,
            )
        del data[name]
        if data:
            _write(path, data)
        else:
            path.unlink()
            _fsync_dir(path.parent)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two `secrets set` at once must not lose one of the two names.
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)  # made by an older version or by hand: ours to tighten
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, data: dict[Any, Any]) -> None:
    import yaml

    # Sorted, one NAME: value per line; no folding, so a long token stays on one line.
    # ASCII only: PyYAML writes some characters raw (U+0085...) that it then reads as
    # line breaks, so anything outside ASCII is written as an escape instead.
    text = yaml.safe_dump(dict(sorted(data.items(), key=lambda kv: str(kv[0]))),
                          default_flow_style=False, allow_unicode=False, width=2**31 - 1)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:  # mkstemp makes the file 0600 before a byte is written to it
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename (or unlink) itself must survive a power cut, not only the file's bytes.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
