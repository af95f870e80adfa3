"""What keeps the web view live: one Server-Sent Events stream per open page, told
when to look again by ``ChangeFeed``, and the selected step's log read as it grows.

Runs are written by other processes (each run's driver), so the server cannot be told
of a change; it notices one. ``ChangeFeed`` holds one read-only connection, polled
every ``POLL_S`` while a page is open, for ``PRAGMA data_version``, which moves
whenever another connection commits: pages re-render only then, however many are
open. Logs are files the steps append to; a stream checks its one log's size each
``POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ci_runner import paths
from ci_runner.server.ansi import Renderer

POLL_S = 0.05
KEEPALIVE_S = 15.0  # a comment line now and then, so proxies keep the stream open
RECONNECT_MS = 2000  # how soon a browser reconnects a stream that broke
LOG_CHUNK = 256 * 1024  # bytes of log read and sent at once


class ChangeFeed:
    """Counts the database's commits by other connections, while anyone listens."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = db_path
        self.version = 0
        self._listeners = 0
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[ChangeFeed]:
        self._listeners += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            yield self
        finally:
            self._listeners -= 1

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it differs from ``seen``, or after ``timeout`` seconds."""
        if self.version == seen:
            changed = self._event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self.version

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _bump(self) -> None:
        self.version += 1
        old, self._changed = self._event(), asyncio.Event()
        old.set()

    async def _poll(self) -> None:
        conn = await asyncio.to_thread(self._connect)
        try:
            last = None
            while self._listeners > 0:
                try:
                    now = await asyncio.to_thread(_data_version, conn)
                except Exception:  # busy, or the file went: say "changed", look again
                    now = None
                if now != last or now is None:
                    if last is not None:
                        self._bump()
                    last = now
                await asyncio.sleep(POLL_S)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        from ci_runner.store.db import is_url

        if is_url(self.db_path):
            from ci_runner.store import pg

            return pg.PgConnection(pg.open_raw(str(self.db_path)), str(self.db_path))  # type: ignore[return-value]
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True,
                               check_same_thread=False, timeout=1.0)


def _data_version(conn: sqlite3.Connection) -> int:
    from ci_runner.store.db import is_postgres

    if is_postgres(conn):
        # The next transaction id: it moves with every write, by any host, and reads
        # (this one included) leave it where it is, as SQLite's data_version does.
        return int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"
                                ).fetchone()[0])
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


class LogTail:
    """One log file from ``offset`` on, as HTML, in order, as it grows."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._renderer = Renderer()
        self._finished = False

    def read(self, *, final: bool = False) -> tuple[str, str] | None:
        """What was written since the last read, as HTML: the lines it completed and the
        line still open (see ``Renderer.feed``); None if nothing was. ``final``: the
        log is complete, nothing is left open."""
        data = log_bytes(self.path, self.offset, LOG_CHUNK)
        self.offset += len(data)
        if not data and (not final or self._finished):
            return None
        self._finished = final and len(data) < LOG_CHUNK
        return self._renderer.feed(data, final=self._finished)

    def grown(self) -> bool:
        size = log_size(self.path)
        return size is not None and size > self.offset

    def shrunk(self) -> bool:
        """Whether the file is shorter than what was read of it: written anew."""
        size = log_size(self.path)
        return self.offset > 0 if size is None else size < self.offset


# A fleet's logs are in its database (store.steplogs), whichever host wrote them: read
# there through one connection the pages share.
_fleet_conn: Any = None
_fleet_lock = threading.Lock()


def _fleet() -> Any:
    """The shared connection to a fleet's PostgreSQL database, or None (SQLite)."""
    global _fleet_conn  # noqa: PLW0603 - one connection for every page's logs
    db = paths.database()
    if not isinstance(db, str):
        return None
    if _fleet_conn is None or _fleet_conn.url != db:
        from ci_runner.store import connect

        if _fleet_conn is not None:
            _fleet_conn.close()
        _fleet_conn = connect(db)
    return _fleet_conn


def log_bytes(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the log at ``path`` (``logs/RUN/FILE``) from ``offset``."""
    with _fleet_lock:
        conn = _fleet()
        if conn is not None:
            from ci_runner.store import steplogs

            return (steplogs.read(conn, path.parent.name, path.name, offset) or b"")[:limit]
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def log_size(path: Path) -> int | None:
    """The log's size; None when it has none."""
    with _fleet_lock:
        conn = _fleet()
        if conn is not None:
            from ci_runner.store import steplogs

            size = steplogs.size(conn, path.parent.name, path.name)
            return size or None
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def event(name: str, data: str) -> bytes:
    """One SSE event; each line of ``data`` on a ``data:`` line of its own."""
    lines = data.split("\n")
    return (f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def preamble() -> bytes:
    return f"retry: {RECONNECT_MS}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
