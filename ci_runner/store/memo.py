"""The SQL of the input-keyed step cache and of run artifacts (both per tenant)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ci_runner.store.db import immediate, now
from ci_runner.store.journal import dumps, loads


def cache_get(conn: sqlite3.Connection, tenant: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT result, artifacts, run_id, step FROM step_cache WHERE tenant = ? AND key = ?",
        (tenant, key),
    ).fetchone()
    if row is None:
        return None
    with immediate(conn, durable=False):
        conn.execute("UPDATE step_cache SET hits = hits + 1 WHERE tenant = ? AND key = ?",
                     (tenant, key))
    return {"result": loads(row[0]), "artifacts": loads(row[1]) or [], "run_id": row[2],
            "step": row[3]}


def cache_put(
    conn: sqlite3.Connection, tenant: str, key: str, *, result: Any,
    artifacts: list[dict[str, Any]], run_id: str, step: str,
) -> None:
    with immediate(conn):
        conn.execute(
            "INSERT INTO step_cache (tenant, key, result, artifacts, run_id, step,"
            " created_at, hits) VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (tenant, key)"
            " DO UPDATE SET result = excluded.result, artifacts = excluded.artifacts,"
            " run_id = excluded.run_id, step = excluded.step,"
            " created_at = excluded.created_at, hits = 0",
            (tenant, key, dumps(result), dumps(artifacts), run_id, step, now()),
        )


def cache_entries(conn: sqlite3.Connection, tenant: str | None) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM step_cache WHERE ? IS NULL OR tenant = ? ORDER BY created_at DESC",
        (tenant, tenant),
    ).fetchall()
    return rows


def cache_clear(conn: sqlite3.Connection, tenant: str | None) -> int:
    with immediate(conn):
        if tenant is None:
            return int(conn.execute("DELETE FROM step_cache").rowcount)
        return int(conn.execute("DELETE FROM step_cache WHERE tenant = ?", (tenant,)).rowcount)


def add_artifacts(
    conn: sqlite3.Connection, instance_id: str, step: str, items: list[dict[str, Any]]
) -> None:
    t = now()
    with immediate(conn):
        conn.executemany(
            "INSERT INTO artifacts (instance_id, step, path, sha256, size,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance_id, path)"
            " DO UPDATE SET step = excluded.step, sha256 = excluded.sha256,"
            " size = excluded.size, created_at = excluded.created_at",
            [(instance_id, step, i["path"], i["sha256"], i["size"], t) for i in items],
        )


def artifacts_of(conn: sqlite3.Connection, instance_id: str) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM artifacts WHERE instance_id = ? ORDER BY created_at, path",
        (instance_id,),
    ).fetchall()
    return rows
