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
                # A light step: says when it starts and ends, and whose runner (its
                # parent) started it; dawdles between, so kills land mid-step.
                line = f"cmd{i} $PPID >> {LEDGER}"
                await step.run(f"cmd{i}", ["sh", "-c",
                               f"echo start {line}; sleep 0.35; echo end {line}"])
            else:
                def body(i=i):
                    # The pipeline process's parent is its runner too.
                    with open(LEDGER, "a") as f:
                        f.write(f"start do{i} {os.getppid()}\\n")
                    time.sleep(0.35)
                    with open(LEDGER, "a") as f:
                        f.write(f"end do{i} {os.getppid()}\\n")
                    return i
                await step.do(f"do{i}", body)
        return "done"
""".replace("__STEPS__", str(STEPS))


def step_names() -> list[str]:
    return [f"cmd{i}" if i % 3 == 2 else f"do{i}" for i in range(STEPS)]


@pytest.mark.slow
def test_twenty_kills_in_a_row_lose_nothing(repo_with, home: Path, tmp_path: Path) -> None:
    """What the run guarantees across SIGKILLs of its runner, checked against what the
    steps themselves wrote (the ledger: each start and end, with its runner's pid):
    a step whose result was committed never runs again; a step runs again only after
    a runner was killed while it was the last step that runner had started; never
    two copies of one step at once; and every attempt the journal recorded counts.

    Not checked against the journal's 'running' rows alone: a step's first attempt
    starts before its begin is written (engine/deferred.py), so a kill in its first
    milliseconds leaves no row, and it runs again without that attempt counted. Once
    this test assumed otherwise, and failed now and then on a loaded machine."""
    ledger = tmp_path / "ledger.txt"
    repo = repo_with(PIPELINE)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "CRASH_LEDGER": str(ledger)}
    rng = random.Random(20261122)
    kills = 0
    run_id = None
    runners: list[int] = []  # pids, in the order they ran
    seen_running: list[tuple[str, int]] = []  # (step, attempt) the journal had at kills
    for _ in range(200):
        args = ["run", "--json"] if run_id is None else ["resume", run_id, "--json"]
        proc = subprocess.Popen([sys.executable, "-m", "ci_runner", *args], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        runners.append(proc.pid)
        if kills < 20:
            time.sleep(rng.uniform(0.25, 0.9))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                seen_running += _running_steps(home)
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

    entries = [line.split() for line in ledger.read_text().splitlines()]
    assert all(len(e) == 3 and e[0] in ("start", "end") for e in entries), entries
    order = {pid: n for n, pid in enumerate(runners)}
    started: dict[int, list[str]] = {}  # runner -> steps it started, in order
    for what, name, pid in entries:
        assert int(pid) in order, (what, name, pid)  # run by one of our runners
        if what == "start":
            started.setdefault(int(pid), []).append(name)
    for name in step_names():
        assert any(name in steps for steps in started.values()), name
    for pid, steps in started.items():
        assert len(steps) == len(set(steps)), (pid, steps)  # once per runner at most
        # What a runner went on past was committed: no later runner starts it again.
        committed = set(steps if pid == runners[-1] else steps[:-1])
        for later, again in started.items():
            if order[later] > order[pid]:
                assert not committed & set(again), (pid, later, committed & set(again))
    # Never two copies at once: once a runner starts a step, no earlier runner's copy
    # of that step ends (it was stopped, or it had ended before).
    for n, (what, name, pid) in enumerate(entries):
        if what == "start":
            for later_what, later_name, later_pid in entries[n + 1:]:
                if later_what == "end" and later_name == name:
                    assert order[int(later_pid)] >= order[int(pid)], (name, pid, later_pid)
    # Every attempt the journal knew of at a kill counts: the step's final count is past it.
    attempts = {r[0]: r[2] for r in rows}
    for name, attempt in seen_running:
        assert attempts[name] > attempt, (name, attempts[name], attempt)
    # No light-step process of a killed runner is left behind.
    leftovers = subprocess.run(["pgrep", "-f", f"cmd.* >> {ledger}"],
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


def _running_steps(home: Path) -> list[tuple[str, int]]:
    """The steps the journal has as running (a dead runner's), with their attempt."""
    try:
        db = sqlite3.connect(home / "ci-runner.db", timeout=5)
        rows = db.execute("SELECT name, attempts FROM steps WHERE status = 'running'"
                          ).fetchall()
        db.close()
    except sqlite3.Error:
        return []
    return [(str(r[0]), int(r[1])) for r in rows]


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
