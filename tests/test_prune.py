"""`ci-runner prune`: old finished runs go with everything only they kept; live runs,
recent runs and shared artifact objects stay. Real CLI, real repos, real database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.gitrepos import git, write

DAY = 86400.0

PIPELINE = """
import os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        content = event.payload.get("content", "same")
        await step.run("build", f"echo building; mkdir -p dist; echo {content} > dist/out.txt",
                       artifacts=["dist/out.txt"])
        await step.run("cached", ["true"], inputs=["src/**"])
        if event.payload.get("gate"):
            await step.wait_for_approval("gate")
        if event.payload.get("fail"):
            raise RuntimeError("asked to fail")
"""


def _age(db: sqlite3.Connection, run_id: str, days: float) -> None:
    db.execute("UPDATE instances SET updated_at = updated_at - ?, created_at = created_at - ?"
               " WHERE id = ?", (days * DAY, days * DAY, run_id))
    db.commit()


def _objects(home: Path) -> dict[str, Path]:
    root = home / "artifacts" / "objects"
    return {p.name: p for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}


def test_prune_forgets_old_finished_runs_and_only_their_files(cli, repo_with, home: Path):
    repo = repo_with(PIPELINE, {"src/app.py": "x = 1\n"})
    old_ok = cli("run", "--json", "-p", "content=only-old", cwd=repo).json()["run_id"]
    old_failed = cli("run", "--json", "-p", "fail=1", cwd=repo).json()["run_id"]
    old_kept = cli("run", "--json", "--keep-workspace", cwd=repo).json()
    write(repo, {"src/new.py": "y = 2\n"})  # uncommitted: a snapshot run holds a ref
    old_snapshot = cli("run", "--json", "--include-uncommitted", cwd=repo).json()["run_id"]
    old_waiting = cli("run", "--json", "-p", "gate=1", cwd=repo)
    assert old_waiting.code == 3, old_waiting.err
    old_waiting_id = old_waiting.json()["run_id"]
    recent = cli("run", "--json", cwd=repo).json()["run_id"]  # shares "same" with old runs
    assert Path(old_kept["workspace"]).is_dir()
    assert git(repo, "for-each-ref", "refs/ci-runner/runs/") == ""  # released at the end

    db = sqlite3.connect(home / "ci-runner.db")
    old = [old_ok, old_failed, old_kept["run_id"], old_snapshot, old_waiting_id]
    for run_id in old:
        _age(db, run_id, 40)
    db.execute("UPDATE step_cache SET created_at = created_at - ?", (40 * DAY,))
    db.commit()
    objects = _objects(home)
    for path in objects.values():
        os.utime(path, (time.time() - 40 * DAY, time.time() - 40 * DAY))
    only_old = [sha for sha, _ in db.execute(
        "SELECT sha256, 1 FROM artifacts WHERE instance_id = ?", (old_ok,))]
    shared = [sha for sha, _ in db.execute(
        "SELECT sha256, 1 FROM artifacts WHERE instance_id = ?", (recent,))]
    assert only_old and shared and set(only_old).isdisjoint(shared)
    before = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    dry = cli("prune", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["runs"] == 4 and dry.json()["objects"] == 1
    assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == before
    assert _objects(home) == objects and Path(old_kept["workspace"]).is_dir()

    done = cli("prune", "--older-than", "30 days", "--json")

    assert done.code == 0, done.err
    report = done.json()
    assert report["runs"] == 4 and report["objects"] == 1 and report["cache_entries"] >= 1
    assert report["bytes_freed"] > 0 and report["problems"] == []
    left = {r[0] for r in db.execute("SELECT id FROM instances")}
    assert left == {old_waiting_id, recent}  # a waiting run stays, however old
    for run_id in (old_ok, old_failed, old_kept["run_id"], old_snapshot):
        assert not (home / "logs" / run_id).exists()
        for table, column in (("steps", "instance_id"), ("artifacts", "instance_id")):
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?",
                              (run_id,)).fetchone()[0] == 0
    assert (home / "logs" / recent).is_dir() and (home / "logs" / old_waiting_id).is_dir()
    assert not Path(old_kept["workspace"]).exists()
    assert old_kept["run_id"] not in git(repo, "worktree", "list")
    assert set(_objects(home)) == set(objects) - set(only_old)
    assert set(shared) <= set(_objects(home))
    # The waiting run still works: approve it and it finishes.
    assert cli("approve", old_waiting_id).code == 0
    assert cli("show", old_waiting_id, "--json").json()["status"] == "complete"

    again = cli("prune", "--json").json()
    assert again["runs"] == 0 and again["objects"] == 0


def test_prune_forgets_settled_deliveries_and_gcs_mirrors(cli, home: Path, tmp_path: Path):
    assert cli("runs").code == 0  # creates the database
    db = sqlite3.connect(home / "ci-runner.db")
    old, new = time.time() - 40 * DAY, time.time()
    rows = [("d-old-superseded", "superseded", old), ("d-old-failed", "failed", old),
            ("d-old-accepted", "accepted", old), ("d-new-superseded", "superseded", new)]
    for delivery, state, at in rows:
        db.execute(
            "INSERT INTO deliveries (forge, delivery_id, repo, event, sha, lane, state,"
            " received_at, updated_at) VALUES ('github', ?, 'o/r', 'push', ?, 'branch:main',"
            " ?, ?, ?)", (delivery, "a" * 40, state, at, at))
    db.commit()
    mirror = home / "mirrors" / "github" / "o" / "r.git"
    mirror.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "--bare", str(mirror)], check=True)

    done = cli("prune", "--json")

    assert done.code == 0, done.err
    assert done.json()["deliveries"] == 2 and done.json()["mirrors_gc"] == 1
    kept = {r[0] for r in db.execute("SELECT delivery_id FROM deliveries")}
    assert kept == {"d-old-accepted", "d-new-superseded"}  # not processed yet; too new


def test_prune_refuses_a_bad_age(cli):
    bad = cli("prune", "--older-than", "soon")
    assert bad.code == 2
    assert bad.err.strip().splitlines() == [
        "error: --older-than 'soon' is not a duration: use seconds or"
        " 'N second|minute|hour|day|week[s]'"]
    human = cli("prune", "--older-than", "2 weeks")
    assert human.code == 0 and human.out.startswith("removed 0 runs that ended over 2 weeks ago")
    assert json.loads(cli("prune", "--json").out)["runs"] == 0


def test_the_servers_janitor_prunes_in_the_background(cli, repo_with, home: Path):
    from ci_runner.server.janitor import Janitor

    repo = repo_with(PIPELINE, {"src/app.py": "x = 1\n"})
    old = cli("run", "--json", cwd=repo).json()["run_id"]
    new = cli("run", "--json", cwd=repo).json()["run_id"]
    db = sqlite3.connect(home / "ci-runner.db")
    _age(db, old, 3)
    janitor = Janitor(2 * DAY, home / "ci-runner.db", first_s=0.01, every_s=0.05)
    janitor.start()
    try:
        deadline = time.time() + 20
        while db.execute("SELECT COUNT(*) FROM instances WHERE id = ?", (old,)).fetchone()[0]:
            assert time.time() < deadline, "the janitor never pruned the old run"
            time.sleep(0.05)
    finally:
        janitor.stop()
    assert {r[0] for r in db.execute("SELECT id FROM instances")} == {new}
    assert not (home / "logs" / old).exists()

    _age(db, new, 3)
    off = Janitor(None, home / "ci-runner.db", first_s=0.0, every_s=0.01)
    off.start()  # no retention configured: no thread, nothing pruned
    time.sleep(0.2)
    off.stop()
    assert off._thread.ident is None  # never started
    assert {r[0] for r in db.execute("SELECT id FROM instances")} == {new}
