"""The engine's SQL: instances, the step journal, events and leases.

Every write made on behalf of a driven instance is fenced: inside the same
``BEGIN IMMEDIATE`` transaction it first checks that the instance's
``lease_epoch`` is still the one this driver took. A driver that was presumed
dead and replaced can therefore never commit again (``LeaseLost``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ci_runner.errors import (
    InvalidState,
    LeaseLost,
    NondeterminismError,
    RunNotFound,
    UsageError,
)
from ci_runner.statuses import run_word
from ci_runner.store.db import clock, immediate, is_postgres, lock_row, notify, now

TERMINAL = ("complete", "errored", "terminated")
HIBERNATING = ("waiting", "waiting_for_event")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# -- instances ---------------------------------------------------------------


def create_instance(
    conn: sqlite3.Connection,
    *,
    instance_id: str,
    tenant: str,
    workflow: str,
    payload: Any,
    owner: str | None = None,
    ttl_s: float = 0.0,
) -> None:
    """Store a queued instance; with ``owner`` it is leased to its creator, so a worker
    does not pick it up between its creation and its creator driving it."""
    t = clock(conn) if owner else now()
    with immediate(conn):
        conn.execute(
            "INSERT INTO instances (id, tenant, workflow, payload, status, created_at,"
            " updated_at, owner, lease_expires_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (instance_id, tenant, workflow, dumps(payload), t, t, owner,
             t + ttl_s if owner else None),
        )
        notify(conn)


def get_instance(
    conn: sqlite3.Connection, instance_id: str, *, lock: bool = False
) -> sqlite3.Row:
    """The instance ``instance_id`` (or the one its unique prefix names); ``lock``: inside
    ``immediate``, its row is kept from changing until the commit (see ``lock_row``)."""
    suffix = lock_row(conn) if lock else ""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM instances WHERE id = ?" + suffix, (instance_id,)  # noqa: S608 - a constant lock clause
    ).fetchone()
    if row is None:
        # Accept a unique prefix, as git does for shas: ids are long.
        rows: list[sqlite3.Row] = conn.execute(
            "SELECT * FROM instances WHERE substr(id, 1, length(?)) = ? LIMIT 2" + suffix,  # noqa: S608 - a constant lock clause
            (instance_id, instance_id),
        ).fetchall()
        if len(rows) == 1:
            return rows[0]
        raise RunNotFound(f"no run {instance_id!r}: `ci-runner runs` lists the runs")
    return row


# A listing's columns: never a run's output (it may be big), which only `show` reads.
_LISTED = ("id, tenant, workflow, payload, status, created_at, updated_at, started_at,"
           " finished_at, error, waiting_for, owner, lease_expires_at, NULL AS output")


# Where a CI run's payload (the dispatcher's envelope) keeps the ref it ran at.
_REF = "json_extract(payload, '$.__dispatcherMetadata.ref')"
_PG_REF = "(payload::json #>> '{__dispatcherMetadata,ref}')"


def list_instances(
    conn: sqlite3.Connection, *, tenant: str | None = None, limit: int = 50,
    statuses: tuple[str, ...] | None = None, branch: str | None = None,
) -> list[sqlite3.Row]:
    """The newest instances first, optionally only ``tenant``'s, only those in one of
    ``statuses`` (engine words), or only runs at ``branch`` (a name, or a full ref)."""
    where, args = _filters(tenant=tenant, statuses=statuses, branch=branch,
                           pg=is_postgres(conn))
    return conn.execute(
        f"SELECT {_LISTED} FROM instances{where}"  # noqa: S608 - constant columns, ? values
        " ORDER BY created_at DESC LIMIT ?",
        (*args, limit),
    ).fetchall()


def count_instances(
    conn: sqlite3.Connection, *, tenant: str | None = None,
    statuses: tuple[str, ...] | None = None, branch: str | None = None,
) -> int:
    """How many instances ``list_instances`` would find with no limit."""
    where, args = _filters(tenant=tenant, statuses=statuses, branch=branch,
                           pg=is_postgres(conn))
    row = conn.execute(f"SELECT count(*) FROM instances{where}", args).fetchone()  # noqa: S608
    return int(row[0])


def newest_instance(conn: sqlite3.Connection, *, tenant: str | None = None) -> str | None:
    """The id of the newest instance (of ``tenant``), or None when there is none."""
    rows = list_instances(conn, tenant=tenant, limit=1)
    return str(rows[0]["id"]) if rows else None


def instances_with_prefix(
    conn: sqlite3.Connection, prefix: str, *, limit: int = 50
) -> list[sqlite3.Row]:
    """Instances whose id starts with ``prefix`` (listing columns), newest first: the
    candidates of an id prefix that is not unique. None for an empty prefix."""
    if not prefix:
        return []
    rows: list[sqlite3.Row] = conn.execute(
        f"SELECT {_LISTED} FROM instances WHERE substr(id, 1, length(?)) = ?"  # noqa: S608
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (prefix, prefix, limit),
    ).fetchall()
    return rows


def _filters(
    *, tenant: str | None, statuses: tuple[str, ...] | None, branch: str | None,
    pg: bool = False,
) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause (made of constant text) and its values."""
    clauses: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        clauses.append("tenant = ?")
        args.append(tenant)
    if statuses is not None:
        clauses.append(f"status IN ({', '.join('?' * len(statuses)) or 'NULL'})")
        args.extend(statuses)
    if branch is not None:
        clauses.append(f"{_PG_REF if pg else _REF} IN ('refs/heads/' || ?, ?)")
        args.extend((branch, branch))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def steps_of(
    conn: sqlite3.Connection, instance_id: str, *, results: bool = True
) -> list[sqlite3.Row]:
    """A run's steps in order; ``results=False`` (listings) leaves each result out but
    for a light step's exit code, read by SQLite from results of at most 64 KiB."""
    columns = "*" if results else (
        "instance_id, seq, name, occurrence, kind, status, attempts, started_at, finished_at,"
        " duration_s, error, detail, " + (_PG_EXIT_CODE if is_postgres(conn) else _EXIT_CODE))
    return conn.execute(
        f"SELECT {columns} FROM steps WHERE instance_id = ?"  # noqa: S608 - constant columns
        " ORDER BY seq, name, occurrence",
        (instance_id,),
    ).fetchall()


_EXIT_CODE = ("CASE WHEN kind = 'run' AND length(CAST(result AS BLOB)) <= 65536 THEN"
              " json_object('exit_code', json_extract(result, '$.exit_code')) END AS result")
_PG_EXIT_CODE = ("CASE WHEN kind = 'run' AND octet_length(result) <= 65536 THEN"
                 " json_build_object('exit_code', result::json -> 'exit_code')::text END"
                 " AS result")


def acquire_lease(
    conn: sqlite3.Connection, instance_id: str, *, owner: str, ttl_s: float, owner_dead: bool
) -> int:
    """Take the instance for ``owner``; returns the new fencing epoch.

    Allowed when nobody holds it, the lease expired, or the caller checked that
    the holder's process is dead (``owner_dead``).
    """
    with immediate(conn):
        t = clock(conn)
        row = conn.execute(
            "SELECT status, owner, lease_expires_at, lease_epoch FROM instances WHERE id = ?"  # noqa: S608 - a constant lock clause
            + lock_row(conn), (instance_id,),
        ).fetchone()
        if row is None:
            raise RunNotFound(f"no run {instance_id!r}")
        if row["status"] in TERMINAL:
            raise InvalidState(f"run {instance_id} is {run_word(row['status'])}; nothing to drive")
        if row["status"] == "paused":
            raise InvalidState(f"run {instance_id} is paused: `ci-runner unpause {instance_id}`")
        held = row["owner"] is not None and (row["lease_expires_at"] or 0) > t
        if held and row["owner"] != owner and not owner_dead:
            raise InvalidState(
                f"run {instance_id} is being driven by {row['owner']}; it is not taken over"
                " while its owner is alive"
            )
        epoch = int(row["lease_epoch"]) + 1
        conn.execute(
            "UPDATE instances SET owner = ?, lease_epoch = ?, lease_expires_at = ?,"
            " status = 'running', started_at = COALESCE(started_at, ?), updated_at = ?,"
            " waiting_for = NULL WHERE id = ?",
            (owner, epoch, t + ttl_s, t, t, instance_id),
        )
    return epoch


def set_payload(conn: sqlite3.Connection, instance_id: str, payload: Any) -> None:
    """Replace the instance's payload (a fleet's host points a run's paths at its own)."""
    with immediate(conn):
        conn.execute("UPDATE instances SET payload = ? WHERE id = ?",
                     (dumps(payload), instance_id))


def crashes(conn: sqlite3.Connection, instance_id: str) -> int:
    """How many drivers in a row died holding the run without it making progress."""
    row = conn.execute("SELECT crashes FROM instances WHERE id = ?", (instance_id,)).fetchone()
    return int(row[0] or 0) if row else 0


def send_event(
    conn: sqlite3.Connection,
    instance_id: str,
    event_type: str,
    payload: Any,
    *,
    only_if_waiting: bool = False,
    once: bool = False,
) -> int:
    """Store an event for the instance; it is kept until a step waits for it.

    ``only_if_waiting``: refuse unless the instance is hibernated waiting for this type.
    ``once``: refuse while an earlier event of this type is still undelivered, so two
    approvals racing from two terminals apply once.
    """
    with immediate(conn):
        row = conn.execute(
            "SELECT status, waiting_for FROM instances WHERE id = ?" + lock_row(conn),  # noqa: S608 - a constant lock clause
            (instance_id,),
        ).fetchone()
        if row is None:
            raise RunNotFound(f"no run {instance_id!r}: `ci-runner runs` lists the runs")
        if row["status"] in TERMINAL:
            raise InvalidState(
                f"run {instance_id} is {run_word(row['status'])}; it takes no more events")
        if once:
            earlier = conn.execute(
                "SELECT payload FROM events WHERE instance_id = ? AND type = ?"
                " AND consumed_by IS NULL LIMIT 1", (instance_id, event_type),
            ).fetchone()
            if earlier is not None:
                by = (loads(earlier[0]) or {}).get("by", "someone")
                raise InvalidState(
                    f"run {instance_id} already has a {event_type!r} from {by} that is being"
                    " applied; it is applied once"
                )
        if only_if_waiting:
            waits = loads(row["waiting_for"]) or []
            if row["status"] != "waiting_for_event" or not any(
                w.get("event_type") == event_type for w in waits
            ):
                raise InvalidState(
                    f"run {instance_id} is {run_word(row['status'])}, not waiting for"
                    f" {event_type!r}:"
                    " `ci-runner pending` lists the runs that are"
                )
        row = conn.execute(
            "INSERT INTO events (instance_id, type, payload, created_at) VALUES (?, ?, ?, ?)"
            " RETURNING id", (instance_id, event_type, dumps(payload), now()),
        ).fetchone()
        notify(conn)
        return int(row[0])


def terminate(
    conn: sqlite3.Connection,
    instance_id: str,
    *,
    error: dict[str, Any] | None = None,
    only_if: tuple[str, ...] | None = None,
    status: str = "terminated",
) -> list[dict[str, Any]]:
    """Cancel the instance; a live driver loses its lease. Returns the details of steps
    that were running, so their processes can be stopped.

    ``error`` says why (default: cancelled by the user); ``only_if`` cancels only from
    those statuses, checked in the same transaction (else ``InvalidState``); ``status``
    is what it ends as ('errored' when it is not the user's doing).
    """
    if status not in ("terminated", "errored"):
        raise ValueError(f"a run is ended as terminated or errored, not {status!r}")
    t = now()
    why = error or {"type": "Cancelled", "message": "cancelled by the user", "fields": {}}
    with immediate(conn):
        row = get_instance(conn, instance_id, lock=True)
        if row["status"] in TERMINAL:
            raise InvalidState(f"run {row['id']} is already {run_word(row['status'])}")
        if only_if is not None and row["status"] not in only_if:
            raise InvalidState(f"run {row['id']} is {run_word(row['status'])}; it was left alone")
        conn.execute(
            "UPDATE instances SET status = ?, lease_epoch = lease_epoch + 1,"
            " owner = NULL, lease_expires_at = NULL, wake_at = NULL, control = NULL,"
            " finished_at = ?, updated_at = ?, error = ? WHERE id = ?",
            (status, t, t, dumps(why), row["id"]),
        )
        notify(conn)
        steps = conn.execute(
            "SELECT detail FROM steps WHERE instance_id = ? AND status = 'running'",
            (row["id"],),
        ).fetchall()
        # Cancelled by the user, its steps in flight are cancelled too; ended for a cause
        # of its own (a full disk), they failed of it.
        conn.execute(
            "UPDATE steps SET status = ?, finished_at = ?, error = ?"
            " WHERE instance_id = ? AND status IN ('running', 'waiting', 'retrying')",
            ("cancelled" if status == "terminated" else "failed", t,
             dumps({"type": "Cancelled", "message": "the run was cancelled", "fields": {}}
                   if status == "terminated" else why), row["id"]),
        )
    return [loads(s[0]) for s in steps if s[0]]


def request_pause(conn: sqlite3.Connection, instance_id: str) -> str:
    """Pause: at once when no driver runs it, else at its next step (returns 'pausing')."""
    with immediate(conn):
        row = get_instance(conn, instance_id, lock=True)
        status = row["status"]
        if status in TERMINAL or status == "paused":
            raise InvalidState(f"run {row['id']} is {run_word(status)}; it cannot be paused")
        if status == "running":
            conn.execute("UPDATE instances SET control = 'pause' WHERE id = ?", (row["id"],))
            return "pausing"
        conn.execute(
            "UPDATE instances SET status = 'paused', updated_at = ? WHERE id = ?",
            (now(), row["id"]),
        )
        return "paused"


def unpause(conn: sqlite3.Connection, instance_id: str) -> str:
    """Make a paused instance runnable again; returns its new status."""
    with immediate(conn):
        row = get_instance(conn, instance_id, lock=True)
        if row["status"] != "paused" and row["control"] != "pause":
            raise InvalidState(f"run {row['id']} is {run_word(row['status'])}, not paused")
        if row["status"] != "paused":  # the pause had not taken effect yet: withdraw it
            conn.execute("UPDATE instances SET control = NULL WHERE id = ?", (row["id"],))
            return str(row["status"])
        waits = loads(row["waiting_for"]) or []
        if any("event_type" in w for w in waits):
            status = "waiting_for_event"
        elif row["wake_at"] is not None:
            status = "waiting"
        else:
            status = "queued"
        conn.execute(
            "UPDATE instances SET status = ?, control = NULL, updated_at = ? WHERE id = ?",
            (status, now(), row["id"]),
        )
        notify(conn)
        return status


def reset_from(conn: sqlite3.Connection, instance_id: str, step: str | None) -> int:
    """A new attempt of the instance keeping the results of steps before ``step``
    (all of them dropped when ``step`` is None). Returns how many steps were dropped."""
    with immediate(conn):
        row = get_instance(conn, instance_id, lock=True)
        if row["status"] == "running" or row["control"] is not None:
            raise InvalidState(
                f"run {row['id']} is running; cancel it first (`ci-runner cancel {row['id']}`)"
            )
        rows = conn.execute(
            "SELECT name, occurrence, seq FROM steps WHERE instance_id = ? ORDER BY seq",
            (row["id"],),
        ).fetchall()
        first = 0
        if step is not None:
            labels = {_label(r["name"], r["occurrence"]): r["seq"] for r in rows}
            if step not in labels:
                known = ", ".join(labels) or "none"
                raise InvalidState(f"run {row['id']} has no step {step!r} (steps: {known})")
            first = labels[step]
        dropped = conn.execute(
            "DELETE FROM steps WHERE instance_id = ? AND seq >= ?", (row["id"], first)
        ).rowcount
        conn.execute(
            "UPDATE instances SET status = 'queued', output = NULL, error = NULL,"
            " finished_at = NULL, wake_at = NULL, waiting_for = NULL, owner = NULL,"
            " lease_expires_at = NULL, generation = generation + 1, updated_at = ?"
            " WHERE id = ?",
            (now(), row["id"]),
        )
        notify(conn)
        return int(dropped)


def runnable(conn: sqlite3.Connection, *, at: float | None = None) -> list[sqlite3.Row]:
    """Instances a worker could drive now: queued, due timers, delivered events, and
    running ones (the caller keeps those whose owner is dead or whose lease expired)."""
    t = now() if at is None else at
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT id, status, owner, lease_expires_at FROM instances WHERE"  # noqa: S608
        f" {RUNNABLE_PG if is_postgres(conn) else RUNNABLE} ORDER BY created_at",
        (t,),
    ).fetchall()
    return rows


# Which instances may need a driver at ``?`` (queued, running, a due timer, an arrived
# event): the caller checks running ones' leases.
RUNNABLE = (
    "(status IN ('queued', 'running')"
    " OR (status IN ('waiting', 'waiting_for_event') AND wake_at IS NOT NULL"
    "     AND wake_at <= ?)"
    " OR (status = 'waiting_for_event' AND EXISTS (SELECT 1 FROM events e,"
    "     json_each(instances.waiting_for) w WHERE e.instance_id = instances.id"
    "     AND e.consumed_by IS NULL AND e.type = json_extract(w.value, '$.event_type'))))")
RUNNABLE_PG = (
    "(status IN ('queued', 'running')"
    " OR (status IN ('waiting', 'waiting_for_event') AND wake_at IS NOT NULL"
    "     AND wake_at <= ?)"
    " OR (status = 'waiting_for_event' AND EXISTS (SELECT 1 FROM events e,"
    "     json_array_elements(instances.waiting_for::json) w WHERE"
    "     e.instance_id = instances.id AND e.consumed_by IS NULL"
    "     AND e.type = w.value ->> 'event_type')))")


def with_status(conn: sqlite3.Connection, status: str) -> list[str]:
    """Ids of the instances in ``status``, oldest first."""
    return [str(r[0]) for r in conn.execute(
        "SELECT id FROM instances WHERE status = ? ORDER BY created_at", (status,))]


def pending(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM instances WHERE status = 'waiting_for_event' ORDER BY updated_at"
    ).fetchall()
    return rows


def events_of(conn: sqlite3.Connection, instance_id: str) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM events WHERE instance_id = ? ORDER BY id", (instance_id,)
    ).fetchall()
    return rows


# -- one driven instance -----------------------------------------------------


class Journal:
    """The step journal of one instance, written by the driver holding its lease."""

    def __init__(self, conn: sqlite3.Connection, instance_id: str, epoch: int) -> None:
        self.conn = conn
        self.instance_id = instance_id
        self.epoch = epoch
        row = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM steps WHERE instance_id = ?", (instance_id,)
        ).fetchone()
        self._seq = int(row[0])
        # Drivers that died in a row before this one: cleared by the first committed step.
        self.crashes = crashes(conn, instance_id)
        #: The control request ('pause') seen by the latest write, or None.
        self.control: str | None = None

    def recorded(self) -> list[tuple[str, int]]:
        """(name, occurrence) of every step that has a row: what a replay will find."""
        rows = self.conn.execute(
            "SELECT name, occurrence FROM steps WHERE instance_id = ?", (self.instance_id,)
        ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def _fence(self) -> str | None:
        """Check the lease is still ours; returns a pending control request ('pause')."""
        row = self.conn.execute(
            "SELECT lease_epoch, control FROM instances WHERE id = ?" + lock_row(self.conn),  # noqa: S608 - a constant lock clause
            (self.instance_id,),
        ).fetchone()
        return self._fenced(row)

    def _fenced(self, row: Any) -> str | None:
        if row is None or row[0] != self.epoch:
            raise LeaseLost(
                f"run {self.instance_id} was cancelled or taken over by another process;"
                " this one stops"
            )
        self.control = row[1]
        return row[1]  # type: ignore[no-any-return]

    def _fence_then(self, sql: str, params: tuple[Any, ...], *,
                    last: bool = False) -> list[Any]:
        """``_fence``, then ``sql``'s rows. On PostgreSQL both go in one round trip (a
        step's cost is its round trips): ``sql`` runs before the fence is checked, and
        a failed check rolls it back with the transaction. ``last``: the transaction
        ends with ``sql``, its COMMIT sent along: ``sql`` must then be guarded by the
        fence itself (``_guard``), for a failed check finds it committed."""
        if not is_postgres(self.conn):
            self._fence()
            return list(self.conn.execute(sql, params).fetchall())
        fence, rows = self.conn.batch([  # type: ignore[attr-defined]
            ("SELECT lease_epoch, control FROM instances WHERE id = ? FOR UPDATE",
             (self.instance_id,)), (sql, params)], commit=last)
        self._fenced(fence[0] if fence else None)
        return list(rows)

    def _guard(self) -> str:
        """A condition that makes a write do nothing unless the lease is still ours (on
        PostgreSQL, where the write may be committed before the fence is read)."""
        if not is_postgres(self.conn):
            return ""
        return " AND (SELECT lease_epoch FROM instances WHERE id = ?) = ?"

    def _guard_args(self) -> tuple[Any, ...]:
        return (self.instance_id, self.epoch) if is_postgres(self.conn) else ()

    def _last(self, sql: str, params: tuple[Any, ...]) -> None:
        """The transaction's last write, after its fence: on PostgreSQL sent with the
        COMMIT, in one round trip."""
        if is_postgres(self.conn):
            self.conn.batch([(sql, params)], commit=True)  # type: ignore[attr-defined]
        else:
            self.conn.execute(sql, params)

    def still_ours(self) -> bool:
        row = self.conn.execute(
            "SELECT lease_epoch FROM instances WHERE id = ?", (self.instance_id,)
        ).fetchone()
        return row is not None and row[0] == self.epoch

    def _step(self, name: str, occurrence: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM steps WHERE instance_id = ? AND name = ? AND occurrence = ?",
            (self.instance_id, name, occurrence),
        ).fetchone()
        return row

    def _check_kind(self, row: sqlite3.Row, name: str, occurrence: int, kind: str) -> None:
        if row["kind"] != kind:
            raise NondeterminismError(
                f"step {_label(name, occurrence)} was recorded as a {row['kind']} step but the"
                f" pipeline now calls it as a {kind} step; a run replays the code of its own"
                " commit, so the pipeline must make the same calls on every replay",
                step=_label(name, occurrence),
            )

    def begin(
        self, name: str, occurrence: int, kind: str, detail: dict[str, Any] | None = None,
        *, at: float | None = None, started: bool = False,
    ) -> dict[str, Any]:
        """Start an attempt, or return the step's recorded outcome for replay.

        ``started``: the attempt is already under way (its begin was sent ahead, see
        ``begin_and_complete``), so a pause request cannot stop it; ``at`` is when
        it started.
        """
        t = now() if at is None else at
        # Not fsynced: a lost attempt marker only means an attempt is not counted
        # after a power cut; the next durable commit makes it permanent anyway.
        with immediate(self.conn, durable=False):
            found = self._fence_then(
                "SELECT * FROM steps WHERE instance_id = ? AND name = ? AND occurrence = ?",
                (self.instance_id, name, occurrence))
            control = self.control
            row = found[0] if found else None
            if row is not None:
                self._check_kind(row, name, occurrence, kind)
                if row["status"] in ("complete", "failed", "skipped"):
                    return {
                        "state": row["status"],
                        "result": loads(row["result"]),
                        "error": loads(row["error"]),
                        "attempts": row["attempts"],
                        "duration_s": row["duration_s"],
                        "detail": loads(row["detail"]),
                    }
                if control == "pause" and not started:
                    return {"state": "pause"}
                attempt = int(row["attempts"]) + 1
                self._last(
                    "UPDATE steps SET status = 'running', attempts = ?, started_at = ?"
                    " WHERE instance_id = ? AND name = ? AND occurrence = ?",
                    (attempt, t, self.instance_id, name, occurrence),
                )
                return {"state": "run", "attempt": attempt, "detail": loads(row["detail"])}
            if control == "pause" and not started:
                return {"state": "pause"}
            self._seq += 1
            self._last(
                "INSERT INTO steps (instance_id, name, occurrence, kind, status, attempts,"
                " started_at, detail, seq) VALUES (?, ?, ?, ?, 'running', 1, ?, ?, ?)",
                (self.instance_id, name, occurrence, kind, t,
                 None if detail is None else dumps(detail), self._seq),
            )
            return {"state": "run", "attempt": 1, "detail": detail}

    def complete(
        self,
        name: str,
        occurrence: int,
        result: Any,
        *,
        status: str = "complete",
        detail: dict[str, Any] | None = None,
    ) -> float:
        """Commit the step's result; returns its duration (from its first start).

        Never a wait's: its outcome comes from an event (``wait_event``), not from the
        workflow's process."""
        t = now()
        with immediate(self.conn):
            updated = self._fence_then(
                "UPDATE steps SET status = ?, result = ?, finished_at = ?,"  # noqa: S608 - constant guard
                " duration_s = ? - started_at,"
                " detail = json_patch(COALESCE(detail, '{}'), COALESCE(?, '{}')),"
                " error = NULL WHERE instance_id = ? AND name = ? AND occurrence = ?"
                " AND kind <> 'event'" + self._guard() + " RETURNING duration_s",
                (status, dumps(result), t, t, None if detail is None else dumps(detail),
                 self.instance_id, name, occurrence, *self._guard_args()),
                last=not self.crashes,
            )
            row = updated[0] if updated else None
            self._progress()
        if row is None and self._is_wait(name, occurrence):
            raise UsageError(f"step {name!r} is a wait: its outcome cannot be recorded by the"
                             " pipeline")
        return float(row[0] or 0.0) if row else 0.0

    def count_crash(self) -> None:
        """This drive follows a driver that died holding the run: one more in a row (any
        committed step starts the count again)."""
        with immediate(self.conn):
            self._fence()
            self.conn.execute("UPDATE instances SET crashes = crashes + 1 WHERE id = ?",
                              (self.instance_id,))
        self.crashes += 1

    def _progress(self) -> None:
        """A step committed: the run moves again, its crash count starts over."""
        if self.crashes:
            self.conn.execute("UPDATE instances SET crashes = 0 WHERE id = ?",
                              (self.instance_id,))
            self.crashes = 0

    def _is_wait(self, name: str, occurrence: int) -> bool:
        found = self._step(name, occurrence)
        return found is not None and found["kind"] == "event"

    def begin_and_complete(
        self, name: str, occurrence: int, kind: str, result: Any, *, started_at: float,
        detail: dict[str, Any] | None = None,
    ) -> float:
        """A first attempt that began and succeeded before its begin was written: both
        in one durable transaction. Returns the duration."""
        t = now()
        with immediate(self.conn):
            # No look first: the step has no row (the usual case) unless the insert
            # says otherwise.
            inserted = self._fence_then(
                "INSERT INTO steps (instance_id, name, occurrence, kind, status, attempts,"
                " started_at, finished_at, duration_s, result, detail, seq)"
                " VALUES (?, ?, ?, ?, 'complete', 1, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (self.instance_id, name, occurrence, kind, started_at, t, t - started_at,
                 dumps(result), None if detail is None else dumps(detail), self._seq + 1),
            )
            if inserted:
                self._seq += 1
                self._progress()
                return t - started_at
            row = self._step(name, occurrence)
            assert row is not None
            self._check_kind(row, name, occurrence, kind)
        # Not a first attempt after all (cannot happen while we hold the lease): the
        # usual two writes.
        self.begin(name, occurrence, kind, at=started_at, started=True)
        return self.complete(name, occurrence, result, detail=detail)

    def peek(self, name: str, occurrence: int) -> dict[str, Any] | None:
        """The step's recorded outcome, if it has one (no attempt is started)."""
        row = self._step(name, occurrence)
        if row is None or row["status"] not in ("complete", "failed", "skipped"):
            return None
        return {"state": row["status"], "kind": row["kind"]}

    def record(
        self, name: str, occurrence: int, kind: str, *, status: str, result: Any,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record an outcome without an attempt (a skipped step, a cache hit). A step
        that already has an outcome keeps it: replays see what the first run saw."""
        t = now()
        with immediate(self.conn):
            self._fence()
            row = self._step(name, occurrence)
            if row is not None:
                self._check_kind(row, name, occurrence, kind)
                if row["status"] in ("complete", "failed", "skipped"):
                    return {"state": row["status"], "result": loads(row["result"]),
                            "error": loads(row["error"]), "recorded": False}
            self._seq += 1
            self.conn.execute(
                "INSERT INTO steps (instance_id, name, occurrence, kind, status,"
                " attempts, started_at, finished_at, duration_s, result, detail, seq)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?, ?)"
                " ON CONFLICT (instance_id, name, occurrence) DO UPDATE SET"
                " kind = excluded.kind, status = excluded.status, attempts = 0,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at,"
                " duration_s = 0, result = excluded.result, error = NULL, wake_at = NULL,"
                " detail = excluded.detail, seq = excluded.seq",
                (self.instance_id, name, occurrence, kind, status, t, t, dumps(result),
                 None if detail is None else dumps(detail), self._seq),
            )
        return {"state": status, "result": result, "error": None, "recorded": True}

    def fail_attempt(
        self,
        name: str,
        occurrence: int,
        error: dict[str, Any],
        *,
        final: bool,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record a failed attempt; ``final`` commits the step as failed for good."""
        t = now()
        with immediate(self.conn):
            self._fence()
            self.conn.execute(
                "UPDATE steps SET status = ?, error = ?, finished_at = ?,"
                " duration_s = ? - started_at,"
                " detail = json_patch(COALESCE(detail, '{}'), COALESCE(?, '{}'))"
                " WHERE instance_id = ? AND name = ? AND occurrence = ?",
                ("failed" if final else "retrying", dumps(error), t, t,
                 None if detail is None else dumps(detail), self.instance_id, name, occurrence),
            )

    def cancel_step(self, name: str, occurrence: int, error: dict[str, Any]) -> bool:
        """Record that a running step was cancelled (its workflow stopped waiting for it:
        a sibling in a parallel group failed). False when it had ended already."""
        t = now()
        with immediate(self.conn):
            self._fence()
            cur = self.conn.execute(
                "UPDATE steps SET status = 'cancelled', error = ?, finished_at = ?,"
                " duration_s = ? - started_at WHERE instance_id = ? AND name = ?"
                " AND occurrence = ? AND status IN ('running', 'retrying', 'waiting')",
                (dumps(error), t, t, self.instance_id, name, occurrence),
            )
        return cur.rowcount > 0

    def set_detail(self, name: str, occurrence: int, detail: dict[str, Any]) -> None:
        with immediate(self.conn, durable=False):
            self._fence()
            self.conn.execute(
                "UPDATE steps SET detail = json_patch(COALESCE(detail, '{}'), ?)"
                " WHERE instance_id = ? AND name = ? AND occurrence = ?",
                (dumps(detail), self.instance_id, name, occurrence),
            )

    def running_details(self) -> list[dict[str, Any]]:
        """Details of steps left 'running' (a previous driver died during them)."""
        rows = self.conn.execute(
            "SELECT detail FROM steps WHERE instance_id = ? AND status = 'running'"
            " AND detail IS NOT NULL",
            (self.instance_id,),
        ).fetchall()
        return [loads(r[0]) for r in rows]

    def sleep(self, name: str, occurrence: int, wake_at: float) -> dict[str, Any]:
        """Register a durable sleep (its wake time is written before it sleeps)."""
        with immediate(self.conn):
            self._fence()
            row = self._step(name, occurrence)
            if row is not None:
                self._check_kind(row, name, occurrence, "sleep")
                if row["status"] == "complete":
                    return {"state": "complete", "result": None}
                return {"state": "sleeping", "wake_at": row["wake_at"]}
            self._seq += 1
            self.conn.execute(
                "INSERT INTO steps (instance_id, name, occurrence, kind, status, attempts,"
                " started_at, wake_at, seq) VALUES (?, ?, ?, 'sleep', 'waiting', 1, ?, ?, ?)",
                (self.instance_id, name, occurrence, now(), wake_at, self._seq),
            )
            return {"state": "sleeping", "wake_at": wake_at}

    def wait_event(
        self, name: str, occurrence: int, event_type: str, deadline: float
    ) -> dict[str, Any]:
        """Take the oldest unconsumed event of ``event_type``, or register the wait."""
        t = now()
        label = _label(name, occurrence)
        with immediate(self.conn):
            self._fence()
            row = self._step(name, occurrence)
            if row is not None:
                self._check_kind(row, name, occurrence, "event")
                if row["status"] in ("complete", "failed"):
                    return {"state": row["status"], "result": loads(row["result"]),
                            "error": loads(row["error"])}
                deadline = row["wake_at"]
            event = self.conn.execute(
                "SELECT id, type, payload, created_at FROM events WHERE instance_id = ?"
                " AND type = ? AND consumed_by IS NULL ORDER BY id LIMIT 1",
                (self.instance_id, event_type),
            ).fetchone()
            if row is None:
                self._seq += 1
                self.conn.execute(
                    "INSERT INTO steps (instance_id, name, occurrence, kind, status, attempts,"
                    " started_at, wake_at, detail, seq)"
                    " VALUES (?, ?, ?, 'event', 'waiting', 1, ?, ?, ?, ?)",
                    (self.instance_id, name, occurrence, t, deadline,
                     dumps({"event_type": event_type}), self._seq),
                )
            if event is not None:
                result = {"type": event["type"], "payload": loads(event["payload"]),
                          "timestamp": event["created_at"]}
                self.conn.execute(
                    "UPDATE events SET consumed_by = ?, consumed_at = ? WHERE id = ?",
                    (label, t, event["id"]),
                )
                self.conn.execute(
                    "UPDATE steps SET status = 'complete', result = ?, finished_at = ?,"
                    " duration_s = ? - started_at"
                    " WHERE instance_id = ? AND name = ? AND occurrence = ?",
                    (dumps(result), t, t, self.instance_id, name, occurrence),
                )
                return {"state": "complete", "result": result}
            return {"state": "waiting", "deadline": deadline}

    def heartbeat(self, ttl_s: float) -> None:
        with immediate(self.conn, durable=False):
            self._fence()
            t = clock(self.conn)
            self.conn.execute(
                "UPDATE instances SET lease_expires_at = ? WHERE id = ?",
                (t + ttl_s, self.instance_id),
            )

    def hibernate(self, *, status: str, wake_at: float | None, waiting_for: Any) -> None:
        """Park the instance: no owner, no process, woken when due or when an event comes."""
        t = now()
        with immediate(self.conn):
            self._fence()
            self.conn.execute(
                "UPDATE instances SET status = ?, wake_at = ?, waiting_for = ?, owner = NULL,"
                " lease_expires_at = NULL, control = NULL, updated_at = ? WHERE id = ?",
                (status, wake_at, dumps(waiting_for), t, self.instance_id),
            )
            notify(self.conn)

    def release(self, status: str = "queued") -> None:
        """Give the instance back without finishing it (shutdown, paused)."""
        with immediate(self.conn):
            self._fence()
            self.conn.execute(
                "UPDATE instances SET status = ?, owner = NULL, lease_expires_at = NULL,"
                " updated_at = ? WHERE id = ?",
                (status, now(), self.instance_id),
            )
            notify(self.conn)

    def finish(
        self, status: str, *, output: Any = None, error: dict[str, Any] | None = None
    ) -> list[tuple[str, int]]:
        """End the instance; returns the (name, occurrence) of steps it cancelled."""
        t = now()
        with immediate(self.conn):
            self._fence()
            self.conn.execute(
                "UPDATE instances SET status = ?, output = ?, error = ?, finished_at = ?,"
                " updated_at = ?, owner = NULL, lease_expires_at = NULL, wake_at = NULL,"
                " waiting_for = NULL, control = NULL WHERE id = ?",
                (status, dumps(output), None if error is None else dumps(error), t, t,
                 self.instance_id),
            )
            # A step still running (or waiting) when the run ends (the sibling of a failed
            # one in a parallel group) did not finish: it was cancelled, not left 'running'.
            cancelled = self.conn.execute(
                "UPDATE steps SET status = 'cancelled', finished_at = ?,"
                " duration_s = ? - started_at, error = ? WHERE instance_id = ?"
                " AND status IN ('running', 'retrying', 'waiting') RETURNING name, occurrence",
                (t, t, dumps({"type": "Cancelled", "message": "cancelled: the run ended"
                              " while it ran (a step beside it failed)", "fields": {}}),
                 self.instance_id),
            ).fetchall()
            notify(self.conn)
        return [(str(r[0]), int(r[1])) for r in cancelled]

    def status(self) -> str:
        row = self.conn.execute(
            "SELECT status FROM instances WHERE id = ?", (self.instance_id,)
        ).fetchone()
        return str(row[0])


def _label(name: str, occurrence: int) -> str:
    return name if occurrence == 1 else f"{name}#{occurrence}"
