"""Hibernation at scale: a curve over the number of runs waiting for approval at once
(10, 100, 1,000 by default; `--runs 10,100,1000,10000`), then `approve`.

Setup: at each point, real runs of a small temp repo, added to those made for the
points before, whose pipeline does
`step.do("build")`, `step.wait_for_approval("gate")`, `step.run("deploy", ["true"])`.
Each one really starts: a worktree is forked, a pipeline process runs `build`, reaches
the gate and the run hibernates (status waiting_for_event). They are made through the
Python API (`start_run` + `drive_run`, what `ci-runner run` calls) by 2 worker
processes, since the CLI costs a fresh interpreter per run; the time it took is printed.

Then, at each point, with all of them waiting:
- the processes that are still ours: every process on the machine whose environment
  holds this benchmark's CI_RUNNER_HOME, or whose command line or working directory
  names the benchmark's temp folder (sandboxed ones have a scrubbed environment; this
  benchmark's own process is left out), and their total RSS. Goal: none, 0 bytes.
- what the waiting runs keep on disk: the SQLite db + wal, their worktrees, their logs.
- the wall time of `ci-runner pending --json` listing all N (informational).

Then a sample of the waiting runs (default 7; `--sample K`, at least 5) is approved through the real
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

from _common import PY, Row, cli, make_repo, median, ms, print_table, run_env, spread, verdict

RUNS = (10, 100, 1000)
SAMPLE = 7
PENDING_ROUNDS = 5
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
    """(pid, rss bytes, cmdline) of every process of this benchmark's runs: its
    CI_RUNNER_HOME in the environment, or the benchmark's folder (which holds the home
    and the repo) in the command line or as the working directory. A sandboxed process
    has a scrubbed environment but its binds name the folder; other engineers' ci-runner
    processes on a shared machine name none of it."""
    mine = f"CI_RUNNER_HOME={home}".encode()
    folder = str(home.parent)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
            cwd = str((proc / "cwd").readlink())
        except OSError:
            continue
        if mine in env or folder.encode() in cmd or cwd.startswith(folder):
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


def measure_level(home: Path, repo: Path, n: int, waiting_ids: list[str], k: int
                  ) -> tuple[list[Row], list[str], dict[str, list[float]]]:
    """Rows for one point of the curve: ``n`` runs made so far, ``waiting_ids`` of them
    waiting; ``k`` of those approved through the CLI (they leave the waiting set)."""
    w = len(waiting_ids)
    with sqlite3.connect(home / "ci-runner.db") as db:
        waiting = db.execute("SELECT count(*) FROM instances WHERE status ="
                             " 'waiting_for_event'").fetchone()[0]
    if waiting != w:
        raise SystemExit(f"{waiting} runs are waiting for approval, not {w}")

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
    for r in range(PENDING_ROUNDS):
        sides = [lambda: pend.append(check_pending(home, w)),
                 lambda: pend_bare.append(bare_python())]
        for side in sides[r % 2:] + sides[:r % 2]:
            side()

    sample = waiting_ids[:: max(1, w // k)][:k]
    ours: list[list[float]] = []
    refs: dict[str, list[float]] = {"bare": [], "help": [], "approve_imports": [],
                                    "child_imports": []}
    for r, run_id in enumerate(sample):
        sides = [lambda rid=run_id: ours.append(approve(home, rid)),
                 lambda: refs["bare"].append(bare_python()),
                 lambda: refs["help"].append(timed([*cli(), "--help"], run_env(home))),
                 lambda: refs["approve_imports"].append(bare_python(APPROVE_IMPORTS)),
                 lambda: refs["child_imports"].append(bare_python(CHILD_IMPORTS))]
        turn = r % len(sides)
        for side in sides[turn:] + sides[:turn]:  # rotate: nobody always goes first
            side()
        print(f"  {n} made: approval {r + 1}/{k}: deploy began after {ms(ours[-1][0])},"
              f" python -c pass {ms(refs['bare'][-1])}", flush=True)
    for run_id in sample:
        waiting_ids.remove(run_id)
    time.sleep(0.5)
    procs_after = our_processes(home)

    total = [o[0] for o in ours]
    at = f"{w:,} waiting:"
    rows = [
        Row(f"{at} processes left / their RSS", f"{len(procs)} / {mb(sum(p[1] for p in procs))}",
            "-", "-", "0 / 0 bytes", verdict(not procs)),
        Row(f"{at} processes left after {k} approvals", f"{len(procs_after)}", "-", "-", "0",
            verdict(not procs_after)),
        Row(f"{at} SQLite db + wal", f"{mb(db_b)} + {mb(wal_b)}", "-",
            f"{(db_b + wal_b) / n / 1000:.1f} kB per run made", "-", "info"),
        Row(f"{at} worktrees + git admin dirs + logs", mb(trees_b + admin_b + logs_b), "-",
            f"{(trees_b + admin_b + logs_b) / max(w, 1) / 1000:.1f} kB,"
            f" {trees_files / max(w, 1):.0f} files per waiting run", "-", "info"),
        Row(f"{at} `pending --json`", spread(pend, ms), spread(pend_bare, ms) + " pass",
            spread([a / b for a, b in zip(pend, pend_bare, strict=True)]), "-", "info"),
        Row(f"{at} approve -> deploy begins", spread(total, ms),
            spread(refs["bare"], ms) + " pass",
            spread([a / b for a, b in zip(total, refs["bare"], strict=True)]),
            "<= 300 ms", verdict(median(total) <= GOAL_S)),
        Row(f"{at}   p90 of those", ms(p90(total)), "-", "-", "<= 300 ms",
            verdict(p90(total) <= GOAL_S)),
    ]
    for i, phase in enumerate(PHASES, start=1):
        part = median([o[i] for o in ours])
        rows.append(Row(f"{at}   {phase}", ms(part), "-",
                        f"{part / median(total):.0%} of total", "-", "info"))
    notes = [f"left ({w} waiting): pid {pid}, {mb(rss)}: {cmd[:120]}"
             for pid, rss, cmd in procs + procs_after]
    return rows, notes, refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(map(str, RUNS)),
                        help="the curve's points: waiting runs made so far (default"
                             " %(default)s; 10000 takes about half an hour)")
    parser.add_argument("--sample", type=int, default=SAMPLE,
                        help="approvals through the CLI at each point (at least 5)")
    args = parser.parse_args()
    levels = sorted({int(v) for v in args.runs.split(",") if v})
    k = max(5, args.sample)

    rows: list[Row] = []
    notes: list[str] = []
    refs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        repo, _ = make_repo(root / "repo", {".ci/pipeline.py": PIPELINE, "README.md": "b\n"})
        home = root / "home"
        made = 0
        waiting_ids: list[str] = []
        for level in levels:
            # Each point adds runs to the same home: what was approved before is done.
            more = level - made
            if more > 0:
                ids, made_s = create_runs(repo, home, more)
                waiting_ids += ids
                rows.append(Row(f"creating {more:,} more waiting runs ({WORKERS} workers)",
                                f"{made_s:.1f} s", "-",
                                f"{made_s / more * 1000:.0f} ms per run", "-", "info"))
                made = level
            got_rows, got_notes, got_refs = measure_level(
                home, repo, made, waiting_ids, min(k, len(waiting_ids)))
            rows += got_rows
            notes += got_notes
            for key, values in got_refs.items():
                refs.setdefault(key, []).extend(values)

    b = refs["bare"]
    for label, key in (("ref: `ci-runner --help`", "help"),
                       ("ref: python importing the approve path", "approve_imports"),
                       ("ref: python importing the pipeline process", "child_imports")):
        rows.append(Row(label, spread(refs[key], ms), spread(b, ms) + " pass",
                        spread([t / p for t, p in zip(refs[key], b, strict=True)]), "-",
                        "info"))
    notes = [
        "a curve: each point adds waiting runs to the same home; at each, K of the waiting"
        " runs (spread over them) are approved through the CLI, interleaved with `python -c"
        " pass`, `ci-runner --help` and the two import references",
        "processes: this benchmark's CI_RUNNER_HOME in the environment, or its temp folder"
        " in the command line or as the working directory; the benchmark itself excluded",
        "ours starts at time.time() just before spawning `ci-runner approve RUN --json` and"
        " ends at the deploy step's steps.started_at (same wall clock)",
        "phases come from the journal (events.created_at/consumed_at, steps.started_at);"
        " each is its own median, so they need not add up exactly",
        "the approve path's pipeline process is spawned after the approval is stored (it is"
        " not started early as `ci-runner run` does), so its start-up is on the critical path",
        "disk: allocated blocks (du), not apparent sizes",
        *notes,
    ]
    print_table(f"hibernation: a curve over {', '.join(f'{v:,}' for v in levels)} waiting"
                f" runs, {k} approved through the CLI at each, median [min-max]", rows, notes)


if __name__ == "__main__":
    main()
