"""One way to open the database: WAL, full fsync, and write transactions that cannot deadlock.

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

BUSY_TIMEOUT_S = 30.0


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database at ``path``."""
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


def now() -> float:
    return time.time()
