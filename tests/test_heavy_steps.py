"""Heavy steps (image=) through the real CLI and real containers: output, ownership,
caches kept per repo, and a crashed runner's container adopted instead of re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ci_runner import images
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV
from tests.test_container import require_engine


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    images.build("busybox", client=require_engine())


BASIC = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        out = await step.run("box", "echo in-a-box; id -u; echo made > /workspace/made.txt",
                             image="busybox")
        await step.run("host", ["stat", "-c", "%u", "made.txt"])
        await step.run("fails", ["sh", "-c", "exit 3"], image="busybox", check=False)
        return out["output_tail"]
"""


def test_heavy_step_output_exit_code_and_file_owner(cli, repo_with):
    repo = repo_with(BASIC)
    done = cli("run", "--json", "--keep-workspace", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["box"]["exit_code"] == 0
    assert steps["fails"]["exit_code"] == 3
    made = Path(record["workspace"]) / "made.txt"
    assert made.stat().st_uid == os.getuid()
    log = cli("logs", record["run_id"], "box").out
    assert "in-a-box" in log and f"\n{os.getuid()}\n" in log


CACHED = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        r = await step.run("count", "echo x >> /cache/hits; wc -l < /cache/hits",
                           image="busybox", cache={"hits": "/cache"})
        return r["output_tail"].strip()
"""


def test_cache_is_kept_between_runs_and_per_repo(cli, repo_with):
    first_repo = repo_with(CACHED, name="one")
    other_repo = repo_with(CACHED, name="two")
    try:
        outputs = [cli("show", cli("run", "--json", cwd=repo).json()["run_id"], "--json").json()
                   for repo in (first_repo, first_repo, other_repo)]
        assert [o["status"] for o in outputs] == ["complete"] * 3
        counts = [cli("logs", o["run_id"], "count").out.split("---")[1].split()[-1]
                  for o in outputs]
        assert counts == ["1", "2", "1"]  # the second repo does not see the first's cache
    finally:
        client = require_engine()
        for volume in client.volumes.list(filters={"name": "ci-runner-cache-"}):
            if volume.name.endswith("-hits"):
                volume.remove(force=True)


ADOPT = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("slow", "echo started >> /cache/ran; sleep 4; echo finished",
                       image="busybox", cache={"adopt": "/cache"})
        r = await step.run("count", "wc -l < /cache/ran", image="busybox",
                           cache={"adopt": "/cache"})
        return r["output_tail"].strip()
"""


def test_resume_adopts_the_container_of_a_killed_runner(cli, repo_with, home: Path):
    client = require_engine()
    repo = repo_with(ADOPT, name="adopt")
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not client.containers.list(filters={"label": "ci-runner.step=slow"}):
            assert time.time() < deadline, "the step's container never started"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_id = cli("runs", "--json").json()[0]["run_id"]
        done = cli("resume", run_id, "--json")
        assert done.code == 0, done.err + done.out
        record = done.json()
        assert record["status"] == "complete"
        slow = next(s for s in record["steps"] if s["name"] == "slow")
        assert slow["exit_code"] == 0
        assert "finished" in cli("logs", run_id, "slow").out
        # The step ran once: one line in the cache file, one container ever started.
        count = cli("logs", run_id, "count").out.split("---")[1].split()[-1]
        assert count == "1"
        assert client.containers.list(all=True, filters={"label": f"ci-runner.run={run_id}"}) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for volume in client.volumes.list(filters={"name": "ci-runner-cache-"}):
            if volume.name.endswith("-adopt"):
                volume.remove(force=True)


def test_no_engine_gives_a_clear_error_and_light_steps_still_work(cli, repo_with):
    repo = repo_with(BASIC.replace('["stat", "-c", "%u", "made.txt"]', '["true"]'))
    done = cli("run", "--json", cwd=repo, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == 1
    error = done.json()["error"]["message"]
    assert "a Docker engine is needed" in error and "DOCKER_HOST" in error


HANGS_IN_A_BOX = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("slow", ["sleep", "60"], image="busybox")
        await step.run("deploy", ["echo", "deployed"])
"""


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_ctrl_c_during_a_heavy_step_stops_its_container_and_the_run(
    cli, repo_with, home: Path, mode: str,
):
    """Ctrl-C means stop: the container goes, the run is 'interrupted', and a worker
    does not drive it on (a worker used to, deploy included)."""
    client = require_engine()
    repo = repo_with(HANGS_IN_A_BOX, name=f"ctrlc-{mode}")
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--sandbox", mode],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not client.containers.list(filters={"label": "ci-runner.step=slow"}):
            assert time.time() < deadline, "the step's container never started"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        (record,) = cli("runs", "--json").json()
        assert record["status"] == "interrupted"
        assert client.containers.list(
            all=True, filters={"label": f"ci-runner.run={record['run_id']}"}) == []
        assert cli("worker", "--once", "--poll", "0.1", timeout=60).code == 0
        (record,) = cli("runs", "--json").json()
        assert record["status"] == "interrupted"
        assert [s["name"] for s in record["steps"]] == ["slow"]  # no deploy
    finally:
        if proc.poll() is None:
            proc.kill()
