"""One way to open the database: WAL, full fsync, and write transactions that cannot deadlock.

``connect`` takes a SQLite file's path (the embedded default) or a ``postgresql://``
URL (a fleet's shared database: ``store.pg``, imported only then); every store
function takes what it returns. On PostgreSQL, ``immediate`` is a plain
transaction whose row locks (``lock_row``) do what SQLite's database lock does.

Every write goes through ``immediate()``, which starts with ``BEGIN IMMEDIATE``:
the write lock is taken up front, so two processes never both hold a read
snapshot and then both try to upgrade it (the deadlock SQLite answers with
SQLITE_BUSY no matter how long the busy timeout is).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

BUSY_TIMEOUT_S = 30.0
URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def is_postgres(conn: Any) -> bool:
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database at ``path``: a SQLite file,
    or a ``postgresql://`` URL. The PostgreSQL connection offers the part of
    ``sqlite3.Connection`` the store uses (``store.pg.PgConnection``), hence the type."""
    if is_url(path):
        from ci_runner.store import pg

        return cast(sqlite3.Connection, pg.connect(str(path)))
    if str(path).startswith(("postgresql:/", "postgres:/")):
        # A URL that went through Path() ("//" became "/"): never a SQLite file of that name.
        raise ValueError(f"a PostgreSQL URL was taken for a file's path: {path}")
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, the module never does.
    conn = sqlite3.connect(
        str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    _wal(conn)
    # FULL: a committed step survives power loss, not only a killed process.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    from ci_runner.store.migrations import migrate

    migrate(conn)
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    # Switching a new database to WAL needs a lock that SQLite does not wait for (the
    # busy timeout is not consulted), so two processes creating it at once retry here.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def immediate(conn: sqlite3.Connection, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error.

    ``durable=False`` commits without the fsync (WAL, synchronous=NORMAL): the
    write survives a killed process and becomes power-safe at the next durable
    commit. Used for bookkeeping that a crash may repeat (an attempt marker).
    """
    if is_postgres(conn):
        yield from _pg_transaction(conn, durable=durable)
        return
    if not durable:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if not durable:
            conn.execute("PRAGMA synchronous=FULL")


def _pg_transaction(conn: Any, *, durable: bool) -> Iterator[sqlite3.Connection]:
    conn.begin(durable=durable)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.commit()


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database failed (unreachable, locked, full, unwritable)
    rather than refusing a row (a constraint, a value it cannot store)."""
    if isinstance(exc, sqlite3.DatabaseError):
        return not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)
    if not type(exc).__module__.startswith("psycopg"):
        return False
    import psycopg

    return isinstance(exc, psycopg.Error) and not isinstance(
        exc, psycopg.IntegrityError | psycopg.DataError | psycopg.ProgrammingError)


def lock_row(conn: sqlite3.Connection) -> str:
    """What a SELECT inside ``immediate`` ends with to keep the rows it read from
    changing until the commit: nothing on SQLite (the transaction holds the whole
    database), ``FOR UPDATE`` on PostgreSQL."""
    return " FOR UPDATE" if is_postgres(conn) else ""


CHANNEL = "ci_runner_runs"  # NOTIFYed when a run may have become claimable


def notify(conn: sqlite3.Connection) -> None:
    """Wake a fleet's workers when this transaction commits: a run was queued, woken,
    released or ended (which frees a slot of its repo). Nothing on SQLite, where
    workers poll one file."""
    if is_postgres(conn):
        conn.execute(f"NOTIFY {CHANNEL}")


def now() -> float:
    return time.time()


def clock(conn: sqlite3.Connection) -> float:
    """Now, on the clock leases are read on: the database server's on PostgreSQL (hosts'
    clocks differ), this machine's with SQLite (one machine)."""
    if is_postgres(conn):
        return float(cast(Any, conn).clock())
    return time.time()
