"""Per-step overhead of a light step (`step.run(name, ["true"])`) in a real `ci-runner run`.

Ours: the real CLI (`ci-runner run --json`) in a temp git repo whose pipeline runs
N sequential `step.run(f"s{i}", ["true"])`. Peer: a bare `subprocess.run(["true"])`
loop of the same N in this process. The difference is what ci-runner adds per step:
the begin sent ahead, the durable commit of the result, the step log (created on
output only), the process group.

Two honest ways to get ours per step, both printed:
  in-run loop   the pipeline times its own loop of N steps (perf_counter around it,
                returned as the run's output): no CLI or child start-up inside.
  wall diff     (CLI wall time with N steps - CLI wall time with 0 steps) / N:
                does not trust the pipeline's clock, but carries the noise of two
                whole runs.
A raw durable SQLite commit (WAL, synchronous=FULL, BEGIN IMMEDIATE, one INSERT)
is measured alongside for reference: one step needs at least one of those. So is
an asyncio subprocess loop spawned the way the host executor spawns (new session,
piped output), to split the overhead into "spawning via asyncio" and "the rest".
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    STEP_LOOP,
    Row,
    cli,
    make_repo,
    median,
    ms,
    print_table,
    raw_commits,
    run_env,
    verdict,
)

N = 200
ROUNDS = 7
GOAL_OVERHEAD_S = 0.002

PIPELINE = STEP_LOOP


def cli_run(repo: Path, home: Path, n: int) -> tuple[float, float]:
    """One real `ci-runner run`; returns (wall seconds, the pipeline's own loop seconds)."""
    t0 = time.perf_counter()
    # --sandbox off: this measures the engine's cost per step against a bare `true`;
    # bench_sandbox.py measures a sandboxed step against a bare bwrap.
    done = subprocess.run([*cli(), "run", "--json", "--sandbox", "off", "-C", str(repo),
                           "-p", f"n={n}"],
                          env=run_env(home), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"ci-runner run failed ({done.returncode}):\n{done.stderr}")
    run_id = json.loads(done.stdout)["run_id"]
    with sqlite3.connect(home / "ci-runner.db") as db:
        (output,) = db.execute("SELECT output FROM instances WHERE id = ?", (run_id,)).fetchone()
    return wall, float(json.loads(output)["loop_s"])


def bare_loop(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    return (time.perf_counter() - t0) / n


def asyncio_loop(n: int) -> float:
    async def spawn_all() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                "true", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
            await proc.communicate()
        return (time.perf_counter() - t0) / n

    return asyncio.run(spawn_all())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo, _ = make_repo(root / "repo", {".ci/pipeline.py": PIPELINE, "README": "bench\n"})
        home = root / "home"
        cli_run(repo, home, 1)  # warm-up: creates the database, fills the page cache

        loop_step, diff_step, bare, commit, spawn = [], [], [], [], []
        over_loop, over_diff = [], []
        sides: dict[str, Callable[[], Any]] = {
            "cli_n": lambda: cli_run(repo, home, N),
            "cli_0": lambda: cli_run(repo, home, 0),
            "bare": lambda: bare_loop(N),
            "asyncio": lambda: asyncio_loop(N),
            "sqlite": lambda: raw_commits(root / "raw.db", N),
        }
        names = list(sides)
        for r in range(ROUNDS):
            # Rotate the order each round so no side always runs first.
            results = {name: sides[name]() for name in names[r % 5:] + names[:r % 5]}
            (wall_n, loop_s), (wall_0, _) = results["cli_n"], results["cli_0"]
            b, c = results["bare"], results["sqlite"]
            loop_step.append(loop_s / N)
            diff_step.append((wall_n - wall_0) / N)
            bare.append(b)
            commit.append(c)
            spawn.append(results["asyncio"])
            over_loop.append(loop_s / N - b)
            over_diff.append((wall_n - wall_0) / N - b)
            print(f"  round {r + 1}/{ROUNDS}: in-run {ms(loop_s / N)}/step, "
                  f"wall diff {ms((wall_n - wall_0) / N)}/step, bare {ms(b)}, commit {ms(c)}")

    b, c = median(bare), median(commit)
    o_loop, o_diff = median(over_loop), median(over_diff)
    rows = [
        Row("light step, in-run loop", ms(median(loop_step)), ms(b) + " bare",
            f"{median(loop_step) / b:.2f}x", "-", "info"),
        Row("light step, wall diff", ms(median(diff_step)), ms(b) + " bare",
            f"{median(diff_step) / b:.2f}x", "-", "info"),
        Row("overhead/step, in-run", ms(o_loop), ms(c) + " commit",
            f"{o_loop / c:.1f} commits", "<= 2 ms", verdict(o_loop <= GOAL_OVERHEAD_S)),
        Row("overhead/step, wall diff", ms(o_diff), ms(c) + " commit",
            f"{o_diff / c:.1f} commits", "<= 2 ms", verdict(o_diff <= GOAL_OVERHEAD_S)),
        Row("asyncio spawn (executor-like)", ms(median(spawn)), ms(b) + " bare",
            f"{median(spawn) / b:.2f}x", "reference", "info"),
        Row("raw durable SQLite commit", ms(c), "-", "-", "reference", "info"),
    ]
    print_table(f"light step overhead: {N} x step.run(['true']) via `ci-runner run --json`,"
                f" {ROUNDS} interleaved rounds, medians", rows, [
        "peer 'bare' = subprocess.run(['true']) in a loop of the same N, in this process",
        "overhead = ours - bare, paired per round, then the median; its ratio column says how"
        " many raw durable commits that overhead is worth",
        "in-run = the pipeline's own perf_counter around its loop (no start-up inside);"
        " wall diff = (wall(N) - wall(0)) / N of two whole CLI runs",
        "both include the first step's one-time lazy imports (executor, secrets), spread over N",
        "raw commit: WAL, synchronous=FULL, BEGIN IMMEDIATE, one INSERT, COMMIT",
    ])


if __name__ == "__main__":
    main()
