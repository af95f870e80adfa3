"""A runner killed just after a step began (issue 12): the journal may not know the step
yet, nor its process group, because a step's first attempt starts before its begin is
written (``engine/deferred.py``). Its command must still be stopped before the step
runs again: never two copies of one step at once. With real processes and SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV

PIPELINE = """
import os
from ci_runner import Pipeline

LEDGER = os.environ["CRASH_LEDGER"]

class CI(Pipeline):
    async def run(self, event, step):
        await step.do("first", lambda: 1)
        # Says when each copy starts and ends, with its pid.
        await step.run("slow", ["sh", "-c",
                       f"echo start $$ >> {LEDGER}; sleep 3; echo end $$ >> {LEDGER}"])
"""


def _wait_for_line(ledger: Path, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = ledger.read_text().splitlines() if ledger.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.0005)
    raise AssertionError(f"the ledger did not get {count} lines in {timeout}s")


# Where pids cgroups can be had (root, a delegated cgroup) the run's cgroup holds its
# steps; a user without one (CI_RUNNER_PIDS_CGROUP=off acts so) has only the worktree.
@pytest.mark.parametrize("cgroups", ["as available", "off"])
def test_a_step_killed_as_it_began_is_stopped_before_it_runs_again(
        repo_with, home: Path, tmp_path: Path, cgroups: str) -> None:
    ledger = tmp_path / "ledger.txt"
    repo = repo_with(PIPELINE)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "CRASH_LEDGER": str(ledger)}
    if cgroups == "off":
        env["CI_RUNNER_PIDS_CGROUP"] = "off"
    runner = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--json"], cwd=repo,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        (first,) = _wait_for_line(ledger, 1)
        os.kill(runner.pid, signal.SIGKILL)  # the instant its command has begun
    finally:
        runner.kill()
        runner.wait()
    orphan = int(first.split()[1])
    db = sqlite3.connect(home / "ci-runner.db")
    try:
        (run_id,) = db.execute("SELECT id FROM instances").fetchone()
    finally:
        db.close()
    resumed = subprocess.run([sys.executable, "-m", "ci_runner", "resume", run_id, "--json"],
                             cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    lines = ledger.read_text().splitlines()
    second = next(int(line.split()[1]) for line in lines[1:] if line.startswith("start "))
    # The dead runner's copy was stopped before the new one began: it never ended,
    # and nothing of it is left; the new copy ran whole.
    assert f"end {orphan}" not in lines, lines
    assert lines[-1] == f"end {second}", lines
