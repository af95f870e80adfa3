"""`--include-uncommitted` keeps its snapshot out of the user's repository (issue 16).

The snapshot's objects go to a store of ci-runner's own (``workspace/snapshots.py``):
a run with a big untracked file leaves the user's ``.git`` byte for byte as it was,
the run sees the working tree exactly (modified, staged, untracked, deleted, but not
ignored), git inside the run still finds the history, refs and config, a run killed
mid-step resumes from the store, and ``prune`` takes the store away with the last run
that named it. Real CLI, real repositories, real database.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ci_runner.workspace import file_at, fork, open_repo, remove, snapshot_uncommitted
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, git, write

DAY = 86400.0
BIG = 12 * 1024 * 1024

LIST_FILES = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("files", "find . -path ./.git -prune -o -type f -print | LC_ALL=C sort")
        await step.run("content", "cat a.txt b.txt untracked/u.txt; wc -c < big.bin")
"""


def git_dir_state(repo: Path) -> dict[str, str]:
    """Every file under the user's .git with a hash of its bytes."""
    git_dir = repo / ".git"
    return {
        str(p.relative_to(git_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(git_dir.rglob("*")) if p.is_file()
    }


def user_state(repo: Path) -> dict[str, Any]:
    index = (repo / ".git" / "index").read_bytes()  # before status, which may refresh it
    return {
        "index": hashlib.sha256(index).hexdigest(),
        "status": git(repo, "--no-optional-locks", "status", "--porcelain=v1",
                      "--untracked-files=all", "--ignored"),
        "stash": git(repo, "stash", "list"),
        "refs": git(repo, "for-each-ref"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
    }


def logs(cli: Any, run_id: str, step: str) -> str:
    done = cli("logs", run_id, step)
    assert done.code == 0, done.err
    return "".join(line for line in str(done.out).splitlines(keepends=True)
                   if not line.startswith("--- "))  # the attempt's header and footer


def test_a_snapshot_run_sees_the_tree_exactly_and_leaves_the_users_git_alone(
    cli: Any, repo_with: Any, home: Path
) -> None:
    repo = repo_with(LIST_FILES, {"a.txt": "a1\n", "b.txt": "b1\n", "gone.txt": "g\n",
                                  ".gitignore": "ignored.txt\nbuild/\n"})
    write(repo, {"a.txt": "stashed away\n"})  # a stash of the user's own, which stays
    git(repo, "stash", "push", "-q", "-m", "mine")
    write(repo, {"a.txt": "a-modified\n", "b.txt": "b-staged\n", "untracked/u.txt": "u\n",
                 "ignored.txt": "secret\n", "build/out.o": "o\n"})
    git(repo, "add", "b.txt")
    (repo / "gone.txt").unlink()
    (repo / "big.bin").write_bytes(os.urandom(BIG))  # incompressible: every byte stored
    before_git, before = git_dir_state(repo), user_state(repo)

    done = cli("run", "--include-uncommitted", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["snapshot"] is True
    listed = logs(cli, record["run_id"], "files").split()
    assert listed == ["./.ci/pipeline.py", "./.gitignore", "./a.txt", "./b.txt", "./big.bin",
                      "./untracked/u.txt"]
    assert logs(cli, record["run_id"], "content").split() == [
        "a-modified", "b-staged", "u", str(BIG)]
    assert git_dir_state(repo) == before_git  # not one object, ref or worktree entry
    assert user_state(repo) == before
    assert "mine" in before["stash"]
    # The big file is in ci-runner's own store instead, which really holds it.
    stored = sum(p.stat().st_size for p in (home / "snapshots").rglob("*") if p.is_file())
    assert stored >= BIG
    assert not Path(record["workspace"]).exists()  # the worktree went with the run


GIT_INSIDE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("git", "git log -1 --format=%s HEAD; git log -1 --format=%s HEAD~1;"
                       " git describe --tags HEAD~1; git rev-parse main;"
                       " git remote get-url origin; git status --porcelain; echo end")
"""


@pytest.mark.parametrize("sandbox", ["off", "bwrap"])
def test_git_inside_a_snapshot_run_finds_history_refs_and_config(
    cli: Any, repo_with: Any, sandbox: str
) -> None:
    if sandbox == "bwrap" and subprocess.run(["which", "bwrap"], check=False,
                                             capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is not installed")
        pytest.skip("bwrap is not installed")
    repo = repo_with(GIT_INSIDE, {"a.txt": "a\n"})
    git(repo, "tag", "v1.0")
    git(repo, "remote", "add", "origin", "https://example.invalid/proj.git")
    head = git(repo, "rev-parse", "HEAD")
    write(repo, {"a.txt": "changed\n", "new.txt": "n\n"})

    done = cli("run", "--include-uncommitted", "--json", "--sandbox", sandbox, cwd=repo)

    assert done.code == 0, (done.out, done.err)
    out = logs(cli, done.json()["run_id"], "git").splitlines()
    assert out == ["ci-runner snapshot of uncommitted changes", "init", "v1.0", head,
                   "https://example.invalid/proj.git", "end"]


SLOW = """
import os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("slow", f"touch {os.environ['STARTED']};"
                       f" test -e {os.environ['RESUMED']} || sleep 30")
        await step.run("after", "cat new.txt")
"""


def test_resume_after_a_crash_forks_the_snapshot_from_the_store(
    cli: Any, repo_with: Any, home: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    repo = repo_with(SLOW)
    write(repo, {"new.txt": "from the snapshot\n"})
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "STARTED": str(started),
           "RESUMED": str(tmp_path / "resumed")}
    proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "run", "--json",
                             "--include-uncommitted"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    (run_id,) = [r[0] for r in sqlite3.connect(home / "ci-runner.db").execute(
        "SELECT id FROM instances")]
    # A crash and then a tidy-up of the checkouts: only the store still has the snapshot.
    subprocess.run(["rm", "-rf", str(home / "worktrees" / run_id)], check=True)
    write(repo, {"new.txt": "changed since\n"})
    (tmp_path / "resumed").touch()

    resumed = cli("resume", run_id, "--json", cwd=repo, env={"STARTED": str(started),
                                                           "RESUMED": str(tmp_path / "resumed")})

    assert resumed.code == 0, (resumed.out, resumed.err)
    assert resumed.json()["status"] == "complete"
    assert logs(cli, run_id, "after").strip() == "from the snapshot"


def test_retry_keeps_working_until_prune_takes_the_store(
    cli: Any, repo_with: Any, home: Path
) -> None:
    repo = repo_with(LIST_FILES.replace("big.bin", "a.txt"), {"a.txt": "a\n", "b.txt": "b\n"})
    write(repo, {"untracked/u.txt": "kept for retry\n"})
    first = cli("run", "--include-uncommitted", "--json", cwd=repo)
    assert first.code == 0, (first.out, first.err)
    run_id = first.json()["run_id"]
    (repo / "untracked" / "u.txt").unlink()

    again = cli("retry", run_id, "--json", cwd=repo)

    assert again.code == 0, (again.out, again.err)
    assert "kept for retry" in logs(cli, run_id, "content")
    stores = list((home / "snapshots").glob("*.git"))
    assert len(stores) == 1

    db = sqlite3.connect(home / "ci-runner.db")
    db.execute("UPDATE instances SET updated_at = updated_at - ?, created_at = created_at - ?",
               (40 * DAY, 40 * DAY))
    db.commit()
    for path in (home / "snapshots").rglob("*"):
        os.utime(path, (time.time() - 40 * DAY,) * 2, follow_symlinks=False)
    dry = cli("prune", "--older-than", "30 days", "--dry-run")
    assert dry.code == 0, dry.err
    assert "would delete" in dry.out and "snapshot object" in dry.out, dry.out
    assert stores[0].is_dir()
    pruned = cli("prune", "--older-than", "30 days", "--json")

    assert pruned.code == 0, pruned.err
    report = json.loads(pruned.out)
    assert report["runs"] == 1 and report["snapshot_objects"] >= 3, report
    assert report["problems"] == []
    assert not stores[0].exists()


def test_prune_keeps_what_a_remaining_run_needs(cli: Any, repo_with: Any, home: Path) -> None:
    repo = repo_with(LIST_FILES.replace("big.bin", "a.txt"), {"a.txt": "a\n", "b.txt": "b\n"})
    write(repo, {"untracked/u.txt": "old\n"})
    old = cli("run", "--include-uncommitted", "--json", cwd=repo).json()["run_id"]
    write(repo, {"untracked/u.txt": "new\n"})
    new = cli("run", "--include-uncommitted", "--json", cwd=repo).json()["run_id"]
    db = sqlite3.connect(home / "ci-runner.db")
    db.execute("UPDATE instances SET updated_at = updated_at - ?, created_at = created_at - ?"
               " WHERE id = ?", (40 * DAY, 40 * DAY, old))
    db.commit()
    for path in (home / "snapshots").rglob("*"):
        os.utime(path, (time.time() - 40 * DAY,) * 2, follow_symlinks=False)

    pruned = cli("prune", "--older-than", "30 days", "--json").json()

    assert pruned["runs"] == 1 and pruned["snapshot_objects"] >= 1, pruned
    # The remaining run's snapshot is whole: it runs again from the store.
    again = cli("retry", new, "--json", cwd=repo)
    assert again.code == 0, (again.out, again.err)
    assert "new" in logs(cli, new, "content")


def test_snapshots_taken_at_once_share_one_store(
    repo_with: Any, home: Path, tmp_path: Path
) -> None:
    repo_dir = repo_with(LIST_FILES, {"a.txt": "a\n"})
    repo = open_repo(repo_dir)
    before = git_dir_state(repo_dir)

    def take(i: int) -> str:
        (repo_dir / f"new{i}.txt").write_text(f"{i}\n")
        snapshot = snapshot_uncommitted(repo)
        assert file_at(snapshot.store, snapshot.sha, f"new{i}.txt") == f"{i}\n".encode()
        dest = tmp_path / f"w{i}"
        fork(snapshot.store, snapshot.sha, dest)
        assert (dest / f"new{i}.txt").read_text() == f"{i}\n"
        remove(snapshot.store, dest)
        return str(snapshot.store.root)

    with ThreadPoolExecutor(6) as pool:
        stores = set(pool.map(take, range(12)))

    assert len(stores) == 1 and Path(stores.pop()).parent == home / "snapshots"
    assert [p for p in (home / "snapshots").iterdir() if p.name.startswith(".")] == []
    assert git_dir_state(repo_dir) == before
