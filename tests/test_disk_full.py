"""A step that fills the disk: one clear line and a non-zero exit, nothing committed lost,
the run's worktree freed and the run failed (so no driver runs it into the same wall
again), and `cancel` works on a full disk (it frees the run's worktree before it
writes). CI_RUNNER_HOME is a small tmpfs the test mounts (root only)."""

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

WAITS = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("ok", ["echo", "fine"])
        await step.wait_for_approval("gate")
'''


@pytest.fixture
def small_home(tmp_path: Path):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":  # CI runs as root: these must run there
            pytest.fail("CI=true, so the full-disk tests must run: they need root")
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


def test_a_step_that_fills_the_disk_fails_its_run_and_frees_the_space(
    small_home: Path, tmp_path: Path,
):
    repo = make_repo(tmp_path / "fills", {".ci/pipeline.py": FILLS})
    done = _cli(small_home, "run", "--sandbox", "off", cwd=repo)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk filled up" in errors[0], done.stderr
    db = sqlite3.connect(small_home / "ci-runner.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    status, error = db.execute("SELECT status, error FROM instances").fetchone()
    assert status == "errored" and "its worktree was removed" in error
    assert db.execute("SELECT status FROM steps WHERE name = 'ok'").fetchone()[0] == "complete"
    assert not list((small_home / "worktrees").iterdir())  # the space is back
    again = _cli(small_home, "run", "--sandbox", "off", "--only", "ok", cwd=repo)
    assert again.returncode == 0, again.stderr  # and the next run has room


def test_cancel_works_on_a_full_disk(small_home: Path, tmp_path: Path):
    repo = make_repo(tmp_path / "waits", {".ci/pipeline.py": WAITS})
    waiting = _cli(small_home, "run", "--sandbox", "off", "--keep-workspace", cwd=repo)
    assert waiting.returncode == 3, waiting.stderr
    db = sqlite3.connect(small_home / "ci-runner.db")
    (run_id,) = db.execute("SELECT id FROM instances").fetchone()
    db.close()
    (workspace,) = (small_home / "worktrees").iterdir()
    with (workspace / "filler").open("wb") as f:  # the run's worktree takes the rest
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    cancelled = _cli(small_home, "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    db = sqlite3.connect(small_home / "ci-runner.db")
    assert db.execute("SELECT status FROM instances").fetchone()[0] == "terminated"
    assert not list((small_home / "worktrees").iterdir())


def test_the_server_keeps_serving_the_tenants_that_do_not_fill_the_disk(
    small_home: Path, tmp_path: Path,
):
    from tests import serverkit as kit
    from tests.gitrepos import git

    filler = make_repo(tmp_path / "filler", {".ci/pipeline.py": FILLS})
    other = make_repo(tmp_path / "other", {".ci/pipeline.py": (
        "from ci_runner import Pipeline\n"
        "class CI(Pipeline):\n"
        "    async def run(self, event, step):\n"
        "        await step.run('ok', ['echo', 'fine'])\n")})
    config = kit.write_config(tmp_path / "c.yml", [
        kit.repo_entry("github", "Codertocat/Hello-World", filler),
        kit.repo_entry("gitea", "gogits/hello-world", other)], sandbox="off")
    server = kit.Server(config, small_home).start()
    try:
        assert server.post("github", kit.github_push(git(filler, "rev-parse", "HEAD")),
                           event="push", delivery="fills").status_code == 202

        def failed() -> list[dict]:
            found = [r for r in kit.runs(small_home) if r["status"] == "errored"]
            return found

        (run,) = kit.wait_for(failed, timeout=60, what="the filling run to fail")
        (error,) = kit.rows(small_home, "SELECT error FROM instances WHERE id = ?", run["id"])[0]
        assert "the disk filled up" in error
        assert server.http.get("/health").status_code == 200
        assert server.post("gitea", kit.gitea_push(git(other, "rev-parse", "HEAD")),
                           event="push", delivery="other").status_code == 202
        done = kit.wait_for(lambda: [r for r in kit.runs(small_home)
                                     if r["status"] == "complete"], timeout=60,
                            what="the other tenant's run")
        assert done[0]["meta"]["repo_name"] == "gogits/hello-world"
        # The failed run is not driven again into the same wall.
        assert [r["status"] for r in kit.runs(small_home)].count("errored") == 1
    finally:
        server.stop()
        server.close()
