"""Workers on many hosts taking runs from one PostgreSQL database: the claim, the per-repo
slots that make each repo's ``concurrency`` exact, and the channel that wakes workers.

A claim is one transaction: the oldest runnable runs nobody holds are locked with
``FOR UPDATE SKIP LOCKED`` (two workers never wait for, nor take, the same run), and
each is leased to the worker only with a free slot of its repo locked in the same
transaction. A count of running runs read under SKIP LOCKED would let two claims
through at once (neither sees the other's uncommitted run); a slot row cannot be
locked twice. A slot is free when no run holds it, or when its run is no longer
driven (hibernating, ended, or its lease expired on the database's clock), so
nothing has to give a slot back: a worker killed with SIGKILL frees its slots when
its leases run out. A repo without slot rows has no limit.

The worker that claims a run hands it to the driver process it starts
(``HANDOVER_ENV``): that process takes the lease over from its parent with a new
epoch, and every journal write is fenced by that epoch, as everywhere.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from ci_runner.store.db import CHANNEL, clock, immediate, is_postgres, notify
from ci_runner.store.journal import RUNNABLE_PG

__all__ = ["CHANNEL", "HANDOVER_ENV", "Claim", "claim", "set_limits"]

HANDOVER_ENV = "CI_RUNNER_HANDOVER"  # the owner a driver may take its run over from
CANDIDATES = 32  # runs looked at per claim


@dataclass(frozen=True)
class Claim:
    run_id: str
    tenant: str
    epoch: int


def set_limits(conn: sqlite3.Connection, limits: Mapping[str, int]) -> None:
    """Make each tenant's slot rows match its concurrency (``serve`` writes its repos')."""
    with immediate(conn):
        for tenant, count in limits.items():
            conn.execute(
                "INSERT INTO tenant_slots (tenant, slot) SELECT ?, g FROM"
                " generate_series(0, ? - 1) AS g ON CONFLICT DO NOTHING", (tenant, count))
            # A run holding a slot above the new limit ends as it would have; no new
            # run gets one.
            conn.execute("DELETE FROM tenant_slots WHERE tenant = ? AND slot >= ?",
                         (tenant, count))
        notify(conn)


def claim(conn: sqlite3.Connection, *, owner: str, ttl_s: float, limit: int) -> list[Claim]:
    """Lease up to ``limit`` runnable runs to ``owner``, oldest first, within their repos'
    concurrency; returns what was taken (PostgreSQL only).

    The candidates are read without locks; each is then locked alone (SKIP LOCKED), so
    a claim holds only the rows it takes, never a batch other workers would skip."""
    if not is_postgres(conn):
        raise RuntimeError("claims with SKIP LOCKED need PostgreSQL")
    taken: list[Claim] = []
    if limit <= 0:
        return taken
    with immediate(conn):
        t = clock(conn)
        candidates = conn.execute(
            f"SELECT id, tenant FROM instances WHERE {RUNNABLE_PG} AND {_UNHELD}"  # noqa: S608
            " ORDER BY created_at LIMIT ?", (t, t, CANDIDATES),
        ).fetchall()
        full: set[str] = set()  # tenants whose slots this claim found all taken
        for row in candidates:
            if len(taken) >= limit:
                break
            run_id, tenant = str(row[0]), str(row[1])
            if tenant in full:
                continue
            # Still runnable and unheld now that it is ours to look at (a new snapshot).
            mine = conn.execute(
                f"SELECT id FROM instances WHERE id = ? AND {RUNNABLE_PG}"  # noqa: S608
                f" AND {_UNHELD} FOR UPDATE SKIP LOCKED", (run_id, t, t),
            ).fetchone()
            if mine is None:
                continue
            if not _take_slot(conn, tenant, run_id, t):
                full.add(tenant)
                continue
            lease = conn.execute(
                "UPDATE instances SET owner = ?, lease_epoch = lease_epoch + 1,"
                " lease_expires_at = ?, status = 'running', started_at = COALESCE(started_at, ?),"
                " updated_at = ? WHERE id = ? RETURNING lease_epoch",
                (owner, t + ttl_s, t, t, run_id),
            ).fetchone()
            taken.append(Claim(run_id, tenant, int(lease[0])))
    return taken


# Nobody drives it: no owner, or its owner's lease ran out (on the database's clock).
_UNHELD = "(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?)"


def _take_slot(conn: sqlite3.Connection, tenant: str, run_id: str, t: float) -> bool:
    """Give ``run_id`` a free slot of ``tenant`` (or its own, on a takeover), locked until
    the claim commits; True when it has one or its tenant has no limit."""
    slots = [int(r[0]) for r in conn.execute(
        "SELECT slot FROM tenant_slots WHERE tenant = ?"
        " ORDER BY (run_id IS NOT DISTINCT FROM ?) DESC, (run_id IS NULL) DESC, slot",
        (tenant, run_id)).fetchall()]
    if not slots:
        return True  # no limit for this tenant
    for slot in slots:
        locked = conn.execute(
            "SELECT slot FROM tenant_slots WHERE tenant = ? AND slot = ? FOR UPDATE SKIP LOCKED",
            (tenant, slot)).fetchone()
        if locked is None:
            continue  # another worker is claiming with it right now
        # A new statement, so a new snapshot: it sees every claim committed before our
        # lock was granted, and nobody can change this row until we commit.
        free = conn.execute(
            "SELECT 1 FROM tenant_slots s WHERE s.tenant = ? AND s.slot = ?"
            " AND (s.run_id IS NULL OR s.run_id = ? OR NOT EXISTS (SELECT 1 FROM instances i"
            "      WHERE i.id = s.run_id AND i.status = 'running' AND i.lease_expires_at > ?))",
            (tenant, slot, run_id, t),
        ).fetchone()
        if free is None:
            continue
        conn.execute("UPDATE tenant_slots SET run_id = ? WHERE tenant = ? AND slot = ?",
                     (run_id, tenant, slot))
        # One slot per run: one it held before it hibernated is given back.
        # Never waited for: one another claim holds stays the run's until it stops.
        conn.execute("UPDATE tenant_slots SET run_id = NULL WHERE (tenant, slot) IN (SELECT"
                     " tenant, slot FROM tenant_slots WHERE run_id = ? AND tenant = ?"
                     " AND slot <> ? FOR UPDATE SKIP LOCKED)", (run_id, tenant, slot))
        return True
    return False
