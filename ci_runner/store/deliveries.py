"""The webhook server's SQL: accepted deliveries, the runs they started, and the commit
statuses reported for them.

A delivery row is committed (fsync'd) before the forge gets its 2xx; the unique
index on ``(forge, delivery_id)`` makes any number of redeliveries, serial or
concurrent, one row. Each row keeps the SHA-256 of its raw body: a redelivery has
the same one, and a different body under a used id is a conflict, not a duplicate.
The run id is written to the row before the run is created, so a server killed
between the two finds the run (or creates it) on its next start instead of starting
a second one.

Deliveries that store nothing to run (ignored or refused) go to ``delivery_log``,
capped at ``LOG_KEEP`` rows for signed ones and as many for unsigned ones, so a flood
of unsigned requests can neither fill the disk nor push out what the forges sent.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from ci_runner.store.db import BUSY_TIMEOUT_S, connect, immediate, is_postgres, now
from ci_runner.store.journal import TERMINAL, dumps

_COLUMNS = ("forge", "delivery_id", "repo", "event", "action", "sha", "ref", "branch", "tag",
            "pr", "is_fork", "sender", "lane", "source_ref", "body_sha256")
PROBE_BUSY_TIMEOUT_S = 2.0
_T = TypeVar("_T")
# What ``accept`` says of each delivery: stored now, stored before with the same body,
# or stored before with another body (the id was reused).
Outcome = Literal["new", "duplicate", "conflict"]
LOG_KEEP = 500  # delivery_log rows kept per kind (signed, unsigned), newest first
_LOG_COLUMNS = ("forge", "delivery_id", "repo", "event", "action", "sha", "ref", "branch",
                "tag", "pr", "sender", "outcome", "http_status", "reason", "signed", "client",
                "received_at")


def intake_connection(path: Path | str) -> sqlite3.Connection:
    """A connection for ``accept``: it waits for the write lock by polling every 0.5 ms
    itself, instead of SQLite's busy handler, whose sleeps grow to 100 ms: a forge's
    delivery should not wait 100 ms for a lock that is free again after one."""
    conn = connect(path)
    if not is_postgres(conn):  # PostgreSQL locks rows, not the database: it just waits
        conn.execute("PRAGMA busy_timeout = 0")
    return conn


def accept(conn: sqlite3.Connection, records: Sequence[dict[str, Any]]) -> list[Outcome]:
    """Store deliveries in one durable transaction; what became of each (``Outcome``)."""
    t = now()
    # Only column names and placeholders are formatted in; the values are bound.
    sql = (f"INSERT OR IGNORE INTO deliveries ({', '.join(_COLUMNS)}, state, received_at,"  # noqa: S608
           f" updated_at) VALUES ({', '.join('?' * len(_COLUMNS))}, 'accepted', ?, ?)")
    def write() -> list[Outcome]:
        outcomes: list[Outcome] = []
        with immediate(conn):
            for record in records:
                cur = conn.execute(sql, (*(record.get(c) for c in _COLUMNS), t, t))
                outcomes.append("new" if cur.rowcount == 1 else _seen(conn, record))
        return outcomes

    return _polling(conn, write)


def note(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]], *,
         keep: int = LOG_KEEP) -> None:
    """Add deliveries that stored nothing to run to the capped ``delivery_log``; the
    oldest rows of each kind past ``keep`` go in the same transaction. Not fsync'd:
    a line of this log lost to a power cut costs nothing."""
    # Only column names and placeholders are formatted in; the values are bound.
    sql = (f"INSERT INTO delivery_log ({', '.join(_LOG_COLUMNS)})"  # noqa: S608
           f" VALUES ({', '.join('?' * len(_LOG_COLUMNS))})")

    def write() -> None:
        with immediate(conn, durable=False):
            conn.executemany(sql, [tuple(r.get(c) for c in _LOG_COLUMNS) for r in rows])
            for signed in {int(r["signed"]) for r in rows}:
                conn.execute(
                    "DELETE FROM delivery_log WHERE signed = ? AND id <= (SELECT id FROM"
                    " delivery_log WHERE signed = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (signed, signed, keep))

    _polling(conn, write)


def _polling(conn: sqlite3.Connection, write: Callable[[], _T]) -> _T:
    """``write()``, tried again every 0.5 ms while another writer holds the lock, for up
    to ``BUSY_TIMEOUT_S`` (see ``intake_connection``)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return write()
        except Exception as exc:
            _abandon(conn)
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


def _abandon(conn: sqlite3.Connection) -> None:
    """Leave no transaction open after a failed one: a COMMIT that failed for want of
    space may leave it open, and every later BEGIN on this connection would fail."""
    if conn.in_transaction:
        with contextlib.suppress(Exception):  # the database may have rolled it back itself
            if is_postgres(conn):
                conn.rollback()
            else:
                conn.execute("ROLLBACK")


def _seen(conn: sqlite3.Connection, record: dict[str, Any]) -> Outcome:
    row = conn.execute("SELECT body_sha256 FROM deliveries WHERE forge = ? AND delivery_id = ?",
                       (record["forge"], record["delivery_id"])).fetchone()
    if row is None:  # OR IGNORE also skips a row a NOT NULL column refuses
        raise sqlite3.IntegrityError(f"delivery {record['delivery_id']!r} lacks a value the"
                                     " deliveries table requires")
    # A row stored before bodies were hashed (NULL) cannot tell: taken as the same.
    if row[0] is None or row[0] == record.get("body_sha256"):
        return "duplicate"
    return "conflict"


def is_busy(exc: BaseException) -> bool:
    """Whether a failed write only waited too long for another writer's lock."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


def probe_connection(path: Path | str) -> sqlite3.Connection:
    """A connection for ``probe``: it gives up on a lock after ``PROBE_BUSY_TIMEOUT_S``."""
    conn = connect(path)
    if is_postgres(conn):
        conn.execute(f"SET lock_timeout = '{int(PROBE_BUSY_TIMEOUT_S * 1000)}ms'")
    else:
        conn.execute(f"PRAGMA busy_timeout = {int(PROBE_BUSY_TIMEOUT_S * 1000)}")
    return conn


def probe(conn: sqlite3.Connection) -> None:
    """Commit one tiny write, as a delivery would (without its fsync: a probe that is
    lost costs nothing); raises what a delivery's commit would raise now."""
    with immediate(conn, durable=False):
        conn.execute("INSERT INTO server_probe (id, at) VALUES (1, ?)"
                     " ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now(),))


def waiting(conn: sqlite3.Connection, limit: int = 100) -> list[sqlite3.Row]:
    """Accepted deliveries that have not become runs yet, oldest first."""
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM deliveries WHERE state = 'accepted' ORDER BY id LIMIT ?", (limit,)
    ).fetchall()
    return rows


def claim_run_id(conn: sqlite3.Connection, delivery: int, run_id: str) -> str:
    """The delivery's run id: ``run_id`` unless an earlier attempt already chose one."""
    with immediate(conn):
        conn.execute(
            "UPDATE deliveries SET run_id = COALESCE(run_id, ?), attempts = attempts + 1,"
            " updated_at = ? WHERE id = ?", (run_id, now(), delivery),
        )
        row = conn.execute("SELECT run_id FROM deliveries WHERE id = ?", (delivery,)).fetchone()
    return str(row[0])


def set_state(conn: sqlite3.Connection, delivery: int, state: str,
              error: dict[str, Any] | None = None) -> None:
    with immediate(conn):
        conn.execute(
            "UPDATE deliveries SET state = ?, error = ?, updated_at = ? WHERE id = ?",
            (state, None if error is None else dumps(error), now(), delivery),
        )


def instance_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM instances WHERE id = ?", (run_id,)).fetchone() is not None


def supersede_waiting(conn: sqlite3.Connection, forge: str, repo: str, kind: str) -> int:
    """Mark superseded every waiting delivery of ``repo`` that a later waiting delivery of
    the same lane (``kind`` ``branch`` or ``pr``) replaces, in one transaction; returns
    how many. A burst of pushes to one branch then costs one commit, not one per push."""
    with immediate(conn):
        cur = conn.execute(
            "UPDATE deliveries SET state = 'superseded', updated_at = ? WHERE state = 'accepted'"
            " AND forge = ? AND repo = ? AND substr(lane, 1, length(?)) = ? AND id < ("
            "  SELECT MAX(d.id) FROM deliveries d WHERE d.state = 'accepted'"
            "  AND d.forge = deliveries.forge AND d.repo = deliveries.repo"
            "  AND d.lane = deliveries.lane)",
            (now(), forge, repo, kind + ":", kind + ":"),
        )
        return int(cur.rowcount)


def newer_in_lane(conn: sqlite3.Connection, row: sqlite3.Row) -> bool:
    """Whether a later delivery of the same repo and lane is waiting too."""
    found = conn.execute(
        "SELECT 1 FROM deliveries WHERE forge = ? AND repo = ? AND lane = ? AND id > ?"
        " AND state = 'accepted' LIMIT 1", (row["forge"], row["repo"], row["lane"], row["id"]),
    ).fetchone()
    return found is not None


def older_live_runs(conn: sqlite3.Connection, row: sqlite3.Row) -> list[str]:
    """Runs started by earlier deliveries of the same repo and lane that have not ended."""
    marks = ", ".join("?" * len(TERMINAL))  # placeholders only; the values are bound
    sql = ("SELECT d.run_id FROM deliveries d JOIN instances i ON i.id = d.run_id"  # noqa: S608
           " WHERE d.forge = ? AND d.repo = ? AND d.lane = ? AND d.id < ?"
           f" AND d.state = 'started' AND i.status NOT IN ({marks}) ORDER BY d.id")
    rows = conn.execute(
        sql, (row["forge"], row["repo"], row["lane"], row["id"], *TERMINAL)
    ).fetchall()
    return [str(r[0]) for r in rows]


def unreported(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Started deliveries whose final commit status has not been reported yet, or whose
    run changed since its last report (a finished run redone by `retry`), with the
    state of their run."""
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT d.id, d.forge, d.repo, d.sha, d.ref, d.pr, d.run_id, d.status_reported,"
        " i.status, i.waiting_for,"
        " (d.status_reported LIKE 'final:%' AND i.updated_at > d.updated_at) AS redone"
        " FROM deliveries d JOIN instances i ON i.id = d.run_id"
        " WHERE d.state = 'started' AND (d.status_reported IS NULL"
        " OR d.status_reported NOT LIKE 'final:%' OR i.updated_at > d.updated_at)"
        " ORDER BY d.id"
    ).fetchall()
    return rows


def set_reported(conn: sqlite3.Connection, delivery: int, reported: str) -> None:
    with immediate(conn, durable=False):  # repeating a report after a crash is harmless
        conn.execute(
            "UPDATE deliveries SET status_reported = ?, updated_at = ? WHERE id = ?",
            (reported, now(), delivery),
        )


def running(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Instances some driver holds now (the caller checks whether it is alive)."""
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT id, tenant, owner, lease_expires_at FROM instances WHERE status = 'running'"
    ).fetchall()
    return rows


def of_run(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM deliveries WHERE run_id = ?", (run_id,)
    ).fetchone()
    return row


def recent(conn: sqlite3.Connection, *, repo: str | None = None,
           limit: int = 50) -> list[sqlite3.Row]:
    if repo is None:
        sql, args = "SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", (limit,)
        rows: list[sqlite3.Row] = conn.execute(sql, args).fetchall()
        return rows
    rows = conn.execute(
        "SELECT * FROM deliveries WHERE repo = ? ORDER BY id DESC LIMIT ?", (repo, limit)
    ).fetchall()
    return rows


def recent_log(conn: sqlite3.Connection, *, repos: Sequence[str] | None = None,
               limit: int = 50) -> list[sqlite3.Row]:
    """The newest rows of ``delivery_log``; with ``repos``, only theirs (so never an
    unsigned one, which names no repo)."""
    if repos is None:
        sql, args = "SELECT * FROM delivery_log ORDER BY id DESC LIMIT ?", (limit,)
        found: list[sqlite3.Row] = conn.execute(sql, args).fetchall()
        return found
    if not repos:
        return []
    marks = ", ".join("?" * len(repos))  # placeholders only; the values are bound
    sql = (f"SELECT * FROM delivery_log WHERE repo IN ({marks})"  # noqa: S608
           " ORDER BY id DESC LIMIT ?")
    found = conn.execute(sql, (*repos, limit)).fetchall()
    return found
