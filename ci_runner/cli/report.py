"""A run as data: the one JSON shape `run`, `show` and `runs` print, and exit codes."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ci_runner.engine.leases import owner_alive
from ci_runner.store import journal as j

USAGE_ERRORS = {"UsageError", "NotAGitRepository", "PipelineNotFound", "PipelineLoadError",
                "RunNotFound"}
WAITING = ("waiting", "waiting_for_event")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3


def exit_code(record: dict[str, Any]) -> int:
    status = record["status"]
    if status == "complete":
        return EXIT_OK
    if status in WAITING:
        return EXIT_WAITING
    if status == "interrupted":
        return 130
    error = record.get("error") or {}
    if status == "errored" and error.get("type") in USAGE_ERRORS:
        return EXIT_USAGE
    return EXIT_FAILED


def step_label(name: str, occurrence: int) -> str:
    return name if occurrence == 1 else f"{name}#{occurrence}"


def step_record(row: sqlite3.Row) -> dict[str, Any]:
    result = j.loads(row["result"])
    detail = j.loads(row["detail"]) or {}
    exit_code_value = None
    if isinstance(result, dict) and "exit_code" in result:
        exit_code_value = result["exit_code"]
    elif "exit_code" in detail:
        exit_code_value = detail["exit_code"]
    error = j.loads(row["error"])
    return {
        "name": step_label(row["name"], row["occurrence"]),
        "kind": row["kind"],
        "status": row["status"],
        "attempts": row["attempts"],
        "duration_s": None if row["duration_s"] is None else round(row["duration_s"], 6),
        "exit_code": exit_code_value,
        "error": error.get("message") if isinstance(error, dict) else None,
        "cached": bool(detail.get("cached")),
        "skipped_because": detail.get("skipped"),
        # Where its command ran: bwrap, landlock, off (no sandbox) or docker.
        "sandbox": detail.get("sandbox"),
    }


def run_record(conn: sqlite3.Connection, run_id: str, *, with_steps: bool = True) -> dict[str, Any]:
    row = j.get_instance(conn, run_id)
    return _record(conn, row, with_steps=with_steps)


def _record(
    conn: sqlite3.Connection, row: sqlite3.Row, *, with_steps: bool, results: bool = True,
) -> dict[str, Any]:
    payload = json.loads(row["payload"])
    meta = payload.get("__dispatcherMetadata", {}) if isinstance(payload, dict) else {}
    duration = None
    if row["started_at"] is not None:
        end = row["finished_at"] or row["updated_at"]
        duration = round(end - row["started_at"], 3)
    record: dict[str, Any] = {
        "run_id": row["id"],
        "status": row["status"],
        "repo": meta.get("repo_name") or row["tenant"],
        "repo_path": meta.get("repo"),
        "sha": meta.get("sha"),
        "ref": meta.get("ref"),
        "snapshot": bool(meta.get("snapshot")),
        "trigger": meta.get("trigger"),
        "pipeline": meta.get("pipeline"),
        "params": payload.get("params", {}) if isinstance(payload, dict) else {},
        "created_at": row["created_at"],
        "duration_s": duration,
        "error": j.loads(row["error"]),
        "waiting_for": j.loads(row["waiting_for"]),
        "workspace": meta.get("workspace"),
        # Running, but its runner died (killed, power loss): `resume` takes it over.
        "orphaned": row["status"] in ("running", "queued") and row["owner"] is not None
        and not owner_alive(row["owner"]),
    }
    if with_steps:
        record["steps"] = [step_record(s)
                           for s in j.steps_of(conn, row["id"], results=results)]
        record["approvals"] = [
            {"decision": (p := j.loads(e["payload"]) or {}).get("decision"), "by": p.get("by"),
             "comment": p.get("comment"), "at": e["created_at"], "step": e["consumed_by"]}
            for e in j.events_of(conn, row["id"]) if e["type"] == "approval"
        ]
    return record


def known_steps(conn: sqlite3.Connection, tenant: str, pipeline: str | None) -> list[str]:
    """The step labels of the newest run of this tenant's pipeline that has steps."""
    for row in j.list_instances(conn, tenant=tenant, limit=20):
        payload = json.loads(row["payload"])
        meta = payload.get("__dispatcherMetadata", {}) if isinstance(payload, dict) else {}
        if meta.get("pipeline") != pipeline:
            continue
        steps = j.steps_of(conn, row["id"], results=False)
        if steps:
            return [step_label(s["name"], s["occurrence"]) for s in steps]
    return []


def list_records(
    conn: sqlite3.Connection, *, tenant: str | None, limit: int,
    statuses: tuple[str, ...] | None = None, branch: str | None = None,
) -> list[dict[str, Any]]:
    rows = j.list_instances(conn, tenant=tenant, limit=limit, statuses=statuses, branch=branch)
    # A listing never loads step results: a run's could be a MiB a step.
    return [_record(conn, r, with_steps=True, results=False) for r in rows]
