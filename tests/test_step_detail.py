"""A step's detail (its command, log, sandbox and process group) reaches the journal.

A short step's detail comes back with its result and is written in the same commit;
a step still running after a few milliseconds has it sent ahead, so the journal holds
its sealed process group while it runs (what a runner taking the run over needs to
stop it). Both through the real CLI, with the sandbox off and with bubblewrap.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, make_repo
from tests.test_isolation_cli import _require

PIPELINE = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        for i in range(5):
            await step.run(f"quick{i}", ["true"])
        await step.run("slow", ["sleep", "3"])
        return "ok"
'''


def _detail(db: Path, name: str) -> tuple[str, dict] | None:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT status, detail FROM steps WHERE name = ?",
                               (name,)).fetchone()
    except sqlite3.OperationalError:
        return None  # not made yet
    if row is None or row[1] is None:
        return None
    return row[0], json.loads(row[1])


@pytest.mark.parametrize("mode", ["off", "bwrap"])
def test_short_and_long_steps_record_their_detail(home: Path, tmp_path: Path, mode: str):
    if mode == "bwrap":
        _require(mode)
    repo = make_repo(tmp_path / "proj", {".ci/pipeline.py": PIPELINE})
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ci_runner", "run", "-C", str(repo), "--sandbox", mode,
         "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _detail(home / "ci-runner.db", "slow")
            if seen is not None:
                break
            time.sleep(0.05)
        assert seen is not None, "the running step's detail never reached the journal"
        status, detail = seen
        assert status == "running"  # written while it runs, not with its result
        assert isinstance(detail["pgid"], int) and detail["pgid"] > 1
        assert detail["seal"] and detail["pgid_start"] not in ("", None)
        assert detail["sandbox"] == mode
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    record = json.loads(out)
    steps = {s["name"]: s for s in record["steps"]}
    for i in range(5):
        quick = steps[f"quick{i}"]
        assert quick["status"] == "complete"
        assert quick["sandbox"] == mode  # came back with the result, written with it
        detail = _detail(home / "ci-runner.db", f"quick{i}")
        assert detail is not None
        assert detail[1]["cmd"] == "true"
        assert detail[1]["log"].endswith(f"quick{i}.log")
