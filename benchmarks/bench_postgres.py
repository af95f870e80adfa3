"""The store on PostgreSQL against SQLite, and a fleet's claims per second.

(a) one workflow of 100 trivial durable `step.do` calls, driven in this process by an
    `Engine` on a PostgreSQL database (a real server started here: initdb + pg_ctl in a
    temporary folder, unix socket, fsync=on, synchronous_commit=on, full_page_writes=on)
    and on a SQLite file (WAL, synchronous=FULL), per step. Rounds alternate the two
    sides, rotating who goes first.
(b) run claims per second (`store.claims.claim`, FOR UPDATE SKIP LOCKED, one run per
    claim) with 1, 2, 4 and 8 worker processes, each with its own connection, taking
    CLAIM_RUNS queued runs of 16 repos until none is left; once with no slot rows
    (no limit), once with each repo's concurrency at 2 (each claimed run ends at once,
    so its slot frees). Rounds rotate the order of the worker counts.

Figures are medians, with the spread (min-max) of the rounds. The server, the two
cores and the benchmark share the machine.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, Row, median, ms, print_table, verdict

# This checkout's ci_runner (an editable install may point at another), and the tests'
# server helper: a real PostgreSQL, started as the tests start it.
sys.path.insert(0, str(ROOT))
from ci_runner.engine.driver import Engine
from tests.pgserver import running_server

STEPS = 100
ROUNDS = 21
CLAIM_RUNS = 400
WORKERS = (1, 2, 4, 8)
CLAIM_ROUNDS = 5
REPOS = 16
GOAL_RATIO = 1.5


class Hundred:
    async def run(self, event, step):
        for i in range(STEPS):
            await step.do(f"s{i}", lambda i=i: i)


def per_step(engine: Engine) -> float:
    iid = engine.create(Hundred, {}, tenant="bench")
    t0 = time.perf_counter()
    status = engine.drive(iid, workflow=Hundred)
    took = time.perf_counter() - t0
    assert status == "complete", status
    return took / STEPS


def _claimer(url: str, index: int, limited: bool, start: mp.Event, counts: mp.Queue) -> None:
    from ci_runner.store import claims, connect
    from ci_runner.store import journal as j

    conn = connect(url)
    got = 0
    start.wait()
    while True:
        taken = claims.claim(conn, owner=f"bench{index}:1:1", ttl_s=60, limit=1)
        if not taken:  # others hold the rest for a moment, or nothing is left
            left = conn.execute("SELECT count(*) FROM instances WHERE status = 'queued'")
            if int(left.fetchone()[0]) == 0:
                break
            continue
        got += len(taken)
        if limited:
            for c in taken:
                j.Journal(conn, c.run_id, c.epoch).finish("complete", output=None)
    counts.put(got)
    conn.close()


def claims_per_s(server: object, workers: int, *, limited: bool) -> float:
    from ci_runner.store import claims, connect
    from ci_runner.store.db import immediate

    url = server.create_database()  # type: ignore[attr-defined]
    conn = connect(url)
    if limited:
        claims.set_limits(conn, {f"repo{r}": 2 for r in range(REPOS)})
    with immediate(conn):
        for i in range(CLAIM_RUNS):
            conn.execute(
                "INSERT INTO instances (id, tenant, workflow, payload, status, created_at,"
                " updated_at) VALUES (?, ?, 'w:W', '{}', 'queued', ?, ?)",
                (f"run{i:05d}", f"repo{i % REPOS}", float(i), float(i)))
    conn.close()
    ctx = mp.get_context("fork")
    start, counts = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, w, limited, start, counts))
             for w in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # every process connected and waiting
    t0 = time.perf_counter()
    start.set()
    total = sum(counts.get(timeout=300) for _ in procs)
    took = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=60)
    assert total == CLAIM_RUNS, (total, CLAIM_RUNS)  # each run claimed exactly once
    server.drop_database(url)  # type: ignore[attr-defined]
    return total / took


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp, \
            running_server(fsync=True) as server:
        pg = Engine(server.create_database("steps"))
        lite = Engine(Path(tmp) / "ours.db")
        try:
            sides = [("postgresql", pg), ("sqlite", lite)]
            for _, engine in sides:  # warm-up: schemas, imports, caches
                per_step(engine)
            times: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
            for r in range(ROUNDS):
                for name, engine in sides[r % 2:] + sides[:r % 2]:
                    times[name].append(per_step(engine))
        finally:
            pg.close()
            lite.close()
        rates: dict[tuple[int, bool], list[float]] = {}
        for r in range(CLAIM_ROUNDS):
            order = WORKERS[r % len(WORKERS):] + WORKERS[:r % len(WORKERS)]
            for workers in order:
                for limited in (False, True):
                    rates.setdefault((workers, limited), []).append(
                        claims_per_s(server, workers, limited=limited))

    p, s = median(times["postgresql"]), median(times["sqlite"])
    rows = [Row(f"(a) durable step.do, {STEPS}-step workflow, per step", ms(p), ms(s),
                f"{p / s:.2f}x", f"<= {GOAL_RATIO}x", verdict(p / s <= GOAL_RATIO))]
    for workers in WORKERS:
        free, slots = median(rates[(workers, False)]), median(rates[(workers, True)])
        rows.append(Row(f"(b) claims/s, {workers} worker{'s' * (workers > 1)}",
                        f"{free:.0f}/s", f"{slots:.0f}/s (slots)", "-", "-", "info"))
    notes = [
        f"(a) peer = SQLite; {ROUNDS} interleaved rounds; spread PostgreSQL"
        f" {spread([t * 1000 for t in times['postgresql']], '{:.3f}')} ms, SQLite"
        f" {spread([t * 1000 for t in times['sqlite']], '{:.3f}')} ms per step",
        f"(b) ours = no slot rows, peer column = each of {REPOS} repos at concurrency 2"
        f" (a claimed run ends at once); {CLAIM_RUNS} runs, {CLAIM_ROUNDS} rounds; spread: "
        + "; ".join(f"{w}: {spread(rates[(w, False)])} / {spread(rates[(w, True)])}"
                    for w in WORKERS),
        "PostgreSQL 15 on a unix socket on this machine, fsync=on, synchronous_commit=on;"
        " the benchmark's processes and the server share its cores",
    ]
    print_table("PostgreSQL store vs SQLite, and SKIP LOCKED claims per second", rows, notes)


if __name__ == "__main__":
    main()
