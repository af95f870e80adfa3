"""The embedded engine against DBOS Transact, both in this process on a SQLite file.

(a) one workflow of 100 trivial `step.do` calls (DBOS: 100 `@DBOS.step()` calls in a
    `@DBOS.workflow()`), timed from start to result, per step;
(b) 200 small three-step workflow runs, start to result each, in runs per second.
Rounds alternate ours and DBOS (rotating who goes first); figures are medians.

Same file settings on both sides: journal_mode=WAL and synchronous=FULL. DBOS 3.4
sets only busy_timeout, foreign_keys and IMMEDIATE transactions on its SQLite
connections (dbos/_sys_db_sqlite.py), leaving SQLite's defaults, journal_mode=DELETE
and synchronous=FULL; a SQLAlchemy "connect" listener adds WAL and FULL to every
connection it opens. Ours connects with WAL and FULL (ci_runner/store/db.py) but
commits the attempt marker (`begin`) with synchronous=NORMAL: one fsync per step.

`--profile` also runs cProfile over our side of (a) and prints the top functions,
then times every SQL statement our side runs, grouped by statement.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import Row, median, ms, print_table, raw_commits, spread, verdict
from dbos import DBOS
from sqlalchemy import event

from ci_runner.engine.driver import Engine

STEPS = 100
RUNS = 200
ROUNDS_A = 9
ROUNDS_B = 5
GOAL_RATIO = 1 / 3
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")


# -- ours ---------------------------------------------------------------------------


class Hundred:
    async def run(self, event, step):
        for i in range(STEPS):
            await step.do(f"s{i}", lambda i=i: i)


class Three:
    async def run(self, event, step):
        a = await step.do("a", lambda: 1)
        b = await step.do("b", lambda: a + 1)
        return await step.do("c", lambda: b + 1)


def ours(engine: Engine, workflow: type) -> None:
    iid = engine.create(workflow, {}, tenant="bench")
    status = engine.drive(iid, workflow=workflow)
    assert status == "complete", status


# -- DBOS ---------------------------------------------------------------------------


@DBOS.step()
def dbos_one(i: int) -> int:
    return i


@DBOS.workflow()
def dbos_hundred() -> None:
    for i in range(STEPS):
        dbos_one(i)


@DBOS.workflow()
def dbos_three() -> int:
    a = dbos_one(1)
    b = dbos_one(a + 1)
    return dbos_one(b + 1)


_dbos_connections: list[sqlite3.Connection] = []


def _match_pragmas(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        for pragma in PRAGMAS:
            dbapi_conn.execute(pragma)
        _dbos_connections.append(dbapi_conn)


def launch_dbos(path: Path) -> None:
    # Every engine SQLAlchemy creates from now on (DBOS's) gets the same pragmas as ours.
    event.listen(sa.engine.Engine, "connect", _match_pragmas)
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}",
                 "log_level": "WARNING"})
    DBOS.launch()


def dbos_settings() -> tuple[str, int]:
    db = _dbos_connections[0]
    return (db.execute("PRAGMA journal_mode").fetchone()[0],
            db.execute("PRAGMA synchronous").fetchone()[0])


# -- counting and timing ------------------------------------------------------------


def count_sql(connections: list[sqlite3.Connection], action: Callable[[], None]) -> tuple[int, int]:
    """(statements, commits) the connections run during ``action``."""
    seen: list[str] = []
    for conn in connections:
        conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
    commits = sum(1 for s in seen if s.strip().upper().startswith(("COMMIT", "END")))
    return len(seen), commits


def timed(action: Callable[[], None], times: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(times):
        action()
    return time.perf_counter() - t0


def runs_per_s(action: Callable[[], None]) -> float:
    return RUNS / timed(action, RUNS)


class TimedConnection:
    """Wraps our engine's connection to time each statement, keyed by its first words."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._sync = "FULL"
        self.spent: dict[str, list[float]] = defaultdict(list)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        t0 = time.perf_counter()
        cursor = self._conn.execute(sql, *args)
        took = time.perf_counter() - t0
        key = " ".join(re.sub(r"\s+", " ", sql).split(" ")[:4])
        if sql.upper().startswith("PRAGMA SYNCHRONOUS="):
            self._sync = sql.split("=")[1]
        elif sql.upper() == "COMMIT":
            key = f"COMMIT (synchronous={self._sync})"
        self.spent[key].append(took)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def profile(engine: Engine, workflows: int = 5) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(workflows):
        ours(engine, Hundred)
    profiler.disable()
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(25)
        print(f"\n== cProfile of {workflows} x {STEPS}-step workflows (ours), top 25 by {key}")
        print(out.getvalue().split("\n", 4)[-1].rstrip())  # drop pstats' preamble

    real = engine.conn
    timed_conn = TimedConnection(real)
    engine.conn = timed_conn  # type: ignore[assignment]  # a stand-in with the same API
    try:
        wall = timed(lambda: ours(engine, Hundred), workflows)
    finally:
        engine.conn = real
    steps = workflows * STEPS
    print(f"\n== SQL time per step (ours, {workflows} x {STEPS}-step workflows, no profiler):"
          f" wall {ms(wall / steps)}/step")
    print(f"  {'statement':<52} {'calls/step':>10} {'ms/step':>8} {'of wall':>7}")
    for key, spent in sorted(timed_conn.spent.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {key[:52]:<52} {len(spent) / steps:>10.2f}"
              f" {sum(spent) / steps * 1000:>8.3f} {sum(spent) / wall:>7.0%}")
    total = sum(sum(v) for v in timed_conn.spent.values())
    print(f"  {'all SQL':<52} {'':>10} {total / steps * 1000:>8.3f} {total / wall:>7.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="also cProfile our side of (a)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        engine = Engine(root / "ours.db")
        launch_dbos(root / "dbos.sqlite")
        try:
            sides: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
                ("ours", lambda: ours(engine, Hundred), lambda: ours(engine, Three)),
                ("dbos", dbos_hundred, dbos_three),
            ]
            for _, hundred, three in sides:  # warm-up: schemas, imports, page cache
                hundred()
                three()
            ours_sql = count_sql([engine.conn], lambda: ours(engine, Hundred))
            dbos_sql = count_sql(_dbos_connections, dbos_hundred)

            per_step: dict[str, list[float]] = {"ours": [], "dbos": [], "raw": []}
            for r in range(ROUNDS_A):
                for name, hundred, _ in sides[r % 2:] + sides[:r % 2]:
                    per_step[name].append(timed(hundred) / STEPS)
                per_step["raw"].append(raw_commits(root / "raw.db", STEPS))
            rate: dict[str, list[float]] = {"ours": [], "dbos": []}
            for r in range(ROUNDS_B):
                for name, _, three in sides[r % 2:] + sides[:r % 2]:
                    rate[name].append(runs_per_s(three))
            ours_pragmas = (engine.conn.execute("PRAGMA journal_mode").fetchone()[0],
                            engine.conn.execute("PRAGMA synchronous").fetchone()[0])
            theirs_pragmas = dbos_settings()
            if args.profile:
                profile(engine)
        finally:
            DBOS.destroy()
            engine.close()

    o, raw = median(per_step["ours"]), median(per_step["raw"])
    # Ratios paired per round (the machine's speed drifts), then median [min-max].
    vs = [a / b for a, b in zip(per_step["ours"], per_step["dbos"], strict=True)]
    rates = [a / b for a, b in zip(rate["ours"], rate["dbos"], strict=True)]

    def per_s(value: float) -> str:
        return f"{value:.0f}/s"

    print_table(f"embedded engine vs DBOS Transact {_dbos_version()}, SQLite, in-process,"
                " interleaved, median [min-max]", [
        Row(f"(a) per step, {STEPS}-step workflow", spread(per_step["ours"], ms),
            spread(per_step["dbos"], ms), spread(vs), "<= 0.33x",
            verdict(median(vs) <= GOAL_RATIO)),
        Row(f"(b) {RUNS} three-step runs, runs/s", spread(rate["ours"], per_s),
            spread(rate["dbos"], per_s), spread(rates), "-", "info"),
        Row("ref: raw durable SQLite commit", ms(raw), "-", f"ours {o / raw:.1f} commits",
            "-", "info"),
        Row(f"SQL statements / step ({STEPS}-step run)", f"{ours_sql[0] / STEPS:.2f}",
            f"{dbos_sql[0] / STEPS:.2f}", "-", "-", "info"),
        Row(f"commits / step ({STEPS}-step run)", f"{ours_sql[1] / STEPS:.2f}",
            f"{dbos_sql[1] / STEPS:.2f}", "-", "-", "info"),
    ], [
        f"rounds: (a) {ROUNDS_A} x one workflow per side; (b) {ROUNDS_B} x {RUNS} runs per side;"
        " ratios paired per round",
        f"file settings: ours journal_mode={ours_pragmas[0]} synchronous={ours_pragmas[1]};"
        f" DBOS journal_mode={theirs_pragmas[0]} synchronous={theirs_pragmas[1]}"
        " (2 = FULL; ours drops to NORMAL for the not-fsynced attempt marker)",
        "DBOS left to itself uses journal_mode=DELETE, synchronous=FULL; WAL was added to match",
        "raw commit: WAL, synchronous=FULL, BEGIN IMMEDIATE, one INSERT, COMMIT",
        "statements/commits counted with sqlite3 trace callbacks in one extra untimed run",
    ])


def _dbos_version() -> str:
    from importlib.metadata import version

    return version("dbos")


if __name__ == "__main__":
    main()
