"""What the sandbox costs: a sandboxed light step against a bare bwrap of the same command
with the same mounts, and against an unsandboxed step; a sandboxed run's start against
an unsandboxed one's.

Sides, interleaved in every round (the order rotates):
  ci bwrap      the real CLI (`ci-runner run --sandbox bwrap --json`) on a pipeline of N
                sequential step.run(f"s{i}", ["true"]); the pipeline times its own loop.
  ci off        the same with --sandbox off.
  bare bwrap    subprocess.run(argv + ["true"]) N times, where argv is exactly the
                bubblewrap argv the broker gives that run's steps (dispatch.confine's
                step_wrap for a real worktree in the same CI_RUNNER_HOME).
  bare bwrap+cg the same, each call in a fresh pids cgroup it joins first and that is
                removed after: what a step with its own `pids=` pays (the kernel's
                cgroup migration and removal); other steps are born in their run's.
  bare          subprocess.run(["true"]) N times.
  start bwrap / start off   a whole `ci-runner run` of the same pipeline with N=0: the
                difference is what starting the pipeline process in its sandbox costs.

Goal (issue 10): ci-runner's overhead above the sandbox itself, (ci bwrap - bare bwrap)
per step, <= 2 ms.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import STEP_LOOP, Row, cli, git, make_repo, median, ms, print_table, run_env, verdict

N = 100
ROUNDS = 7
GOAL_OVERHEAD_S = 0.002

PIPELINE = STEP_LOOP


def cli_run(repo: Path, home: Path, n: int, mode: str) -> tuple[float, float]:
    """One real `ci-runner run`; returns (wall seconds, the pipeline's own loop seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run([*cli(), "run", "--json", "--sandbox", mode, "-C", str(repo),
                           "-p", f"n={n}"], env=run_env(home), capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"ci-runner run failed ({done.returncode}):\n{done.stderr}")
    record = json.loads(done.stdout)
    if n and {s["sandbox"] for s in record["steps"]} != {mode}:
        raise SystemExit(f"steps did not run in {mode}: {record['steps'][:2]}")
    with sqlite3.connect(home / "ci-runner.db") as db:
        (output,) = db.execute("SELECT output FROM instances WHERE id = ?",
                               (record["run_id"],)).fetchone()
    return wall, float(json.loads(output)["loop_s"])


def step_argv(repo: Path, home: Path) -> list[str]:
    """The broker's bwrap argv for a light step of a run of ``repo`` in ``home``."""
    import os

    os.environ["CI_RUNNER_HOME"] = str(home)
    from ci_runner.dispatch.confine import plan

    workspace = home / "worktrees" / "bench-bare"
    if not workspace.exists():
        git(repo, "worktree", "add", "--detach", "-q", str(workspace), "HEAD")
    confinement = plan({"run_id": "bench-bare", "workspace": str(workspace),
                        "repo": str(repo), "sandbox": "bwrap", "tenant": "bench"})
    confinement.prepare()
    return confinement.step_wrap(network=True)


def loop(argv: list[str], n: int, cwd: Path) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(argv, check=True, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       start_new_session=True)
    return (time.perf_counter() - t0) / n


def loop_cgroups(argv: list[str], n: int, cwd: Path) -> float:
    from ci_runner.executors.limits import StepCgroup

    t0 = time.perf_counter()
    for i in range(n):
        cgroup = StepCgroup(f"bench-{i}", 512)
        cgroup.create()
        subprocess.run(cgroup.wrap(argv), check=True, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       start_new_session=True)
        cgroup.remove(wait_s=1.0)
    return (time.perf_counter() - t0) / n


def spread(values: list[float]) -> str:
    return f"{ms(min(values))}..{ms(max(values))}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the sandbox's user walks down to the worktrees as root drops
        repo, _ = make_repo(root / "repo", {".ci/pipeline.py": PIPELINE, "README": "bench\n"})
        home = root / "home"
        for mode in ("bwrap", "off"):
            cli_run(repo, home, 1, mode)  # warm-up: the database, the page cache
        wrapped = [*step_argv(repo, home), "true"]
        workspace = home / "worktrees" / "bench-bare"

        got: dict[str, list[float]] = {k: [] for k in (
            "ci_bwrap", "ci_off", "bare_bwrap", "bare_bwrap_cg", "bare", "start_bwrap",
            "start_off")}
        sides: dict[str, Callable[[], Any]] = {
            "ci_bwrap": lambda: cli_run(repo, home, N, "bwrap")[1] / N,
            "ci_off": lambda: cli_run(repo, home, N, "off")[1] / N,
            "bare_bwrap": lambda: loop(wrapped, N, workspace),
            "bare_bwrap_cg": lambda: loop_cgroups(wrapped, N, workspace),
            "bare": lambda: loop(["true"], N, workspace),
            "start_bwrap": lambda: cli_run(repo, home, 0, "bwrap")[0],
            "start_off": lambda: cli_run(repo, home, 0, "off")[0],
        }
        names = list(sides)
        over_bwrap, over_cg, over_off = [], [], []
        for r in range(ROUNDS):
            order = names[r % len(names):] + names[:r % len(names)]
            results = {name: sides[name]() for name in order}
            for name, value in results.items():
                got[name].append(value)
            over_bwrap.append(results["ci_bwrap"] - results["bare_bwrap"])
            over_cg.append(results["ci_bwrap"] - results["bare_bwrap_cg"])
            over_off.append(results["ci_off"] - results["bare"])
            print(f"  round {r + 1}/{ROUNDS}: step bwrap {ms(results['ci_bwrap'])}, bare bwrap"
                  f" {ms(results['bare_bwrap'])}, in a cgroup {ms(results['bare_bwrap_cg'])},"
                  f" step off {ms(results['ci_off'])}, bare"
                  f" {ms(results['bare'])}, start bwrap {ms(results['start_bwrap'])}, start"
                  f" off {ms(results['start_off'])}", flush=True)

    m = {k: median(v) for k, v in got.items()}
    o_bwrap, o_cg = median(over_bwrap), median(over_cg)
    del o_cg  # a default step is born in its run's cgroup: bare bwrap is its peer
    rows = [
        Row("bare bwrap in a fresh pids cgroup", ms(m["bare_bwrap_cg"]),
            ms(m["bare_bwrap"]) + " bare bwrap", f"{m['bare_bwrap_cg'] / m['bare_bwrap']:.2f}x",
            "reference (pids=)", "info"),
        Row("sandboxed light step", ms(m["ci_bwrap"]), ms(m["bare_bwrap"]) + " bare bwrap",
            f"{m['ci_bwrap'] / m['bare_bwrap']:.2f}x", "-", "info"),
        Row("overhead above the sandbox/step", ms(o_bwrap),
            spread(over_bwrap) + " spread", "-", "<= 2 ms", verdict(o_bwrap <= GOAL_OVERHEAD_S)),
        Row("sandboxed vs unsandboxed step", ms(m["ci_bwrap"]), ms(m["ci_off"]) + " off",
            f"{m['ci_bwrap'] / m['ci_off']:.2f}x", "-", "info"),
        Row("unsandboxed overhead/step", ms(median(over_off)), ms(m["bare"]) + " bare",
            "-", "reference", "info"),
        Row("run start, sandboxed (N=0)", ms(m["start_bwrap"]), ms(m["start_off"]) + " off",
            f"{m['start_bwrap'] / m['start_off']:.2f}x", "-", "info"),
        Row("  difference", ms(m["start_bwrap"] - m["start_off"]),
            spread([a - b for a, b in zip(got["start_bwrap"], got["start_off"], strict=True)])
            + " spread", "-", "reference", "info"),
    ]
    print_table(f"the sandbox: {N} x step.run(['true']), {ROUNDS} interleaved rounds, medians",
                rows, [
        "bare bwrap = subprocess.run of the exact argv the broker gives the run's steps"
        " (same mounts, same namespaces), new session, piped output",
        "overhead = ci bwrap - bare bwrap, paired per round; spread = min..max over rounds",
        "the sandboxed run start spawns a fresh interpreter in bwrap; off forks the CLI",
        f"per-round stdev of the sandboxed step: {ms(statistics.pstdev(got['ci_bwrap']))}",
    ])


if __name__ == "__main__":
    main()
