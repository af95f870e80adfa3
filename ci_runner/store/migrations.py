"""The schema, as an ordered list of migrations applied once each (tracked in ``user_version``).

A migration is a function of a ``sqlite_utils.Database``; append new ones, never
edit a released one. sqlite-utils is imported only when a migration has to run,
because importing it costs ~150 ms and the hot path (a run starting) must not pay that.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils


def _engine_tables(db: sqlite_utils.Database) -> None:
    db.table("instances").create(
        {
            "id": str,
            "tenant": str,          # who the instance belongs to (a repo, for ci-runner)
            "workflow": str,        # import path of the workflow class
            "payload": str,         # JSON: the envelope {__dispatcherMetadata, params}
            "status": str,
            "created_at": float,
            "updated_at": float,
            "started_at": float,
            "finished_at": float,
            "output": str,          # JSON
            "error": str,           # JSON {type, message, fields}
            "owner": str,           # lease holder: "host:pid:start_time"
            "lease_epoch": int,     # fencing token, bumped by every takeover
            "lease_expires_at": float,
            "wake_at": float,       # when a hibernated instance is due
            "waiting_for": str,     # JSON: what a hibernated instance waits for
            "generation": int,      # bumped by restart/retry
        },
        pk="id",
        not_null={"tenant", "workflow", "payload", "status", "created_at", "updated_at"},
        defaults={"lease_epoch": 0, "generation": 1},
    )
    db.table("instances").create_index(["status", "wake_at"])
    db.table("instances").create_index(["tenant", "created_at"])
    db.table("steps").create(
        {
            "instance_id": str,
            "name": str,
            "occurrence": int,      # the Nth call of a step with this name in one run
            "kind": str,            # do | run | sleep | event | ...
            "status": str,          # running | complete | failed | waiting | skipped
            "attempts": int,
            "started_at": float,
            "finished_at": float,
            "duration_s": float,
            "result": str,          # JSON
            "error": str,           # JSON
            "wake_at": float,
            "detail": str,          # JSON: kind-specific facts (exit code, process group)
            "seq": int,             # order of first start, for display
        },
        pk=("instance_id", "name", "occurrence"),
        foreign_keys=[("instance_id", "instances", "id")],
        not_null={"instance_id", "name", "occurrence", "kind", "status"},
        defaults={"attempts": 0},
    )
    db.table("events").create(
        {
            "id": int,
            "instance_id": str,
            "type": str,
            "payload": str,
            "created_at": float,
            "consumed_by": str,     # "name#occurrence" of the step that took it
            "consumed_at": float,
        },
        pk="id",
        foreign_keys=[("instance_id", "instances", "id")],
        not_null={"instance_id", "type", "created_at"},
    )
    db.table("events").create_index(["instance_id", "type", "consumed_by"])


def _ci_tables(db: sqlite_utils.Database) -> None:
    db.table("tenants").create(
        {"key": str, "name": str, "location": str, "created_at": float},
        pk="key",
        not_null={"name", "created_at"},
    )


def _control(db: sqlite_utils.Database) -> None:
    # A request to the live driver of an instance (e.g. "pause"), read with the lease fence.
    db.table("instances").add_column("control", str)


def _cache_and_artifacts(db: sqlite_utils.Database) -> None:
    # Input-keyed step results, per tenant: a key never matches across tenants.
    db.table("step_cache").create(
        {"tenant": str, "key": str, "result": str, "artifacts": str, "run_id": str,
         "step": str, "created_at": float, "hits": int},
        pk=("tenant", "key"), not_null={"result", "created_at"}, defaults={"hits": 0},
    )
    # Files a run kept; the bytes live content-addressed under CI_RUNNER_HOME/artifacts.
    db.table("artifacts").create(
        {"instance_id": str, "step": str, "path": str, "sha256": str, "size": int,
         "created_at": float},
        pk=("instance_id", "path"), foreign_keys=[("instance_id", "instances", "id")],
        not_null={"sha256", "size", "created_at"},
    )


def _deliveries(db: sqlite_utils.Database) -> None:
    # Webhook deliveries `ci-runner serve` accepted: committed before the forge gets its
    # 2xx, unique per (forge, delivery id) so a redelivery never starts a second run.
    db.table("deliveries").create(
        {
            "id": int,
            "forge": str,
            "delivery_id": str,     # X-GitHub-Delivery, X-Gitea-Delivery, Idempotency-Key...
            "repo": str,            # the configured repo's full name
            "event": str,           # push | pull_request
            "action": str,
            "sha": str,
            "ref": str,
            "branch": str,
            "tag": str,
            "pr": int,
            "is_fork": int,
            "sender": str,
            "lane": str,            # branch:NAME, tag:NAME or pr:N: newer runs supersede older
            "source_ref": str,      # what to fetch when the forge will not serve the bare sha
            "state": str,           # accepted | started | superseded | failed
            "run_id": str,          # chosen before the run is created: a crash between the
                                    # two cannot start a second run
            "error": str,           # JSON {type, message, fields}
            "attempts": int,
            "status_reported": str,  # the commit status last reported to the forge
            "received_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"forge", "delivery_id", "repo", "event", "sha", "lane", "state",
                  "received_at", "updated_at"},
        defaults={"state": "accepted", "attempts": 0, "is_fork": 0},
    )
    db.table("deliveries").create_index(["forge", "delivery_id"], unique=True)
    db.table("deliveries").create_index(["state", "id"])
    db.table("deliveries").create_index(["forge", "repo", "lane", "id"])
    db.table("deliveries").create_index(["run_id"])


def _delivery_bodies_and_probe(db: sqlite_utils.Database) -> None:
    # The SHA-256 of each delivery's raw body: a redelivery (same id, same body) is a
    # duplicate, the same id with another body is refused. Rows from before are NULL.
    db.table("deliveries").add_column("body_sha256", str)
    # One row `GET /health` rewrites to prove the database takes writes.
    db.table("server_probe").create({"id": int, "at": float}, pk="id", not_null={"at"})


def _crash_restarts(db: sqlite_utils.Database) -> None:
    # How many times in a row a run's driver died without the run making progress: its
    # next takeover waits longer, and past a few the run fails instead of looping.
    db.table("instances").add_column("crashes", int, not_null_default=0)


def _delivery_log(db: sqlite_utils.Database) -> None:
    # Deliveries that stored nothing to run: ignored (a ping, a branch not configured)
    # and refused (a bad signature, a malformed body). Never a body, only what the
    # headers and, once authenticated, the parsed delivery say. Capped per ``signed``:
    # a flood of unsigned requests cannot push out what the forges really sent.
    db.table("delivery_log").create(
        {
            "id": int,
            "forge": str,
            "delivery_id": str,     # as its header gave it (shortened), or None
            "repo": str,            # the configured repo, when known
            "event": str,
            "action": str,
            "sha": str,
            "ref": str,
            "branch": str,
            "tag": str,
            "pr": int,
            "sender": str,
            "outcome": str,         # ignored | refused
            "http_status": int,
            "reason": str,
            "signed": int,          # 1: authenticated by a configured secret
            "client": str,          # the address it came from
            "received_at": float,
        },
        pk="id",
        not_null={"forge", "outcome", "http_status", "reason", "signed", "received_at"},
    )
    db.table("delivery_log").create_index(["signed", "id"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _engine_tables, _ci_tables, _control, _cache_and_artifacts, _deliveries,
    _delivery_bodies_and_probe, _crash_restarts, _delivery_log,
]


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this database has not seen, each in its own transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version >= len(MIGRATIONS):
        return
    import sqlite_utils

    from ci_runner.store.db import immediate

    db = sqlite_utils.Database(conn)
    with immediate(conn):
        # Re-read under the write lock: another process may have migrated meanwhile.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for index in range(version, len(MIGRATIONS)):
            MIGRATIONS[index](db)
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")
