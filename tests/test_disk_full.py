"""A step that fills the disk: one clear line and a non-zero exit, nothing committed lost,
the run left resumable, and `cancel` works on the full disk (it frees the run's worktree
before it writes). CI_RUNNER_HOME is a small tmpfs the test mounts (root only)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, make_repo

FILLS = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("ok", ["echo", "fine"])
        await step.run("fill", "dd if=/dev/zero of=big bs=1M count=64; echo filled",
                       check=False)
        await step.run("after", ["echo", "after"])
'''


@pytest.fixture
def small_home(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    home = tmp_path / "small"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home)], check=True)
    try:
        yield home / "home"
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _cli(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ci_runner", *args], cwd=cwd, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
             "PYTHONPATH": str(ROOT)})


def test_a_full_disk_is_one_line_and_cancel_still_works(small_home: Path, tmp_path: Path):
    repo = make_repo(tmp_path / "fills", {".ci/pipeline.py": FILLS})
    done = _cli(small_home, "run", "--sandbox", "off", cwd=repo)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0], done.stderr
    db = sqlite3.connect(small_home / "ci-runner.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    run_id, status = db.execute("SELECT id, status FROM instances").fetchone()
    assert status == "running"  # resumable: its driver is gone
    assert db.execute("SELECT status FROM steps WHERE name = 'ok'").fetchone()[0] == "complete"
    db.close()
    cancelled = _cli(small_home, "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    db = sqlite3.connect(small_home / "ci-runner.db")
    assert db.execute("SELECT status FROM instances").fetchone()[0] == "terminated"
    assert db.execute("SELECT status FROM steps WHERE name = 'ok'").fetchone()[0] == "complete"
    assert not list((small_home / "worktrees").iterdir())  # the space is back
