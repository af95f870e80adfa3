"""`ci-runner watch` as a user runs it: the real CLI in a subprocess, a real git repo,
real file edits. The runs are read from the real SQLite file and `show --json`.

Waits poll with generous deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Result
from tests.gitrepos import ISOLATED_GIT_ENV, git
from tests.procs import alive, ci_processes

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0

QUICK = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello"])
"""

# The step sleeps while the tree has a file named `slow`, writing its pid first, so a
# test can see it running and then check that it is gone.
SLOW = """
import os
from ci_runner import Pipeline

PIDS = os.environ["PIDS"]

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("slow", f"if [ -f slow ]; then echo $$ >> {PIDS}; exec sleep 120; fi")
        await step.run("after", ["true"])
"""

GATED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["true"])
        await step.wait_for_approval("gate", message="ship it?", timeout="1 hour")
        await step.run("deploy", ["true"])
"""


class Watching:
    """A `ci-runner watch` process, its output in a file, and its runs from the database."""

    def __init__(self, repo: Path, home: Path, out: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        self.out = out
        full_env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
                    "PYTHONPATH": str(ROOT), **(env or {})}
        with out.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ci_runner", "watch", str(repo), *args],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=full_env,
            )
        self.wait_for(lambda: "watching " in self.output(), "the watch to start")

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def runs(self) -> list[dict[str, Any]]:
        db = self.home / "ci-runner.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(
                "SELECT id, status, error FROM instances ORDER BY created_at, id").fetchall()
        finally:
            conn.close()
        return [{"id": r[0], "status": r[1], "error": json.loads(r[2]) if r[2] else None}
                for r in rows]

    def wait_for(self, ready: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited ({self.proc.returncode}) while waiting for"
                                     f" {what}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def settled(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` runs exist and the watch has reported the last of them."""
        def done() -> list[dict[str, Any]] | None:
            runs = self.runs()
            if len(runs) >= count and runs[-1]["id"] in self.history():
                return runs
            return None

        runs: list[dict[str, Any]] = self.wait_for(done, f"{count} run(s) to end")
        return runs

    def history(self) -> str:
        # The one-line history entry printed when a run stops being driven.
        return "\n".join(line for line in self.output().splitlines()
                         if line[:1] in "✓✗⊘⏸")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=DEADLINE_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watching(home: Path, tmp_path: Path) -> Iterator[Callable[..., Watching]]:
    started: list[Watching] = []

    def start(repo: Path, *args: str, env: dict[str, str] | None = None) -> Watching:
        w = Watching(repo, home, tmp_path / f"watch{len(started)}.out", *args, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def quiet_for(seconds: float) -> None:
    """Give a watch time to (wrongly) react; only absence checks need this."""
    time.sleep(seconds)


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def snapshot_store(home: Path) -> Path:
    """The one store of snapshots (the user's repository never holds them)."""
    (store,) = (home / "snapshots").glob("*.git")
    return store


def run_refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/ci-runner/").split()


def test_a_change_triggers_one_run_and_ignored_files_none(
    cli: Callable[..., Result], repo_with: Callable[..., Path], watching: Callable[..., Watching],
    home: Path,
) -> None:
    repo = repo_with(QUICK, {".gitignore": "build/\n*.log\n"})
    w = watching(repo, "--debounce", "100")
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_text("ignored")
    (repo / "debug.log").write_text("ignored")
    git(repo, "tag", "a-write-under-.git")
    quiet_for(1.0)
    assert w.runs() == []

    (repo / "notes.txt").write_text("a change\n")
    (run,) = w.settled(1)
    quiet_for(1.0)
    assert len(w.runs()) == 1
    record = cli("show", run["id"], "--json").json()
    assert (record["status"], record["trigger"], record["snapshot"]) == ("complete", "watch", True)
    assert git(snapshot_store(home), "show", f"{record['sha']}:notes.txt") == "a change"
    assert run_refs(repo) == []  # the snapshot's ref went with the run
    assert not Path(record["workspace"]).exists()
    assert w.interrupt() == 130
    assert [p.name for p in (home / "logs").iterdir()] == [run["id"]]  # no spare left


def test_a_burst_of_changes_triggers_one_run(
    cli: Callable[..., Result], repo_with: Callable[..., Path], watching: Callable[..., Watching],
    home: Path,
) -> None:
    repo = repo_with(QUICK)
    w = watching(repo, "--debounce", "500")
    for i in range(20):  # an editor saving, a formatter rewriting, a generator writing
        (repo / f"gen{i % 4}.txt").write_text(f"{i}\n")
        (repo / "counter.txt").write_text(f"{i}\n")
    (run,) = w.settled(1)
    quiet_for(1.5)
    assert len(w.runs()) == 1
    record = cli("show", run["id"], "--json").json()
    assert record["status"] == "complete"
    # The tree it settled on:
    assert git(snapshot_store(home), "show", f"{record['sha']}:counter.txt") == "19"
    assert w.interrupt() == 130


def test_a_change_during_a_run_supersedes_it(
    cli: Callable[..., Result], repo_with: Callable[..., Path], watching: Callable[..., Watching],
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids"
    repo = repo_with(SLOW)
    w = watching(repo, "--debounce", "100", env={"PIDS": str(pid_file)})
    (repo / "slow").write_text("")
    (pid,) = w.wait_for(lambda: pids(pid_file), "the slow step to start")
    assert alive(pid)
    first = w.runs()[0]["id"]

    (repo / "slow").unlink()  # the change: the next run does not sleep
    runs = w.settled(2)
    assert len(runs) == 2
    assert runs[0]["id"] == first
    old = cli("show", first, "--json").json()
    assert old["status"] == "cancelled"
    assert old["error"]["fields"]["superseded"] is True
    assert "superseded" in old["error"]["message"]
    assert not alive(pid)
    assert not Path(old["workspace"]).exists()
    new = cli("show", runs[1]["id"], "--json").json()
    assert new["status"] == "complete"
    assert [s["status"] for s in new["steps"]] == ["complete", "complete"]
    assert "superseded by a change" in w.history()
    assert run_refs(repo) == []
    assert w.interrupt() == 130


def test_ctrl_c_leaves_nothing_running_and_nothing_half_written(
    cli: Callable[..., Result], repo_with: Callable[..., Path], watching: Callable[..., Watching],
    home: Path, tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids"
    repo = repo_with(SLOW)
    w = watching(repo, "--debounce", "100", env={"PIDS": str(pid_file)})
    (repo / "slow").write_text("")
    (pid,) = w.wait_for(lambda: pids(pid_file), "the slow step to start")

    assert w.interrupt() == 130
    assert not alive(pid)
    assert ci_processes(home) == []
    (run,) = w.runs()
    record = cli("show", run["id"], "--json").json()
    assert record["status"] == "cancelled"
    assert "the watch was stopped (SIGINT)" in record["error"]["message"]
    assert record["error"]["fields"]["superseded"] is False
    assert not Path(record["workspace"]).exists()
    assert list((home / "worktrees").iterdir()) == []
    assert run_refs(repo) == []
    assert [p.name for p in (home / "logs").iterdir()] == [run["id"]]
    assert "Traceback" not in w.output()
    conn = sqlite3.connect(home / "ci-runner.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def test_a_run_waiting_for_approval_is_not_cancelled_by_a_change(
    cli: Callable[..., Result], repo_with: Callable[..., Path], watching: Callable[..., Watching],
) -> None:
    repo = repo_with(GATED)
    w = watching(repo, "--debounce", "100")
    (repo / "a.txt").write_text("one\n")
    (first,) = w.settled(1)
    assert first["status"] == "waiting_for_event"
    assert "waits for approval" in w.history()

    (repo / "a.txt").write_text("two\n")
    runs = w.settled(2)
    assert [r["status"] for r in runs] == ["waiting_for_event", "waiting_for_event"]
    assert runs[0]["error"] is None
    assert w.interrupt() == 130  # stopping the watch leaves waiting runs waiting too
    assert [r["status"] for r in w.runs()] == ["waiting_for_event", "waiting_for_event"]

    done = cli("approve", first["id"], "--json")
    assert done.code == 0, done.err
    assert done.json()["status"] == "complete"
