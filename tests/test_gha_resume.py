"""A workflow run survives its runner being killed mid-job: on resume, the steps that
completed are replayed (their outputs and GITHUB_ENV with them), not run again, and
the later steps and jobs see the same values the first runner saw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, make_repo

WORKFLOW = """\
on: push
jobs:
  one:
    runs-on: ubuntu-latest
    outputs:
      token: ${{ steps.make.outputs.token }}
    steps:
      - id: make
        run: |
          echo "make" >> __LEDGER__
          echo "token=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >> "$GITHUB_OUTPUT"
          echo "FROM_ENV=env-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')" >> "$GITHUB_ENV"
      - name: wait
        run: |
          echo "wait" >> __LEDGER__
          touch __STARTED__
          while [ ! -f __GO__ ]; do sleep 0.05; done
      - name: use
        run: echo "use ${{ steps.make.outputs.token }} $FROM_ENV" >> __LEDGER__
  two:
    needs: one
    runs-on: ubuntu-latest
    steps:
      - run: echo "two ${{ needs.one.outputs.token }}" >> __LEDGER__
"""


def test_a_killed_workflow_run_resumes_replaying_completed_steps(
        cli: Any, home: Path, tmp_path: Path) -> None:
    ledger, started, go = tmp_path / "ledger", tmp_path / "started", tmp_path / "go"
    text = WORKFLOW.replace("__LEDGER__", str(ledger)).replace(
        "__STARTED__", str(started)).replace("__GO__", str(go))
    repo = make_repo(tmp_path / "resumable", {".github/workflows/ci.yml": text})
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--json"], cwd=repo,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not started.exists() or not _begun(home, "one / wait"):
            assert proc.poll() is None, "the run ended before its wait step began"
            assert time.monotonic() < deadline, "the wait step never began"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    runs = cli("runs", "--json", cwd=repo).json()
    assert len(runs) == 1
    assert runs[0]["orphaned"] is True
    run_id = runs[0]["run_id"]
    go.touch()
    done = cli("resume", run_id, "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    assert done.json()["status"] == "complete"
    lines = ledger.read_text().splitlines()
    assert lines.count("make") == 1  # replayed, with its outputs and env
    assert lines.count("wait") == 2  # it was running when the runner died: run again
    use = next(line for line in lines if line.startswith("use "))
    _, token, from_env = use.split()
    assert len(token) == 16 and from_env.startswith("env-") and from_env != "env-"
    assert lines[-1] == f"two {token}"
    steps = {s["name"]: s for s in done.json()["steps"]}
    assert steps["one / wait"]["attempts"] == 2


def _begun(home: Path, step: str) -> bool:
    """Whether the journal holds the step's attempt (a begin is written up to 10 ms after
    the step starts, with its result if that comes first: a runner killed before then
    has not counted the attempt, and the step runs again as attempt 1)."""
    import sqlite3

    try:
        with sqlite3.connect(home / "ci-runner.db", timeout=5) as db:
            row = db.execute("SELECT attempts FROM steps WHERE name = ?", (step,)).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and row[0] >= 1
