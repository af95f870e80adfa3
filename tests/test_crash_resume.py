"""Crash and resume with real processes: SIGKILL the runner again and again, resume it
each time, and check that every step committed exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV

STEPS = 24

PIPELINE = """
import os, time
from ci_runner import Pipeline

LEDGER = os.environ["CRASH_LEDGER"]

class CI(Pipeline):
    async def run(self, event, step):
        for i in range(__STEPS__):
            if i % 3 == 2:
                # A light step: a command appends, then dawdles so kills land mid-step.
                cmd = f"echo cmd{i} >> {LEDGER}; sleep 0.35"
                await step.run(f"cmd{i}", ["sh", "-c", cmd])
            else:
                def body(i=i):
                    with open(LEDGER, "a") as f:
                        f.write(f"do{i}\\n")
                    time.sleep(0.35)
                    return i
                await step.do(f"do{i}", body)
        return "done"
""".replace("__STEPS__", str(STEPS))


def step_names() -> list[str]:
    return [f"cmd{i}" if i % 3 == 2 else f"do{i}" for i in range(STEPS)]


@pytest.mark.slow
def test_twenty_kills_in_a_row_lose_nothing(repo_with, home: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    repo = repo_with(PIPELINE)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "CRASH_LEDGER": str(ledger)}
    rng = random.Random(20261122)
    kills = 0
    run_id = None
    in_flight: Counter[str] = Counter()
    for _ in range(200):
        args = ["run", "--json"] if run_id is None else ["resume", run_id, "--json"]
        proc = subprocess.Popen([sys.executable, "-m", "ci_runner", *args], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if kills < 20:
            time.sleep(rng.uniform(0.25, 0.9))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                # A step's start is committed before its body runs, so what the dead
                # runner left 'running' is exactly what was in flight at the kill.
                in_flight.update(_running_steps(home))
        _out, err = proc.communicate(timeout=120)
        if run_id is None:
            run_id = _only_run(home)  # None when killed before the run was stored
        if proc.returncode == 0 and kills >= 20:
            break
        assert proc.returncode in (0, -9), err.decode()
    else:
        pytest.fail("the run did not complete")
    assert kills >= 20

    db = sqlite3.connect(home / "ci-runner.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    status = db.execute("SELECT status FROM instances WHERE id = ?", (run_id,)).fetchone()[0]
    assert status == "complete"
    rows = db.execute("SELECT name, status, attempts FROM steps WHERE instance_id = ?",
                      (run_id,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(step_names())  # one committed row per step
    assert all(r[1] == "complete" for r in rows)
    counts = Counter(ledger.read_text().split())
    for name in step_names():
        assert counts[name] >= 1, name
        # Only a step that was in flight at a kill may have run more than once.
        assert counts[name] <= 1 + in_flight[name], (name, counts[name], in_flight[name])
    attempts = {r[0]: r[2] for r in rows}
    for name in step_names():
        assert attempts[name] >= counts[name], (name, attempts[name], counts[name])
    # No light-step process of a killed runner is left behind.
    leftovers = subprocess.run(["pgrep", "-f", f"echo cmd.* >> {ledger}"],
                               capture_output=True, text=True, check=False).stdout
    assert leftovers.strip() == ""


def _only_run(home: Path) -> str | None:
    try:
        db = sqlite3.connect(home / "ci-runner.db", timeout=5)
        rows = db.execute("SELECT id FROM instances").fetchall()
        db.close()
    except sqlite3.Error:
        return None
    assert len(rows) <= 1
    return str(rows[0][0]) if rows else None


def _running_steps(home: Path) -> list[str]:
    try:
        db = sqlite3.connect(home / "ci-runner.db", timeout=5)
        rows = db.execute("SELECT name FROM steps WHERE status = 'running'").fetchall()
        db.close()
    except sqlite3.Error:
        return []
    return [r[0] for r in rows]


KILLER = """
import os, signal
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.do("killer", lambda: os.kill(os.getppid(), signal.SIGKILL))
"""


@pytest.mark.slow
def test_a_step_that_keeps_killing_its_runner_is_not_run_forever(repo_with, home: Path):
    """Each takeover runs the step again after a pause that doubles, a few times at
    most; then the step fails saying why (it used to run sixty times a minute)."""
    repo = repo_with(KILLER)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "CI_RUNNER_SANDBOX": "off"}
    codes, started = [], time.monotonic()
    args = ["run", "--json"]
    for _ in range(8):
        done = subprocess.run([sys.executable, "-m", "ci_runner", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
        codes.append(done.returncode)
        if done.returncode != -9:
            break
        args = ["resume", _only_run(home) or "", "--json"]
    assert codes[:4] == [-9, -9, -9, -9] and codes[4] == 1, codes  # 1 run + 3 reruns
    db = sqlite3.connect(home / "ci-runner.db")
    status, error = db.execute("SELECT status, error FROM instances").fetchone()
    assert status == "errored" and "runner died 4 times in a row" in error, error
    assert time.monotonic() - started >= 1 + 2 + 4  # the pauses between reruns
