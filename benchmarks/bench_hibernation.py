"""Hibernation at scale: 1,000 runs waiting for approval at once, then `approve`.

Setup: N real runs (default 1,000; `--runs N`) of a small temp repo whose pipeline does
`step.do("build")`, `step.wait_for_approval("gate")`, `step.run("deploy", ["true"])`.
Each one really starts: a worktree is forked, a pipeline process runs `build`, reaches
the gate and the run hibernates (status waiting_for_event). They are made through the
Python API (`start_run` + `drive_run`, what `ci-runner run` calls) by 2 worker
processes, since the CLI costs a fresh interpreter per run; the time it took is printed.

Then, with all N waiting:
- the processes that are still ours: every process on the machine whose environment
  holds this benchmark's CI_RUNNER_HOME, or whose command line mentions ci_runner or
  ci-runner without pointing at another CI_RUNNER_HOME (this benchmark's own process is
  left out), and their total RSS. Goal: none, 0 bytes.
- what the waiting runs keep on disk: the SQLite db + wal, their worktrees, their logs.
- the wall time of `ci-runner pending --json` listing all N (informational).

Then a sample of the waiting runs (default 20; `--sample K`) is approved through the real
CLI, `ci-runner approve RUN --json`, interleaved with `python -c pass` (the peer, as in
bench_startup.py) and `ci-runner --help` (a reference: the CLI's own start-up). Ours is
from `time.time()` taken right before spawning `approve` to the `deploy` step's
`steps.started_at` in the journal (the same wall clock). Goal: under 300 ms. The
journal's timestamps split it into phases.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from _common import PY, Row, cli, make_repo, median, ms, print_table, run_env, verdict

RUNS = 1000
SAMPLE = 20
WORKERS = 2  # the machine has 2 cores
CHUNK = 25
GOAL_S = 0.300

PIPELINE = '''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.do("build", lambda: "built")
        await step.wait_for_approval("gate", message="ship it?")
        await step.run("deploy", ["true"])
'''
APPROVE_IMPORTS = ("import ci_runner.cli.app, ci_runner.cli.control, ci_runner.cli.report,"
                   " ci_runner.cli.view, ci_runner.dispatch.control, ci_runner.dispatch.runs")
CHILD_IMPORTS = ("import ci_runner.engine.child, ci_runner.dispatch.dispatcher,"
                 " ci_runner.dispatch.loader, ci_runner.dispatch.pipeline")
PHASES = ("CLI start -> approval stored (imports, decide)",
          "approval stored -> gate takes it (lease, pipeline process, replay)",
          "gate takes it -> deploy begins")


# -- creating the waiting runs (in worker processes) ---------------------------------------

def _worker_init(home: str) -> None:
    os.environ["CI_RUNNER_HOME"] = home  # paths.home() reads it at every call


def _create_chunk(repo: str, count: int) -> list[str]:
    """Start ``count`` runs the way `ci-runner run` does; each must hibernate at the gate."""
    from ci_runner.dispatch.runs import RunRequest, drive_run, open_engine, start_run, warm_child
    from ci_runner.engine.driver import new_instance_id

    ids = []
    with open_engine() as engine:
        for _ in range(count):
            run_id = new_instance_id()
            child = warm_child(run_id)
            try:
                start_run(engine, RunRequest(repo_path=Path(repo)), run_id=run_id)
            except BaseException:
                child.close()
                raise
            status = drive_run(engine, run_id, child=child)
            if status != "waiting_for_event":
                raise RuntimeError(f"run {run_id} ended {status}, not waiting at the gate")
            ids.append(run_id)
    return ids


def create_runs(repo: Path, home: Path, n: int) -> tuple[list[str], float]:
    chunks = [min(CHUNK, n - i) for i in range(0, n, CHUNK)]
    ids: list[str] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(WORKERS, mp_context=get_context("fork"),
                             initializer=_worker_init, initargs=(str(home),)) as pool:
        futures = [pool.submit(_create_chunk, str(repo), c) for c in chunks]
        for future in as_completed(futures):
            ids += future.result()
            if len(ids) % 100 < CHUNK or len(ids) == n:
                print(f"  created {len(ids)}/{n} waiting runs"
                      f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ids, time.perf_counter() - t0


# -- what the waiting runs hold ------------------------------------------------------------

def our_processes(home: Path) -> list[tuple[int, int, str]]:
    """(pid, rss bytes, cmdline) of every process that is ci-runner's or uses ``home``."""
    mine = f"CI_RUNNER_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        other_home = any(e.startswith(b"CI_RUNNER_HOME=") and e != mine for e in env)
        names_us = b"ci_runner" in cmd or b"ci-runner" in cmd
        if mine in env or (names_us and not other_home):
            rss = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                        if line.startswith("VmRSS:")), 0)  # kernel threads have none
            found.append((int(proc.name), rss, cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def disk_used(root: Path) -> tuple[int, int]:
    """(bytes allocated on disk, number of files) under ``root``."""
    used, files = 0, 0
    if not root.exists():
        return 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = (Path(dirpath) / name).lstat()
            used += st.st_blocks * 512
            files += name in filenames
    return used, files


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def pending_json(home: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run([*cli(), "pending", "--json"], env=run_env(home),
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, len(json.loads(done.stdout))


# -- approving ------------------------------------------------------------------------------

def approve(home: Path, run_id: str) -> list[float]:
    """Approve one run through the CLI; returns [to deploy start, *phases, whole command]."""
    t0 = time.time()
    done = subprocess.run([*cli(), "approve", run_id, "--json"], env=run_env(home),
                          capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if done.returncode != 0 or json.loads(done.stdout)["status"] != "complete":
        raise SystemExit(f"ci-runner approve {run_id} failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    with sqlite3.connect(home / "ci-runner.db") as db:
        stored, taken = db.execute(
            "SELECT created_at, consumed_at FROM events WHERE instance_id = ?",
            (run_id,)).fetchone()
        (begun,) = db.execute(
            "SELECT started_at FROM steps WHERE instance_id = ? AND name = 'deploy'",
            (run_id,)).fetchone()
    return [begun - t0, stored - t0, taken - stored, begun - taken, wall]


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return max(values)
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def bare_python(code: str = "pass") -> float:
    return timed([PY, "-c", code])


def check_pending(home: Path, n: int) -> float:
    took, listed = pending_json(home)
    if listed != n:
        raise SystemExit(f"`ci-runner pending --json` listed {listed} runs, not {n}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="waiting runs to create")
    parser.add_argument("--sample", type=int, default=SAMPLE, help="of those, how many to approve")
    args = parser.parse_args()
    n, k = args.runs, min(args.sample, args.runs)

    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo, _ = make_repo(root / "repo", {".ci/pipeline.py": PIPELINE, "README.md": "b\n"})
        home = root / "home"

        ids, made_s = create_runs(repo, home, n)
        with sqlite3.connect(home / "ci-runner.db") as db:
            waiting = db.execute("SELECT count(*) FROM instances WHERE status ="
                                 " 'waiting_for_event'").fetchone()[0]
        if waiting != n:
            raise SystemExit(f"only {waiting} of {n} runs are waiting for approval")

        time.sleep(0.5)  # let the last pipeline processes finish exiting
        procs = our_processes(home)
        db_b, wal_b = size(home / "ci-runner.db"), size(home / "ci-runner.db-wal")
        trees_b, trees_files = disk_used(home / "worktrees")
        admin_b, _ = disk_used(repo / ".git" / "worktrees")
        logs_b, _ = disk_used(home / "logs")

        bare_python()  # warm-up of the interpreter and the CLI, untimed
        pending_json(home)
        pend: list[float] = []
        pend_bare: list[float] = []
        for r in range(3):
            sides = [lambda: pend.append(check_pending(home, n)),
                     lambda: pend_bare.append(bare_python())]
            for side in sides[r % 2:] + sides[:r % 2]:
                side()

        sample = ids[:: max(1, n // k)][:k]
        ours: list[list[float]] = []
        bare: list[float] = []
        helps: list[float] = []
        approve_imports: list[float] = []
        child_imports: list[float] = []
        for r, run_id in enumerate(sample):
            sides = [lambda rid=run_id: ours.append(approve(home, rid)),
                     lambda: bare.append(bare_python()),
                     lambda: helps.append(timed([*cli(), "--help"], run_env(home))),
                     lambda: approve_imports.append(bare_python(APPROVE_IMPORTS)),
                     lambda: child_imports.append(bare_python(CHILD_IMPORTS))]
            turn = r % len(sides)
            for side in sides[turn:] + sides[:turn]:  # rotate: nobody always goes first
                side()
            print(f"  approval {r + 1}/{k}: deploy began after {ms(ours[-1][0])},"
                  f" python -c pass {ms(bare[-1])}", flush=True)
        time.sleep(0.5)
        procs_after = our_processes(home)
        with sqlite3.connect(home / "ci-runner.db") as db:
            still = db.execute("SELECT count(*) FROM instances WHERE status ="
                               " 'waiting_for_event'").fetchone()[0]

    total = [o[0] for o in ours]
    mid, b = median(total), median(bare)
    rows = [
        Row(f"creating {n} waiting runs ({WORKERS} workers)", f"{made_s:.1f} s",
            "-", f"{made_s / n * 1000:.0f} ms per run", "-", "info"),
        Row(f"processes left with {n} waiting", f"{len(procs)}", "-", "-", "0",
            verdict(not procs)),
        Row("  their total RSS", mb(sum(p[1] for p in procs)), "-", "-", "0 bytes",
            verdict(not sum(p[1] for p in procs))),
        Row("  processes left after the approvals", f"{len(procs_after)}", "-", "-", "0",
            verdict(not procs_after)),
        Row("SQLite db + wal", f"{mb(db_b)} + {mb(wal_b)}", "-",
            f"{(db_b + wal_b) / n / 1000:.1f} kB per run", "-", "info"),
        Row("worktrees kept for waiting runs", mb(trees_b), "-",
            f"{trees_b / n / 1000:.1f} kB, {trees_files / n:.0f} files per run", "-", "info"),
        Row("  + git admin dirs (repo/.git/worktrees)", mb(admin_b), "-",
            f"{admin_b / n / 1000:.1f} kB per run", "-", "info"),
        Row("  + run logs", mb(logs_b), "-", f"{logs_b / n / 1000:.1f} kB per run", "-",
            "info"),
        Row(f"`ci-runner pending --json` ({n} pending)", ms(median(pend)),
            ms(median(pend_bare)) + " python -c pass",
            f"{median(pend) / median(pend_bare):.1f}x", "-", "info"),
        Row("approve -> deploy step begins (median)", ms(mid), ms(b) + " python -c pass",
            f"{mid / b:.1f}x", "<= 300 ms", verdict(mid <= GOAL_S)),
        Row("approve -> deploy step begins (p90)", ms(p90(total)), "-", "-", "<= 300 ms",
            verdict(p90(total) <= GOAL_S)),
    ]
    for i, phase in enumerate(PHASES, start=1):
        part = median([o[i] for o in ours])
        rows.append(Row(f"  {phase}", ms(part), "-", f"{part / mid:.0%} of total", "-",
                        "info"))
    whole = median([o[-1] for o in ours])
    rows.append(Row("  whole `approve --json` command (to exit)", ms(whole), "-", "-", "-",
                    "info"))
    for label, times in (("ref: `ci-runner --help`", helps),
                         ("ref: python importing the approve path", approve_imports),
                         ("ref: python importing the pipeline process", child_imports)):
        t = median(times)
        rows.append(Row(label, ms(t), ms(b) + " python -c pass", f"{t / b:.1f}x", "-", "info"))
    notes = [
        "processes: this benchmark's CI_RUNNER_HOME in the environment, or ci_runner /"
        " ci-runner in the command line (not another home's); the benchmark itself excluded",
        f"approvals: {k} runs spread over the {n}, each interleaved with `python -c pass`,"
        f" `ci-runner --help` and the two import references; {still} runs still wait after",
        "ours starts at time.time() just before spawning `ci-runner approve RUN --json` and"
        " ends at the deploy step's steps.started_at (same wall clock)",
        "phases come from the journal (events.created_at/consumed_at, steps.started_at);"
        " each is its own median, so they need not add up exactly",
        "the approve path's pipeline process is spawned after the approval is stored (it is"
        " not started early as `ci-runner run` does), so its start-up is on the critical path",
        "disk: allocated blocks (du), not apparent sizes",
    ]
    for pid, rss, cmd in procs + procs_after:
        notes.append(f"left: pid {pid}, {mb(rss)}: {cmd[:120]}")
    print_table(f"hibernation: {n} runs waiting for approval, {k} approved through the CLI,"
                " medians", rows, notes)


if __name__ == "__main__":
    main()
