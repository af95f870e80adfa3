"""Step logs in a fleet's database: on PostgreSQL every log a driver writes to its host's
``logs/RUN/`` folder is also appended here, in chunks, so `ci-runner logs` on any host
(and the API of a server in front of the fleet) reads any run's logs.

Appends are not fsync'd (``durable=False``): a chunk lost to a power cut loses a few
lines of output, never a step's result. With SQLite nothing is written here: the
one machine's files are the logs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ci_runner.store.db import immediate, is_postgres, now

FLUSH_EVERY_S = 0.2
FLUSH_BYTES = 256 * 1024


def append(conn: sqlite3.Connection, run_id: str, file: str, data: bytes) -> None:
    if not data:
        return
    with immediate(conn, durable=False):
        conn.execute("INSERT INTO step_logs (instance_id, file, data, at) VALUES (?, ?, ?, ?)",
                     (run_id, file, data, now()))


def read(conn: sqlite3.Connection, run_id: str, file: str, offset: int = 0) -> bytes | None:
    """The log's bytes from ``offset``; None when it has none at all."""
    rows = conn.execute("SELECT data FROM step_logs WHERE instance_id = ? AND file = ?"
                        " ORDER BY id", (run_id, file)).fetchall()
    if not rows:
        return None
    return b"".join(bytes(r[0]) for r in rows)[offset:]


def size(conn: sqlite3.Connection, run_id: str, file: str) -> int:
    row = conn.execute("SELECT COALESCE(sum(octet_length(data)), 0) FROM step_logs"
                       " WHERE instance_id = ? AND file = ?", (run_id, file)).fetchone()
    return int(row[0])


class Mirror:
    """Copies what one log file gets into the database, a chunk at a time (at most every
    ``FLUSH_EVERY_S`` while output flows, and at ``close``)."""

    _conn: sqlite3.Connection | None = None  # one per process, opened on first use
    _lock = threading.Lock()

    def __init__(self, url: str, run_id: str, file: str) -> None:
        self.url = url
        self.run_id = run_id
        self.file = file
        self._pending: list[bytes] = []
        self._bytes = 0
        self._last = time.monotonic()

    @classmethod
    def for_path(cls, path: Path) -> Mirror | None:
        """A mirror for a log under ``logs/RUN/`` when the database is PostgreSQL."""
        from ci_runner import paths

        db = paths.database()
        if not isinstance(db, str) or path.parent.parent != paths.home() / "logs":
            return None
        return cls(db, path.parent.name, path.name)

    def write(self, data: bytes, *, flush: bool) -> None:
        self._pending.append(data)
        self._bytes += len(data)
        due = time.monotonic() - self._last >= FLUSH_EVERY_S
        if self._bytes >= FLUSH_BYTES or (flush and due):
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending, self._bytes = b"".join(self._pending), [], 0
        self._last = time.monotonic()
        with Mirror._lock:
            if Mirror._conn is None:
                from ci_runner.store import connect

                Mirror._conn = connect(self.url)
            assert is_postgres(Mirror._conn)
            append(Mirror._conn, self.run_id, self.file, data)
