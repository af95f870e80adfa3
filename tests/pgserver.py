"""A real PostgreSQL server for the tests: Debian's binaries, ``initdb`` and ``pg_ctl`` in a
temporary folder, listening on a unix socket in that folder only, stopped at the end.

PostgreSQL refuses to run as root: as root, the server runs as an unprivileged system
user (``ci-runner-pg``, created once with ``useradd``). Each test gets a database of
its own (``fresh_database``). Without the binaries a test skips, except under
``CI=true``, where it fails: CI must never pass by not testing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "ci-runner-pg"
START_TIMEOUT_S = 60
_counter = itertools.count()


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, or Debian's versioned folder."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def missing(reason: str) -> None:
    """Skip, or fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run: {reason} (scripts/postgres-tools.sh"
                    " installs it)")
    pytest.skip(reason)


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", PG_USER], check=True, capture_output=True)
    return ["runuser", "-u", PG_USER, "--"]


class PgServer:
    """One running server; ``url(db)`` names a database on it."""

    def __init__(self, root: Path, binaries: Path) -> None:
        self.root = root
        self.binaries = binaries
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.prefix = _as_user()
        self.user = PG_USER if self.prefix else pwd.getpwuid(os.getuid()).pw_name

    def start(self, *, fsync: bool = False, max_connections: int = 300) -> None:
        self.socket_dir.mkdir(parents=True)
        if self.prefix:
            owner = pwd.getpwnam(PG_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o755)
        subprocess.run([*self.prefix, str(self.binaries / "initdb"), "-D", str(self.data),
                        "-U", self.user, "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=START_TIMEOUT_S)
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}'"
                   f" -c max_connections={max_connections} -c fsync={'on' if fsync else 'off'}"
                   f" -c synchronous_commit={'on' if fsync else 'off'}"
                   f" -c full_page_writes={'on' if fsync else 'off'} -c shared_buffers=64MB")
        subprocess.run([*self.prefix, str(self.binaries / "pg_ctl"), "-D", str(self.data),
                        "-l", str(self.root / "server.log"), "-o", options, "-w",
                        "-t", str(START_TIMEOUT_S), "start"],
                       check=True, capture_output=True, timeout=START_TIMEOUT_S + 10)

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.binaries / "pg_ctl"), "-D", str(self.data),
                        "-m", "immediate", "-w", "stop"], check=False, capture_output=True,
                       timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        with psycopg.connect(self.url(), autocommit=True) as admin, \
                contextlib.suppress(psycopg.Error):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_server(*, fsync: bool = False) -> Iterator[PgServer]:
    """A server for as long as the block lasts (skips, or fails under CI, without one)."""
    binaries = bin_dir()
    if binaries is None:
        missing("no PostgreSQL server binaries (initdb, pg_ctl)")
        raise AssertionError("unreachable")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="ci-runner-pg-"))
    server = PgServer(root, binaries)
    try:
        server.start(fsync=fsync)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
