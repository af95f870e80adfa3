"""The everyday features, sandboxed: what users get by default must work in the sandbox.

The older end-to-end tests watch pipelines through files outside the worktree and so
run with the sandbox off; these check the same features through what ci-runner
itself records (the database, logs, `show`, `artifacts`), under bubblewrap and
under Landlock, through the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, commit, make_repo
from tests.test_isolation_cli import _require

MODES = ("bwrap", "landlock")

EVERYDAY = '''
import json, os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.parallel(
            step.run("lint", ["sh", "-c", "echo lint ok"]),
            step.run("unit", ["sh", "-c", "echo unit ok"], inputs=["src/**"]),
        )
        flaky = "test -e $TMPDIR/tried || { touch $TMPDIR/tried; exit 1; }"
        await step.run("flaky", ["sh", "-c", flaky], retries={"limit": 2, "delay": 0.1})
        await step.run("secret", ["sh", "-c", 'echo "token is $DEPLOY_TOKEN"'],
                       secrets=["DEPLOY_TOKEN"])
        await step.run("build", ["sh", "-c", "mkdir -p dist && echo wheel > dist/app.whl"],
                       artifacts=["dist/*.whl"])
        await step.run("git", ["sh", "-c", "git rev-parse HEAD && git status --short"])
        await step.run("home", ["sh", "-c", "echo $HOME > $HOME/x && mkdir -p $XDG_CACHE_HOME/t"])
        version = await step.do("version", lambda: open("VERSION").read().strip())
        await step.sleep("cool-down", 0.2)
        await step.wait_for_approval("deploy-gate", message="deploy?")
        await step.run("deploy", ["sh", "-c", "echo deployed " + version])
        return version
'''


def _record(cli, run_id: str) -> dict:
    done = cli("show", run_id, "--json")
    assert done.code == 0, done.err
    return done.json()


@pytest.mark.parametrize("mode", MODES)
def test_everyday_features_work_in_the_sandbox(cli, home: Path, tmp_path: Path, mode: str):
    _require(mode)
    repo = make_repo(tmp_path / "proj", {".ci/pipeline.py": EVERYDAY, "VERSION": "1.2.3\n",
                                         "src/a.py": "print(1)\n"})
    env = {"DEPLOY_TOKEN": "hunter2-secret-value"}
    first = cli("run", "-C", str(repo), "--sandbox", mode, "--json", env=env)
    assert first.code == 3, first.err + first.out  # waits at the gate, holding nothing
    run_id = first.json()["run_id"]
    done = cli("approve", run_id, "--as", "alice", "--json", env=env)
    assert done.code == 0, done.err + done.out
    record = done.json()
    assert record["status"] == "complete"
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["flaky"]["attempts"] == 2
    assert {steps[n]["sandbox"] for n in ("lint", "unit", "secret", "deploy")} == {mode}
    logs = home / "logs" / run_id
    assert "token is ***" in (logs / "secret.log").read_text()
    assert "hunter2" not in "".join(p.read_text() for p in logs.iterdir())
    assert "deployed 1.2.3" in (logs / "deploy.log").read_text()
    sha = record["sha"]
    assert sha in (logs / "git.log").read_text()  # git works on the read-only repository
    listed = cli("artifacts", run_id, "--json").json()
    assert [a["path"] for a in listed] == ["dist/app.whl"]
    out = tmp_path / "out"
    assert cli("artifacts", run_id, "--download", str(out)).code == 0
    assert (out / "dist" / "app.whl").read_text() == "wheel\n"
    # The run's private folders went with it; the repo's tool cache stays.
    assert not (home / "scratch" / run_id).exists()
    assert list((home / "toolcache").glob("*/t"))

    # The next run reuses the input-keyed step, computed by the broker from the commit.
    again = cli("run", "-C", str(repo), "--sandbox", mode, "--json", "--skip", "deploy-gate",
                env=env)
    steps = {s["name"]: s for s in again.json()["steps"]}
    assert steps["unit"]["cached"], steps["unit"]
    assert steps["deploy-gate"]["status"] == steps["deploy"]["status"] == "skipped"
    commit(repo, {"src/a.py": "print(2)\n"}, "change")
    third = cli("run", "-C", str(repo), "--sandbox", mode, "--json", "--skip", "deploy-gate",
                env=env)
    assert not {s["name"]: s for s in third.json()["steps"]}["unit"]["cached"]


HANGS = '''
import os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["sh", "-c", "echo built"])
        # Hangs on its first attempt only: the second finds the marker it left.
        await step.run("hang", ["sh", "-c", "test -e .second && exit 0; touch .second; "
                                "echo hanging; exec sleep 60"])
        await step.run("after", ["echo", "after"])
'''


def _sandboxed_sleeps() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == b"sleep\x0060\x00":
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_runner_is_resumed_and_its_sandboxed_step_does_not_outlive_it(
    cli, home: Path, tmp_path: Path, mode: str,
):
    _require(mode)
    repo = make_repo(tmp_path / "hangs", {".ci/pipeline.py": HANGS})
    before = set(_sandboxed_sleeps())
    runner = subprocess.Popen(
        [sys.executable, "-m", "ci_runner", "run", "-C", str(repo), "--sandbox", mode],
        env={**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
             "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 30
    while not set(_sandboxed_sleeps()) - before:
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    time.sleep(0.3)  # its process group is in the journal by now
    os.killpg(runner.pid, signal.SIGKILL)  # the CLI and its driver, no cleanup at all
    runner.wait()
    (record,) = cli("runs", "--json").json()
    resumed = cli("resume", record["run_id"], "--json", timeout=90)
    assert resumed.code == 0, resumed.err + resumed.out
    record = resumed.json()
    assert record["status"] == "complete"
    assert {s["name"]: s["attempts"] for s in record["steps"]} == {
        "build": 1, "hang": 2, "after": 1}
    deadline = time.monotonic() + 10
    while set(_sandboxed_sleeps()) - before:  # the dead runner's step died with it
        assert time.monotonic() < deadline, "the sandboxed step outlived its runner"
        time.sleep(0.05)
    assert json.dumps(record).count("hang") >= 1
