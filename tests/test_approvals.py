"""Approvals, hibernation and run control through the real CLI, in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV
from tests.procs import alive, ci_processes

GATED = """
import os
from ci_runner import Pipeline, Rejected

LEDGER = os.environ["LEDGER"]

def mark(name):
    with open(LEDGER, "a") as f:
        f.write(name + "\\n")

class CI(Pipeline):
    async def run(self, event, step):
        await step.do("build", lambda: mark("build"))
        ok = await step.wait_for_approval("gate", message="ship it?", timeout="1 hour")
        await step.run("deploy", ["sh", "-c", f"echo deploy >> {LEDGER}"])
        return ok
"""


def ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_approve_resumes_a_hibernated_run_once(cli, repo_with, home: Path, tmp_path: Path):
    log = tmp_path / "ledger"
    repo = repo_with(GATED)
    env = {"LEDGER": str(log)}
    first = cli("run", cwd=repo, env=env)
    assert first.code == 3, first.err
    assert "waiting for approval at step 'gate' (ship it?)" in first.out
    pending = cli("pending", "--json").json()
    assert len(pending) == 1
    wait = pending[0]
    assert (wait["step"], wait["what"], wait["message"]) == ("gate", "approval", "ship it?")
    run_id = wait["run_id"]
    assert ci_processes(home) == []  # hibernated: nothing of ours is alive for it

    done = cli("approve", run_id, "--comment", "lgtm", "--as", "alice", "--json", env=env)
    assert done.code == 0, done.err
    record = done.json()
    assert record["status"] == "complete"
    assert record["approvals"][0] | {"at": 0} == {
        "decision": "approve", "by": "alice", "comment": "lgtm", "at": 0, "step": "gate"}
    assert ledger(log) == ["build", "deploy"]
    assert cli("pending", "--json").json() == []
    again = cli("approve", run_id)
    assert again.code == 2 and "is complete" in again.err
    assert "approved by alice" in cli("show", run_id).out


def test_reject_fails_the_run(cli, repo_with, tmp_path: Path):
    log = tmp_path / "ledger"
    repo = repo_with(GATED)
    env = {"LEDGER": str(log)}
    assert cli("run", cwd=repo, env=env).code == 3
    run_id = cli("pending", "--json").json()[0]["run_id"]
    result = cli("reject", run_id, "--comment", "not today", "--json", env=env)
    assert result.code == 1
    record = result.json()
    assert record["status"] == "failed"
    assert record["error"]["type"] == "Rejected"
    assert "rejected by" in record["error"]["message"] and "not today" in record["error"]["message"]
    assert ledger(log) == ["build"]


def test_two_approvals_at_once_apply_once(cli, repo_with, home: Path, tmp_path: Path):
    log = tmp_path / "ledger"
    repo = repo_with(GATED)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "LEDGER": str(log)}
    assert cli("run", cwd=repo, env={"LEDGER": str(log)}).code == 3
    run_id = cli("pending", "--json").json()[0]["run_id"]
    procs = [subprocess.Popen([sys.executable, "-m", "ci_runner", "approve", run_id, "--as", who],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
             for who in ("alice", "bob")]
    outputs = [p.communicate(timeout=60) for p in procs]
    results = [(p.returncode, err) for p, (_, err) in zip(procs, outputs, strict=True)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    assert ledger(log) == ["build", "deploy"]
    record = cli("show", run_id, "--json").json()
    assert len(record["approvals"]) == 1


def test_approving_unknown_or_running_runs_is_a_clear_error(cli):
    missing = cli("approve", "no-such-run")
    assert missing.code == 2 and missing.err.startswith("error: no run 'no-such-run'")
    bad = cli("send-event", "no-such-run", "bad type!")
    assert bad.code == 2 and "error:" in bad.err and "Traceback" not in bad.err


def test_event_sent_early_is_kept_and_delivered(cli, repo_with, tmp_path: Path):
    pipeline = """
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        # Far enough past the 60 s inline limit that a slow resume still hibernates.
        await step.sleep("nap", "5 minutes")
        got = await step.wait_for_event("go", "go-now", timeout=60)
        return got["payload"]
"""
    repo = repo_with(pipeline)
    first = cli("run", "--json", cwd=repo)
    assert first.code == 3 and first.json()["status"] == "sleeping"
    run_id = first.json()["run_id"]
    sent = cli("send-event", run_id, "go-now", "--payload", '{"n": 1}')
    assert sent.code == 0, sent.err
    still = cli("resume", run_id, "--json")  # woken early: the long sleep hibernates again
    assert still.code == 3 and still.json()["status"] == "sleeping"


def test_cancel_pause_unpause_and_retry_from(cli, repo_with, tmp_path: Path):
    log = tmp_path / "ledger"
    repo = repo_with(GATED)
    env = {"LEDGER": str(log)}
    assert cli("run", cwd=repo, env=env).code == 3
    run_id = cli("pending", "--json").json()[0]["run_id"]

    assert cli("pause", run_id).code == 0
    assert cli("show", run_id, "--json").json()["status"] == "paused"
    assert cli("approve", run_id).code == 2  # a paused run takes no approval
    assert cli("unpause", run_id, "--detach", env=env).code == 0
    deadline = time.time() + 30
    while cli("show", run_id, "--json").json()["status"] != "waiting":
        assert time.time() < deadline
        time.sleep(0.1)

    assert cli("approve", run_id, env=env).code == 0
    assert ledger(log) == ["build", "deploy"]
    # retry --from gate keeps build, waits for a new approval, deploys again.
    retried = cli("retry", run_id, "--from", "gate", "--json", env=env)
    assert retried.code == 3, retried.err
    assert cli("approve", run_id, "--as", "carol", env=env).code == 0
    assert ledger(log) == ["build", "deploy", "deploy"]
    unknown = cli("retry", run_id, "--from", "nope")
    assert unknown.code == 2 and "steps: build, gate, deploy" in unknown.err

    assert cli("run", cwd=repo, env=env).code == 3
    second = cli("pending", "--json").json()[0]["run_id"]
    assert cli("cancel", second).code == 0
    record = cli("show", second, "--json").json()
    assert record["status"] == "cancelled"
    assert not Path(record["workspace"]).exists()
    assert cli("cancel", second).code == 2


def test_cancel_stops_a_live_run_and_its_processes(cli, repo_with, home: Path, tmp_path: Path):
    marker = tmp_path / "started"
    pipeline = f"""
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("long", ["sh", "-c", "echo $$ > {marker}; sleep 300"])
"""
    repo = repo_with(pipeline)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--json"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not marker.exists() or not marker.read_text().strip():
        assert time.time() < deadline
        time.sleep(0.05)
    pid = int(marker.read_text())
    run_id = cli("runs", "--json").json()[0]["run_id"]
    assert cli("cancel", run_id).code == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert '"status": "cancelled"' in out
    deadline = time.time() + 10
    while alive(pid):
        assert time.time() < deadline, "the step's process outlived the cancel"
        time.sleep(0.05)


def test_cancel_stops_a_process_no_step_recorded(cli, repo_with, home: Path, tmp_path: Path):
    """A process the pipeline started in the worktree that no step recorded (as when a
    cancel lands between a command's start and the record of its process group) is
    stopped too: the cancelled run's driver sweeps its worktree."""
    marker = tmp_path / "stray"
    pipeline = f"""
import subprocess, time
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        def stray():
            subprocess.Popen(["sh", "-c", "echo $$ > {marker}.tmp; mv {marker}.tmp {marker};"
                              " exec sleep 300"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            time.sleep(300)
        await step.do("stray", stray)
"""
    repo = repo_with(pipeline)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    # Its own session, as under systemd or setsid: its pipeline process shares the
    # driver's group, which the sweep must not signal.
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--json"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    pid = int(marker.read_text())
    try:
        run_id = cli("runs", "--json").json()[0]["run_id"]
        assert cli("cancel", run_id).code == 0
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and '"status": "cancelled"' in out, (proc.returncode, err)
        deadline = time.time() + 10
        while alive(pid):
            assert time.time() < deadline, "a process in the run's worktree outlived the cancel"
            time.sleep(0.05)
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_worker_wakes_due_sleeps(cli, repo_with, home: Path, tmp_path: Path):
    pipeline = """
import time
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.sleep_until("later", time.time() + 61)
        return "woke"
"""
    repo = repo_with(pipeline)
    first = cli("run", "--json", cwd=repo)
    assert first.code == 3
    run_id = first.json()["run_id"]
    # Pretend the time has come: move the wake time into the past.
    import sqlite3

    db = sqlite3.connect(home / "ci-runner.db")
    with db:
        db.execute("UPDATE instances SET wake_at = 0 WHERE id = ?", (run_id,))
        db.execute("UPDATE steps SET wake_at = 0 WHERE instance_id = ?", (run_id,))
    db.close()
    out = cli("worker", "--once")
    assert out.code == 0, out.err
    assert cli("show", run_id, "--json").json()["status"] == "complete"


def test_a_deleted_worktree_is_forked_again_at_the_runs_sha(cli, repo_with, tmp_path: Path):
    log = tmp_path / "ledger"
    repo = repo_with(GATED)
    env = {"LEDGER": str(log)}
    assert cli("run", cwd=repo, env=env).code == 3
    record = cli("show", cli("pending", "--json").json()[0]["run_id"], "--json").json()
    # A waiting run holds no worktree (test_lazy_worktree.py): its driver removed it.
    assert not Path(record["workspace"]).exists()
    # The repo moves on meanwhile: the run must still replay the code of its own sha.
    (repo / ".ci" / "pipeline.py").write_text("raise SystemExit('new code must not load')\n")
    done = cli("approve", record["run_id"], "--json", env=env)
    assert done.code == 0, done.err + done.out
    assert ledger(log) == ["build", "deploy"]
    assert not Path(record["workspace"]).exists()  # removed again once the run ended
