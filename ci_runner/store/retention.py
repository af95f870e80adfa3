"""The SQL of `ci-runner prune`: which finished runs, deliveries and cache entries are
old enough to forget, and forgetting them.

Only what is over: a run is a candidate when it ended (complete, errored or
terminated) before the cutoff; a run that waits, sleeps, is paused or runs is
never touched, however old. A delivery goes with its run, or on its own when it
started no run and was received before the cutoff; one not processed yet stays.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from ci_runner.store.db import immediate, is_postgres
from ci_runner.store.journal import TERMINAL, loads

_DONE = ", ".join(f"'{s}'" for s in TERMINAL)
# Deliveries that will never start a run: safe to forget once old.
_SETTLED = ("superseded", "failed")
BATCH = 200


def old_runs(conn: sqlite3.Connection, cutoff: float) -> list[sqlite3.Row]:
    """Finished runs last updated before ``cutoff``, oldest first, with their payload."""
    rows: list[sqlite3.Row] = conn.execute(
        f"SELECT id, tenant, status, payload, updated_at FROM instances"  # noqa: S608
        f" WHERE status IN ({_DONE}) AND updated_at < ? ORDER BY updated_at",
        (cutoff,),
    ).fetchall()
    return rows


def forget_runs(conn: sqlite3.Connection, run_ids: Sequence[str], cutoff: float) -> list[str]:
    """Delete the runs (if still finished and old) with their steps, events, artifact
    records and deliveries, in batches; returns the ids deleted."""
    deleted: list[str] = []
    for start in range(0, len(run_ids), BATCH):
        batch = list(run_ids[start:start + BATCH])
        marks = ", ".join("?" * len(batch))
        with immediate(conn):
            # Checked again inside the write lock: a run retried meanwhile is live again.
            ids = [str(r[0]) for r in conn.execute(
                f"SELECT id FROM instances WHERE id IN ({marks})"  # noqa: S608
                f" AND status IN ({_DONE}) AND updated_at < ?", (*batch, cutoff),
            ).fetchall()]
            if not ids:
                continue
            marks = ", ".join("?" * len(ids))
            # A fleet's database holds the runs' logs too (store.steplogs).
            logs = (("step_logs", "instance_id"),) if is_postgres(conn) else ()
            for table, column in (*logs, ("steps", "instance_id"), ("events", "instance_id"),
                                  ("artifacts", "instance_id"), ("deliveries", "run_id"),
                                  ("instances", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)  # noqa: S608
            deleted += ids
    return deleted


def old_deliveries(conn: sqlite3.Connection, cutoff: float) -> int:
    """How many settled deliveries without a run were received before ``cutoff``."""
    return int(conn.execute(*_settled_deliveries("SELECT COUNT(*)", cutoff)).fetchone()[0])


def forget_deliveries(conn: sqlite3.Connection, cutoff: float) -> int:
    with immediate(conn):
        return int(conn.execute(*_settled_deliveries("DELETE", cutoff)).rowcount)


def _settled_deliveries(verb: str, cutoff: float) -> tuple[str, tuple[Any, ...]]:
    marks = ", ".join("?" * len(_SETTLED))
    return (
        f"{verb} FROM deliveries WHERE received_at < ? AND (state IN ({marks})"  # noqa: S608
        " OR (run_id IS NOT NULL AND run_id NOT IN (SELECT id FROM instances)"
        "     AND state != 'accepted'))",
        (cutoff, *_SETTLED),
    )


def old_cache_entries(conn: sqlite3.Connection, cutoff: float) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM step_cache WHERE created_at < ?",
                            (cutoff,)).fetchone()[0])


def forget_cache_entries(conn: sqlite3.Connection, cutoff: float) -> int:
    with immediate(conn):
        return int(conn.execute("DELETE FROM step_cache WHERE created_at < ?",
                                (cutoff,)).rowcount)


def referenced_objects(
    conn: sqlite3.Connection, *, without_runs: Collection[str] = (),
    cache_from: float | None = None,
) -> set[str]:
    """Every artifact object (sha256) a run or a cached step result points to; for a
    dry run, as if ``without_runs`` and cache entries older than ``cache_from`` were gone."""
    skip = set(without_runs)
    used = {str(r[1]) for r in conn.execute("SELECT instance_id, sha256 FROM artifacts")
            if r[0] not in skip}
    for artifacts, created_at in conn.execute("SELECT artifacts, created_at FROM step_cache"):
        if cache_from is None or created_at >= cache_from:
            used.update(str(item["sha256"]) for item in loads(artifacts) or [])
    return used
