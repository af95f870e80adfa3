"""Start-up latency: from launching `ci-runner run` to its first step's command running.

Ours: the wall-clock time (time.time(), the same clock in every process) taken just
before spawning `ci-runner run --json` in a small temp repo, and the time the first
step's command prints: the pipeline's first step is `step.run("first", ["date",
"+%s.%N"])`. `date` starts in about a millisecond, so the figure is ci-runner's
own start-up (a `python3 -c ...` step would add a second interpreter's start-up).
Peer: the bare wall time of `python -c pass` with the same interpreter, measured
interleaved, so the ratio says how many bare interpreter starts ci-runner costs.
A third interleaved side, a bare interpreter that only imports what `ci-runner run`
imports, shows how much of the start-up is imports.
The journal's timestamps split ours into phases.

Issue 16's goals, interleaved in the same rounds: `ci-runner --help` and `ci-runner
runs` (in the same repo, listing its runs) each within 2.5x of `python -c pass`, and
the run's first step within 2x of a bare `git worktree add --detach` of the same repo
(its worktree removed untimed) plus `python -c pass` of the same round. Ratios are
paired per round and printed as median [min-max]. One more run, untimed, goes through
a `git` shim on PATH that logs each git process, to count those before and after the
checkout.

Runs use the default sandbox (auto: bubblewrap here); CI_RUNNER_SANDBOX=off measures
the unsandboxed run (the pipeline process forked instead of started in bwrap).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from _common import PY, Row, cli, make_repo, median, ms, print_table, run_env, spread, verdict

ROUNDS = 10
GOAL_S = 0.300
GOAL_LISTING = 2.5  # --help and runs, times python -c pass
GOAL_RUN = 2.0  # first step, times git worktree add + python -c pass

PIPELINE = '''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("first", ["date", "+%s.%N"])
'''
PHASES = ("CLI start -> run stored (imports, git, worktree)",
          "run stored -> lease taken",
          "lease taken -> first step begins (pipeline process)",
          "first step begins -> its command runs (spawn)")


def one_run(repo: Path, home: Path) -> list[float]:
    """Launch one run; returns [total, *phases] in seconds."""
    t0 = time.time()
    done = subprocess.run([*cli(), "run", "--json", "-C", str(repo)],
                          env=run_env(home), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ci-runner run failed ({done.returncode}):\n{done.stderr}")
    run_id = json.loads(done.stdout)["run_id"]
    log = (home / "logs" / run_id / "first.log").read_text()
    stamp = float(re.findall(r"^\d+\.\d+$", log, re.MULTILINE)[0])
    with sqlite3.connect(home / "ci-runner.db") as db:
        created, started = db.execute(
            "SELECT created_at, started_at FROM instances WHERE id = ?", (run_id,)).fetchone()
        (begun,) = db.execute(
            "SELECT started_at FROM steps WHERE instance_id = ? AND name = 'first'",
            (run_id,)).fetchone()
    return [stamp - t0, created - t0, started - created, begun - started, stamp - begun]


CLI_IMPORTS = ("import ci_runner.cli.app, ci_runner.cli.report, ci_runner.cli.view,"
               " ci_runner.dispatch.runs, ci_runner.workspace")


def bare_python(code: str = "pass") -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", code], check=True)
    return time.perf_counter() - t0


def timed_cli(repo: Path, home: Path, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([*cli(), *args], cwd=repo, env=run_env(home), check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def worktree_add(repo: Path, dest: Path) -> float:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                         capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(dest), sha],
                   cwd=repo, check=True)
    took = time.perf_counter() - t0
    subprocess.run(["git", "worktree", "remove", "--force", str(dest)], cwd=repo, check=True)
    return took


def git_processes(repo: Path, home: Path, shim: Path) -> tuple[int, int]:
    """(git processes before the checkout, after it) of one `ci-runner run`."""
    shim.mkdir(exist_ok=True)
    log = shim / "log"
    real = shutil.which("git")
    (shim / "git").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    env = {**run_env(home), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([*cli(), "run", "--json", "-C", str(repo)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    calls = log.read_text().splitlines()
    at = next(i for i, c in enumerate(calls) if " worktree add " in c)
    return at, len(calls) - at - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        files = {".ci/pipeline.py": PIPELINE, "README.md": "bench\n"}
        files |= {f"src/mod{i}.py": f"X = {i}\n" for i in range(20)}
        repo, _ = make_repo(root / "repo", files)
        home = root / "home"
        one_run(repo, home)  # warm-up: creates the database, fills the page cache
        bare_python()

        timed_cli(repo, home, "--help")
        ours: list[list[float]] = []
        bare: list[float] = []
        imports: list[float] = []
        helps: list[float] = []
        listings: list[float] = []
        adds: list[float] = []
        for r in range(rounds):
            sides = [lambda: ours.append(one_run(repo, home)),
                     lambda: bare.append(bare_python()),
                     lambda: imports.append(bare_python(CLI_IMPORTS)),
                     lambda: helps.append(timed_cli(repo, home, "--help")),
                     lambda: listings.append(timed_cli(repo, home, "runs")),
                     lambda r=r: adds.append(worktree_add(repo, root / f"wt{r}"))]
            for side in sides[r % 6:] + sides[:r % 6]:  # rotate: nobody always goes first
                side()
            print(f"  round {r + 1}/{rounds}: first step after {ms(ours[-1][0])},"
                  f" python -c pass {ms(bare[-1])}, --help {ms(helps[-1])},"
                  f" runs {ms(listings[-1])}, git worktree add {ms(adds[-1])}")
        before, after = git_processes(repo, home, root / "shim")

    total, b = median([o[0] for o in ours]), median(bare)
    rows = [Row("command -> first step running", ms(total), ms(b) + " python -c pass",
                f"{total / b:.1f}x", "<= 300 ms", verdict(total <= GOAL_S))]
    for i, phase in enumerate(PHASES, start=1):
        part = median([o[i] for o in ours])
        rows.append(Row(f"  {phase}", ms(part), "-", f"{part / total:.0%} of total", "-",
                        "info"))
    imp = median(imports)
    rows.append(Row("ref: python importing the CLI path", ms(imp), ms(b) + " python -c pass",
                    f"{imp / b:.1f}x", "-", "info"))

    def per_round(ours_side: list[float], peer: list[float]) -> list[float]:
        return [o / p for o, p in zip(ours_side, peer, strict=True)]

    firsts = [o[0] for o in ours]
    floor = [a + p for a, p in zip(adds, bare, strict=True)]
    for label, got, peer, peer_name, goal in (
            ("ci-runner --help", helps, bare, "python -c pass", GOAL_LISTING),
            ("ci-runner runs", listings, bare, "python -c pass", GOAL_LISTING),
            ("run -> first step", firsts, floor, "worktree add + pass", GOAL_RUN)):
        ratios = per_round(got, peer)
        rows.append(Row(f"{label} vs {peer_name}", spread(got, ms), spread(peer, ms),
                        spread(ratios), f"<= {goal}x", verdict(median(ratios) <= goal)))
    rows.append(Row("git processes before the checkout / after", f"{before} / {after}",
                    "-", "-", "-", "info"))
    print_table(f"start-up: `ci-runner run --json` in a 22-file repo, {rounds} interleaved"
                " rounds, medians [min-max]", rows, [
        "ours ends when the first step's command (`date +%s.%N`) prints its wall-clock time",
        "peer: wall time of `python -c pass` with the same interpreter, interleaved",
        "phases come from the journal (instances.created_at/started_at, steps.started_at);"
        " each is its own median, so they need not add up exactly",
        "goal rows: ratios paired per round (ours / peer in the same round), median"
        " [min-max]; runs lists the repo's runs so far (up to its default 20)",
    ])


if __name__ == "__main__":
    main()
