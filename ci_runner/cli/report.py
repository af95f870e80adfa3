"""A run as data: the one JSON shape `run`, `show` and `runs` print (and the API serves),
and exit codes.

The journal keeps the engine's words (``errored``, ``waiting_for_event``...); a record
says the user's (``failed``, ``waiting`` with ``waiting_for: "approval"``...), from
``ci_runner.statuses``. Everything that reads a record reads those words.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ci_runner.engine.policy import APPROVAL_EVENT
from ci_runner.statuses import run_word, step_word, waiting_for
from ci_runner.store import journal as j

USAGE_ERRORS = {"UsageError", "NotAGitRepository", "PipelineNotFound", "PipelineLoadError",
                "RunNotFound"}
# The user words of a run that holds no process until something wakes it.
WAITING = ("sleeping", "waiting")
# The user words of a run that is over.
ENDED = ("complete", "failed", "cancelled")

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
    if status == "failed" and error.get("type") in USAGE_ERRORS:
        return EXIT_USAGE
    return EXIT_FAILED


def step_label(name: str, occurrence: int) -> str:
    return name if occurrence == 1 else f"{name}#{occurrence}"


def step_record(
    row: sqlite3.Row, *, run_status: str | None = None,
    rejection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One step, in the user's words. ``run_status``: its run's engine status;
    ``rejection``: the approval event that rejected this gate, if one did."""
    result = j.loads(row["result"])
    detail = j.loads(row["detail"]) or {}
    exit_code_value = None
    if isinstance(result, dict) and "exit_code" in result:
        exit_code_value = result["exit_code"]
    elif "exit_code" in detail:
        exit_code_value = detail["exit_code"]
    error = j.loads(row["error"])
    message = error.get("message") if isinstance(error, dict) else None
    if rejection is not None:
        comment = f": {rejection['comment']}" if rejection.get("comment") else ""
        message = f"rejected by {rejection.get('by')}{comment}"
    status = step_word(row["status"], row["kind"], run_status=run_status,
                       rejected=rejection is not None)
    waits_on = None
    if status == "waiting":
        event_type = detail.get("event_type")
        waits_on = "approval" if event_type == APPROVAL_EVENT else event_type
    files = result.get("files") if isinstance(result, dict) else None
    record = {
        "name": step_label(row["name"], row["occurrence"]),
        "kind": row["kind"],
        "status": status,
        # What a waiting step waits on: "approval" or an event type.
        "waiting_for": waits_on,
        "attempts": row["attempts"],
        "duration_s": None if row["duration_s"] is None else round(row["duration_s"], 6),
        "exit_code": exit_code_value,
        "error": message,
        "cached": bool(detail.get("cached")),
        "skipped_because": detail.get("skipped"),
        # Where its command ran: bwrap, landlock, off (no sandbox) or docker.
        "sandbox": detail.get("sandbox"),
    }
    if isinstance(files, dict) and str(files.get("summary") or "").strip():
        # A workflow step's $GITHUB_STEP_SUMMARY (step.run(files=True)).
        record["summary"] = str(files["summary"])
    return record


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
    waits = j.loads(row["waiting_for"])
    status = run_word(row["status"])
    record: dict[str, Any] = {
        "run_id": row["id"],
        "status": status,
        # What a waiting run waits on: "approval", an event type, or null.
        "waiting_for": waiting_for(row["status"], waits),
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
        # Each wait of a waiting or sleeping run: its step, and what it waits on until when.
        "waits": waits,
        "workspace": meta.get("workspace"),
        # Running, but its runner died (killed, power loss): `resume` takes it over.
        "orphaned": row["status"] in ("running", "queued") and row["owner"] is not None
        and not _owner_alive(row["owner"]),
    }
    if with_steps:
        approvals = [
            {"decision": (p := j.loads(e["payload"]) or {}).get("decision"), "by": p.get("by"),
             "comment": p.get("comment"), "at": e["created_at"], "step": e["consumed_by"]}
            for e in j.events_of(conn, row["id"]) if e["type"] == APPROVAL_EVENT
        ]
        rejections = {a["step"]: a for a in approvals
                      if a["decision"] == "reject" and a["step"] is not None}
        record["steps"] = [
            step_record(s, run_status=row["status"], rejection=rejections.get(
                step_label(s["name"], s["occurrence"])) if s["kind"] == "event" else None)
            for s in j.steps_of(conn, row["id"], results=results)]
        record["approvals"] = approvals
        record["selection"] = _selection(meta, record["steps"], status)
    return record


def _selection(
    meta: dict[str, Any], steps: list[dict[str, Any]], status: str
) -> dict[str, Any] | None:
    """The run's --only/--skip, and (once it ended) the names it never reached."""
    only, skip = list(meta.get("only") or ()), list(meta.get("skip") or ())
    if not (only or skip):
        return None
    unreached = None
    if status in ENDED:
        reached = set()
        for step in steps:
            label = str(step["name"])
            reached.add(label)
            name, sep, occurrence = label.rpartition("#")
            if sep and occurrence.isdigit():
                reached.add(name)
        unreached = [n for n in dict.fromkeys(only + skip) if n not in reached]
    return {"only": only, "skip": skip, "unreached": unreached}


def list_records(
    conn: sqlite3.Connection, *, tenant: str | None, limit: int,
    statuses: tuple[str, ...] | None = None, branch: str | None = None,
) -> list[dict[str, Any]]:
    rows = j.list_instances(conn, tenant=tenant, limit=limit, statuses=statuses, branch=branch)
    # A listing never loads step results: a run's could be a MiB a step.
    return [_record(conn, r, with_steps=True, results=False) for r in rows]


def _owner_alive(owner: str) -> bool:
    # Imported only for a run that has an owner: the leases module pulls in socket,
    # a tenth of what `ci-runner runs` imports.
    from ci_runner.engine.leases import owner_alive

    return owner_alive(owner)
