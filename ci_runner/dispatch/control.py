"""Acting on runs from outside their driver: approvals, cancel, pause, retry, and finding
the runs that need a driver (due timers, delivered events, orphans of dead runners)."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

from ci_runner.dispatch.envelope import unwrap_params
from ci_runner.dispatch.runs import finish_workspace, reap_orphan
from ci_runner.engine import leases
from ci_runner.engine.driver import Engine
from ci_runner.engine.policy import APPROVAL_EVENT
from ci_runner.store import journal as j
from ci_runner.store.db import now


def decide(engine: Engine, run_id: str, *, by: str, comment: str | None, reject: bool) -> str:
    """Record an approval or rejection, at most once per wait; returns the full run id."""
    row = j.get_instance(engine.conn, run_id)
    payload = {"decision": "reject" if reject else "approve", "by": by, "comment": comment}
    j.send_event(engine.conn, row["id"], APPROVAL_EVENT, payload, only_if_waiting=True,
                 once=True)
    return str(row["id"])


def cancel(engine: Engine, run_id: str) -> str:
    row = j.get_instance(engine.conn, run_id)
    try:
        running = j.terminate(engine.conn, row["id"])
    except sqlite3.OperationalError:
        # A full disk (the run's own output, likely): free what the run holds on it first
        # (its processes, then its worktree), then record the cancel.
        metadata, _ = unwrap_params(json.loads(row["payload"]))
        from ci_runner.executors import stop_processes_in

        stop_processes_in(Path(metadata["workspace"]))
        finish_workspace(metadata, even_kept=True)
        running = j.terminate(engine.conn, row["id"])
    for detail in running:
        if detail.get("host") in (None, socket.gethostname()):
            reap_orphan(detail)
    if any(d.get("container") for d in running):
        from ci_runner.executors import remove_containers

        remove_containers({"ci-runner.run": str(row["id"])})
    metadata, _ = unwrap_params(json.loads(row["payload"]))
    # Before the folder goes: what runs there and was not recorded (its driver, if it
    # is alive, sweeps once more after it has stopped the pipeline process).
    from ci_runner.executors import stop_processes_in

    driver = str(row["owner"] or "").rsplit(":", 2)
    spare = [int(driver[1])] if len(driver) == 3 and driver[1].isdigit() else []
    stop_processes_in(Path(metadata["workspace"]), spare=spare)
    finish_workspace(metadata)
    return str(row["id"])


def free_space_of(run_id: str) -> bool:
    """Stop what runs in the run's worktree and delete it, knowing only its id (a unique
    prefix): for a disk too full to open the database. Git's record of the worktree is
    pruned later, when the cancel removes it properly. True if something was freed."""
    import shutil

    from ci_runner import paths
    from ci_runner.dispatch.confine import remove_scratch
    from ci_runner.executors import stop_processes_in

    if not run_id or "/" in run_id or run_id.startswith("."):
        return False
    found = [p for p in paths.worktrees().glob(f"{run_id}*") if p.is_dir()]
    if len(found) != 1:
        return False
    stop_processes_in(found[0])
    shutil.rmtree(found[0], ignore_errors=True)
    remove_scratch(found[0].name)
    return True


def retry(engine: Engine, run_id: str, step: str | None) -> str:
    """Keep results before ``step`` and make the run runnable again (its worktree is
    forked again when it was removed)."""
    row = j.get_instance(engine.conn, run_id)
    metadata, _ = unwrap_params(json.loads(row["payload"]))
    if metadata.get("snapshot"):
        from ci_runner.workspace import hold
        from ci_runner.workspace.snapshots import checkout_source

        hold(checkout_source(metadata["repo"], metadata.get("snapshot_store"),
                             metadata.get("git_common_dir")),
             str(row["id"]), str(metadata["sha"]))
    j.reset_from(engine.conn, row["id"], step)
    return str(row["id"])


def needs_driver(engine: Engine) -> list[str]:
    """Run ids a worker should drive now: queued (unclaimed or orphaned), due timers,
    waits whose event arrived, and running ones whose driver is dead or silent."""
    t = now()
    ids = []
    for row in j.runnable(engine.conn, at=t):
        if row["status"] in ("queued", "running"):
            expired = (row["lease_expires_at"] or 0) <= t
            if row["owner"] is not None and not expired and leases.owner_alive(row["owner"]):
                continue
        ids.append(str(row["id"]))
    return ids


def pending_records(engine: Engine, *, tenant: str | None = None) -> list[dict[str, Any]]:
    """Runs hibernating for an event or approval (only ``tenant``'s, when given), with
    what they wait for."""
    records = []
    for row in j.pending(engine.conn):
        if tenant is not None and row["tenant"] != tenant:
            continue
        metadata, _ = unwrap_params(json.loads(row["payload"]))
        for wait in j.loads(row["waiting_for"]) or []:
            if "event_type" not in wait:
                continue
            records.append({
                "run_id": row["id"], "repo": metadata.get("repo_name"),
                "sha": metadata.get("sha"), "ref": metadata.get("ref"),
                "step": wait["step"],
                "what": "approval" if wait.get("approval") else wait["event_type"],
                "event_type": wait["event_type"], "message": wait.get("message"),
                "since": row["updated_at"], "timeout_at": wait.get("deadline"),
            })
    return records
