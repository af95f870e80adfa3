"""A light step cannot exhaust the machine's processes: its pids cgroup refuses forks past
its limit, says so in one line, and nothing of it outlives it (not even a daemon that
left its process group). Bounded: at most a few hundred forks, each a short sleep."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.gitrepos import make_repo

BOMB = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        # 300 background sleeps against a limit of 40: most forks must be refused.
        await step.run("bomb", "i=0; while [ $i -lt 300 ]; do (sleep 20 &) 2>/dev/null;"
                       " i=$((i+1)); done; echo tried", pids=40, check=False, timeout=60)
        # The run's own cgroup (512 by default) for every other step.
        # A daemon that leaves the step's process group and session.
        await step.run("daemon", ["sh", "-c", "setsid sleep 321 & echo started"])
'''


def _require_cgroup() -> None:
    from ci_runner.executors.limits import where

    base, why = where()
    if base is None:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI must have a pids cgroup: {why}")
        pytest.skip(why)


def _count(cmdline: bytes) -> int:
    found = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == cmdline:
                found += 1
        except OSError:
            pass
    return found


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_a_fork_bomb_is_stopped_at_the_steps_limit_and_said_so(cli, home, tmp_path, mode):
    _require_cgroup()
    if mode == "bwrap":
        from tests.test_isolation_cli import _require

        _require(mode)
    repo = make_repo(tmp_path / "bomb", {".ci/pipeline.py": BOMB})
    done = cli("run", "-C", str(repo), "--sandbox", mode, "--json", timeout=120)
    assert done.code == 0, done.err + done.out
    run_id = done.json()["run_id"]
    with sqlite3.connect(home / "ci-runner.db") as db:
        result = json.loads(db.execute(
            "SELECT result FROM steps WHERE instance_id = ? AND name = 'bomb'",
            (run_id,)).fetchone()[0])
    assert result["process_limit"]["limit"] == 40
    assert result["process_limit"]["refused_forks"] > 0
    log = (home / "logs" / run_id / "bomb.log").read_text()
    assert "this step hit its process limit (40 processes)" in log
    # Nothing of either step is left: the bomb's sleeps and the daemon that setsid'ed.
    deadline = time.monotonic() + 10
    while _count(b"sleep\x0020\x00") or _count(b"sleep\x00321\x00"):
        assert time.monotonic() < deadline, "a step's processes outlived it"
        time.sleep(0.05)
    from ci_runner.executors.limits import where

    base, _ = where()
    assert base is not None and not list(base.glob(f"{run_id}-*"))  # cgroups removed


def test_without_a_cgroup_a_sandboxed_step_gets_rlimit_nproc(cli, home, tmp_path):
    """Where no pids cgroup can be made (simulated: CI_RUNNER_PIDS_CGROUP=off), a step in
    a bubblewrap sandbox is still limited, by RLIMIT_NPROC inside its sandbox."""
    from tests.test_isolation_cli import _require

    _require("bwrap")
    repo = make_repo(tmp_path / "bomb", {".ci/pipeline.py": """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("bomb", "i=0; while [ $i -lt 60 ]; do (sleep 20 >/dev/null &) 2>/dev/null"
                       " || echo refused; i=$((i+1)); done | grep -c refused",
                       pids=20, check=False, timeout=60)
"""})
    done = cli("run", "-C", str(repo), "--sandbox", "bwrap", "--json", timeout=120,
               env={"CI_RUNNER_PIDS_CGROUP": "off"})
    assert done.code == 0, done.err + done.out
    log = (home / "logs" / done.json()["run_id"] / "bomb.log").read_text()
    refused = int(log.split("\n")[1])  # the line after the attempt's header
    assert 30 <= refused <= 60, log  # at most ~20 of 60 forks got through
    deadline = time.monotonic() + 30
    while _count(b"sleep\x0020\x00"):  # the sandbox's processes died with it
        assert time.monotonic() < deadline
        time.sleep(0.1)
