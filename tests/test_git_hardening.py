"""ci-runner's own git calls never run what a repository's config or hooks name.

Issue 10's attack: a fork pull request's pipeline wrote ``core.fsmonitor`` into its
tenant's bare mirror, and the server's next ``git worktree add`` ran it. Each test here
plants such settings (fsmonitor, hooks in ``hooks/`` and under ``core.hooksPath``, a
smudge filter named by the tree's ``.gitattributes``, an ``ext::`` URL rewrite) in a real
repository, then drives ci-runner's real code paths and looks for the marker file the
planted commands would write. A positive control shows each plant fires under plain git.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ci_runner import prune as pruning
from ci_runner.store import connect
from ci_runner.workspace import (
    file_at,
    fork,
    hold,
    open_repo,
    release,
    remove,
    resolve_rev,
    snapshot_uncommitted,
)
from ci_runner.workspace.mirror import ensure_mirror, fetch, mirror_path
from tests import serverkit as kit
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git, make_repo, write

HOOKS = ("post-checkout", "reference-transaction", "post-index-change", "pre-auto-gc",
         "post-commit", "pre-commit")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in ISOLATED_GIT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("CI_RUNNER_HOME", str(tmp_path / "home"))


class Plant:
    """An executable that appends its name and arguments to ``log`` when anything runs it."""

    def __init__(self, root: Path) -> None:
        self.log = root / "ran.log"
        self.script = self.write(root / "plant.sh")
        self.hooks = root / "planted-hooks"
        for hook in HOOKS:
            self.write(self.hooks / hook)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "$0 $*" >> {self.log}\n', encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def ran(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)

    def into(self, git_dir: Path, *, source: Path | None = None) -> None:
        """What a hostile pipeline writes into the repository at ``git_dir``."""
        config = str(git_dir / "config")
        settings = [
            ("core.fsmonitor", str(self.script)),
            ("filter.evil.smudge", f"{self.script} smudge"),
            ("filter.evil.clean", f"{self.script} clean"),
            ("core.hooksPath", str(self.hooks)),
            ("protocol.ext.allow", "always"),
            ("gc.auto", "1"),
        ]
        if source is not None:  # a fetch of the clone URL would run the command instead
            settings.append((f"url.ext::sh -c {self.script}% ext.insteadOf", str(source)))
        for key, value in settings:
            git(git_dir, "config", "--file", config, key, value)
        for hook in HOOKS:
            self.write(git_dir / "hooks" / hook)


@pytest.fixture
def plant(tmp_path: Path) -> Plant:
    return Plant(tmp_path / "attacker")


def _source(root: Path) -> Path:
    # A tree whose .gitattributes names the planted filter for every .txt file.
    return make_repo(root, {"a.txt": "plain text\n", ".gitattributes": "*.txt filter=evil\n"})


def _config_keys(git_dir: Path) -> list[str]:
    out = git(git_dir, "config", "--file", str(git_dir / "config"), "--null", "--list")
    return [entry.split("\n", 1)[0] for entry in out.split("\0") if entry]


# -- the positive control -------------------------------------------------------------


def test_the_plants_fire_under_plain_git(tmp_path: Path, plant: Plant):
    source = _source(tmp_path / "source")
    mirror = tmp_path / "plain.git"
    git(tmp_path, "init", "-q", "--bare", str(mirror))
    git(mirror, "fetch", "-q", str(source), "+main:refs/heads/main")
    plant.into(mirror)
    git(mirror, "worktree", "add", "-q", "--detach", str(tmp_path / "wt"), "main")
    ran = plant.ran()
    assert "post-checkout" in ran and "smudge" in ran and "plant.sh 2 " in ran  # fsmonitor
    plant.reset()
    plant.into(mirror, source=source)
    done = subprocess.run(["git", "fetch", "-q", str(source), "main"], cwd=mirror,
                          capture_output=True, check=False,
                          env={**os.environ, **ISOLATED_GIT_ENV})
    assert done.returncode != 0 and plant.ran()  # the ext:: URL ran the command


# -- a mirror: reset before every fetch and every worktree ------------------------------


@pytest.mark.parametrize("entry", ["ensure_mirror", "fetch", "fork"])
def test_a_tampered_mirror_is_reset_and_runs_nothing(
    tmp_path: Path, plant: Plant, caplog: pytest.LogCaptureFixture, entry: str
):
    source = _source(tmp_path / "source")
    first = git(source, "rev-parse", "HEAD")
    mirror = ensure_mirror(mirror_path("github", "octo/repo"))
    fetch(mirror, str(source), first, into="refs/ci-runner/heads/main")
    clean = (mirror.root / "config").read_bytes()
    second = commit(source, {"b.txt": "more text\n"}, "second")
    plant.into(mirror.root, source=source)

    with caplog.at_level(logging.WARNING, logger="ci_runner.workspace"):
        if entry == "ensure_mirror":
            mirror = ensure_mirror(mirror_path("github", "octo/repo"))
        elif entry == "fetch":
            fetch(mirror, str(source), second, into="refs/ci-runner/heads/main")
        else:
            fork(mirror, first, tmp_path / "wt-first")
    assert (mirror.root / "config").read_bytes() == clean, "the config was not reset"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "core.fsmonitor" in warnings[0], warnings
    assert str(mirror.root) in warnings[0]

    # The rest of a delivery's path, as the server walks it.
    fetch(mirror, str(source), second, into="refs/ci-runner/heads/main")
    dest = tmp_path / "wt"
    fork(mirror, second, dest)
    assert (dest / "a.txt").read_text() == "plain text\n"  # no smudge filter ran
    assert resolve_rev(mirror, second).sha == second
    assert file_at(mirror, second, "b.txt") == b"more text\n"
    remove(mirror, dest)
    assert plant.ran() == ""
    assert sorted(_config_keys(mirror.root)) == sorted(
        ["core.repositoryformatversion", "core.filemode", "core.bare", "gc.auto"])
    assert not [h.name for h in (mirror.root / "hooks").iterdir()
                if not h.name.endswith(".sample")]  # git's samples, which never run, stay
    assert git(mirror.root, "config", "gc.auto") == "0"


def test_a_replace_ref_written_into_a_mirror_does_not_change_what_a_sha_checks_out(
    tmp_path: Path,
):
    source = _source(tmp_path / "source")
    ordinary = git(source, "rev-parse", "HEAD")
    hostile = commit(source, {"a.txt": "the writer's text\n"}, "hostile")
    mirror = ensure_mirror(mirror_path("github", "octo/repo"))
    fetch(mirror, str(source), ordinary, into="refs/ci-runner/heads/main")
    fetch(mirror, str(source), hostile, into="refs/ci-runner/pull/1")
    git(mirror.root, "update-ref", f"refs/replace/{ordinary}", hostile)
    assert git(mirror.root, "show", f"{ordinary}:a.txt") == "the writer's text"  # plain git
    fork(mirror, ordinary, tmp_path / "wt")
    assert (tmp_path / "wt" / "a.txt").read_text() == "plain text\n"
    assert file_at(mirror, ordinary, "a.txt") == b"plain text\n"


def test_a_mirror_config_ci_runner_wrote_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    source = _source(tmp_path / "source")
    sha = git(source, "rev-parse", "HEAD")
    with caplog.at_level(logging.WARNING, logger="ci_runner.workspace"):
        mirror = ensure_mirror(mirror_path("gitea", "octo/repo"))
        config = mirror.root / "config"
        before = (config.read_bytes(), config.stat().st_ino)
        fetch(mirror, str(source), sha, into="refs/ci-runner/heads/main")
        fork(mirror, sha, tmp_path / "wt")
        remove(mirror, tmp_path / "wt")
        ensure_mirror(mirror_path("gitea", "octo/repo"))
    assert (config.read_bytes(), config.stat().st_ino) == before  # not even rewritten
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_mirror_config_git_cannot_read_is_replaced(tmp_path: Path):
    source = _source(tmp_path / "source")
    sha = git(source, "rev-parse", "HEAD")
    mirror = ensure_mirror(mirror_path("gitlab", "octo/repo"))
    fetch(mirror, str(source), sha, into="refs/ci-runner/heads/main")
    (mirror.root / "config").write_text("[core\n\tfsmonitor = nope\n", encoding="utf-8")
    fork(mirror, sha, tmp_path / "wt")
    assert "fsmonitor" not in (mirror.root / "config").read_text()


def test_prune_resets_a_tampered_mirror_before_its_gc(tmp_path: Path, plant: Plant):
    source = _source(tmp_path / "source")
    mirror = ensure_mirror(mirror_path("github", "octo/repo"))
    fetch(mirror, str(source), git(source, "rev-parse", "HEAD"), into="refs/ci-runner/heads/x")
    plant.into(mirror.root)
    home = Path(os.environ["CI_RUNNER_HOME"])
    conn = connect(home / "ci-runner.db")
    try:
        done = pruning.prune(conn, older_than_s=0)
    finally:
        conn.close()
    assert done.mirrors_gc == 1, done.problems
    assert "core.fsmonitor" not in _config_keys(mirror.root)
    assert plant.ran() == ""


# -- the user's own repository: their config stays, ci-runner's calls ignore it ---------


@pytest.mark.parametrize("where", ["hooks folder", "core.hooksPath"])
def test_a_users_repo_keeps_its_config_and_runs_none_of_it(
    tmp_path: Path, plant: Plant, where: str
):
    repo_dir = make_repo(tmp_path / "proj", {"a.txt": "a\n"})
    git_dir = repo_dir / ".git"
    git(repo_dir, "config", "core.fsmonitor", str(plant.script))
    if where == "core.hooksPath":
        git(repo_dir, "config", "core.hooksPath", str(plant.hooks))
    else:
        for hook in HOOKS:
            plant.write(git_dir / "hooks" / hook)
    config = (git_dir / "config").read_bytes()
    write(repo_dir, {"a.txt": "changed\n", "new.txt": "untracked\n"})

    repo = open_repo(repo_dir)
    head = resolve_rev(repo).sha
    snap = snapshot_uncommitted(repo)
    hold(snap.store, "run-1", snap.sha)
    dest = tmp_path / "wt"
    fork(snap.store, snap.sha, dest)
    assert (dest / "new.txt").read_text() == "untracked\n"
    assert file_at(snap.store, snap.sha, "a.txt") == b"changed\n"
    remove(snap.store, dest)
    release(snap.store, "run-1")
    fork(repo, head, dest)
    remove(repo, dest)

    assert plant.ran() == ""
    assert (git_dir / "config").read_bytes() == config  # the user's, untouched
    # The control: the same repository does run them under plain git.
    git(repo_dir, "worktree", "add", "-q", "--detach", str(tmp_path / "plain"), head)
    assert "post-checkout" in plant.ran()


def test_a_users_own_filters_still_apply(tmp_path: Path):
    # Their filters are their tools (git-lfs is one): a run's checkout looks like theirs.
    repo_dir = make_repo(tmp_path / "proj", {"a.txt": "lower\n",
                                             ".gitattributes": "*.txt filter=upper\n"})
    git(repo_dir, "config", "filter.upper.smudge", "tr a-z A-Z")
    repo = open_repo(repo_dir)
    fork(repo, resolve_rev(repo).sha, tmp_path / "wt")
    assert (tmp_path / "wt" / "a.txt").read_text() == "LOWER\n"


# -- the attack of issue 10, through the real server -----------------------------------

PIPELINE = """
import os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        if os.path.exists("TAMPER"):  # the hostile run: writes into the mirror's config
            await step.run("tamper", ["sh", "-e", "TAMPER"], check=False)
        await step.run("read", ["cat", "a.txt"])
        return {"a": open("a.txt").read()}
"""


@pytest.mark.slow
def test_a_pipeline_that_writes_its_mirrors_config_runs_nothing_in_the_next_run(
    tmp_path: Path, plant: Plant
):
    tamper = "\n".join([
        f"git config core.fsmonitor '{plant.script}'",
        f"git config filter.evil.smudge '{plant.script} smudge'",
        f"git config core.hooksPath '{plant.hooks}'",
        *(f"cp '{plant.hooks / h}' \"$(git rev-parse --git-common-dir)/hooks/{h}\""
          for h in HOOKS),
    ])
    source = make_repo(tmp_path / "source", {".ci/pipeline.py": PIPELINE, "TAMPER": tamper,
                                             "a.txt": "plain\n",
                                             ".gitattributes": "*.txt filter=evil\n"})
    hostile = git(source, "rev-parse", "HEAD")
    git(source, "rm", "-q", "TAMPER")
    ordinary = commit(source, {}, "an ordinary push")
    config = kit.write_config(tmp_path / "c.yml", [
        kit.repo_entry("github", "Codertocat/Hello-World", source)])
    home = tmp_path / "home"
    server = kit.Server(config, home).start()
    try:
        assert server.post("github", kit.github_push(hostile), event="push",
                           delivery="hostile").status_code == 202
        first = kit.wait_for(kit.settled(home, 1), timeout=60, what="the hostile run")
        assert first[0]["status"] == "complete", server.output()
        mirror = mirror_path("github", "Codertocat/Hello-World")
        assert plant.ran() == ""  # nothing ran when its worktree was removed
        if "core.fsmonitor" not in _config_keys(mirror):
            # A sandbox kept the run out of the mirror; plant what it would have written,
            # since the server's own git calls must hold without one.
            plant.into(mirror)

        assert server.post("github", kit.github_push(ordinary), event="push",
                           delivery="ordinary").status_code == 202
        found = kit.wait_for(kit.settled(home, 2), timeout=60, what="the ordinary run")
        run = next(r for r in found if r["meta"]["sha"] == ordinary)
        assert run["status"] == "complete", server.output()
        output = kit.rows(home, "SELECT output FROM instances WHERE id = ?", run["id"])[0][0]
        assert json.loads(output) == {"a": "plain\n"}  # checked out without the filter
        assert plant.ran() == "", plant.ran()
        assert "core.fsmonitor" not in _config_keys(mirror)
        assert "reset" in server.output() and "core.fsmonitor" in server.output()
    finally:
        server.stop()
        server.close()
