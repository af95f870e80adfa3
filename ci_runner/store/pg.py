"""The PostgreSQL backend: a connection with the small surface of ``sqlite3.Connection``
the store uses, so every store function runs on either database.

The store writes its SQL once, in the dialect both databases share; this adapter
turns SQLite's ``?`` placeholders into psycopg's, and ``INSERT OR IGNORE`` into
``ON CONFLICT DO NOTHING``. What the two dialects do differently (JSON paths, row
locks, the clock) the store asks for with ``is_postgres``, in the few places it matters.

psycopg is imported here only, and this module only when a ``postgresql://`` URL is
opened: the CLI's start-up never pays for it. Statements are bound on the client
(``ClientCursor``), as SQLite binds them: a parameter's type is never left for the
server to guess (``? IS NULL`` would not compile with server-side binding).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ci_runner.errors import UsageError

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT_S = 10


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Row:
    """A row readable by column name and by position, as ``sqlite3.Row`` is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    index = {column.name: i for i, column in enumerate(description)}
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's spelling of a statement in PostgreSQL's (placeholders, OR IGNORE)."""
    if sql.lstrip().upper().startswith("INSERT OR IGNORE"):
        sql = re.sub(r"(?i)^\s*INSERT OR IGNORE", "INSERT", sql) + " ON CONFLICT DO NOTHING"
    # psycopg reads % as its own: a LIKE pattern's % is doubled, each ? becomes %s.
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """One psycopg connection in autocommit mode; ``begin``/``commit`` make transactions
    (``store.db.immediate``), as ``BEGIN IMMEDIATE`` does on SQLite.

    Every statement is a round trip to the server, the cost that matters here (a
    step's two transactions): ``begin`` sends nothing, its ``BEGIN`` goes in one
    message with the transaction's first statement (bound on the client, several
    statements travel as one)."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection[Any], url: str) -> None:
        self.raw = raw
        self.url = url
        self._pending: str | None = None  # the BEGIN not sent yet
        self._open = False  # a transaction was begun on the server
        self._committed = False  # its COMMIT went with its last statements (``batch``)

    def _cursor(self) -> Any:
        """A cursor; a connection the server dropped (a restart, a network cut) is opened
        again when no transaction of ours was under way on it."""
        if self.raw.broken or self.raw.closed:
            if self._open:
                import psycopg

                self._open = False
                raise psycopg.OperationalError(
                    f"the connection to {shown(self.url)} was lost in a transaction")
            with contextlib.suppress(Exception):
                self.raw.close()  # broken: release what psycopg still holds of it
            self.raw = open_raw(self.url)
        if self._pending is not None:
            self._open = True
        return self.raw.cursor()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self._cursor()
        text = sql if params is None else translate(sql)
        if self._pending is not None:
            text, self._pending = f"{self._pending}; {text}", None
            cur.execute(text, None if params is None else tuple(params))
            while cur.nextset():  # to the statement's own result
                pass
            return cur
        return cur.execute(text, None if params is None else tuple(params))

    def batch(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
              commit: bool = False) -> list[list[Row]]:
        """Several statements in one round trip, run in order; each one's rows. Used
        inside a transaction, where a later check that fails rolls them all back.
        ``commit``: they end the transaction, its COMMIT sent with them (the
        ``immediate`` block's own commit is then nothing); the caller runs nothing
        after them in it."""
        cur = self._cursor()
        text = "; ".join(translate(sql) for sql, _ in statements)
        if commit:
            text += "; COMMIT"
        skip = 0
        if self._pending is not None:
            skip = self._pending.count(";") + 1
            text, self._pending = f"{self._pending}; {text}", None
        cur.execute(text, tuple(v for _, values in statements for v in values))
        for _ in range(skip):
            cur.nextset()
        results: list[list[Row]] = []
        while True:
            results.append(cur.fetchall() if cur.description else [])
            if not cur.nextset():
                break
        if commit:
            self._open, self._committed = False, True
            results.pop()
        return results

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        self._flush()
        cur = self._cursor()
        cur.executemany(translate(sql), [tuple(r) for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return (self._pending is not None
                or self.raw.info.transaction_status != TransactionStatus.IDLE)

    def begin(self, *, durable: bool) -> None:
        # Not durable: the commit returns before its WAL record is flushed; it survives
        # a killed process (the server has it), made durable by the next flushed commit.
        self._pending = "BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off"

    def _flush(self) -> None:
        if self._pending is not None:
            self._cursor()
            pending, self._pending = self._pending, None
            self.raw.execute(pending)

    def commit(self) -> None:
        if self._committed:
            self._committed = False
            return
        if self._pending is not None:  # nothing was done in it
            self._pending = None
            return
        self._open = False
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self._committed:  # the failure came after the commit: nothing to undo
            self._committed = False
            return
        if self._pending is not None:
            self._pending = None
            return
        self._open = False
        if self.raw.broken or self.raw.closed:
            return  # the server ended the transaction with the connection
        self.raw.execute("ROLLBACK")

    def clock(self) -> float:
        """The database server's time (seconds since the epoch): every host's lease
        expiry is read on the same clock, whatever each host's own says."""
        row = self.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_raw(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A psycopg connection to ``url``, or one line saying why there is none."""
    try:
        import psycopg
    except ImportError as exc:
        raise UsageError(
            "a postgresql:// database needs psycopg: pip install 'ci-runner[postgres]'"
            " (or 'psycopg[binary]')") from exc
    try:
        return psycopg.connect(url, autocommit=autocommit, cursor_factory=psycopg.ClientCursor,
                               row_factory=_row_factory, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.ProgrammingError as exc:  # a URL libpq cannot parse
        raise UsageError(f"bad database URL {shown(url)}: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        raise UsageError(
            f"cannot reach the database at {shown(url)}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connect(url: str) -> PgConnection:
    """Open (migrating if needed) the PostgreSQL database at ``url``."""
    conn = PgConnection(open_raw(url), url)
    from ci_runner.store.pgschema import migrate

    migrate(conn)
    return conn
