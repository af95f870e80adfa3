"""Submodules in a run's worktree (issue 12): the ones the user initialized are checked
out at the commits the run's sha records, from the user's own clones (offline: every
URL here is a local folder, and none is ever used); those left empty are named in the
run's output with the reason; `submodules = False` or a list in the pipeline's class
chooses; an `ext::` URL in a commit's .gitmodules runs nothing. Through the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ci_runner.errors import UsageError
from ci_runner.workspace import open_repo, remove
from ci_runner.workspace.submodules import declared_submodules
from ci_runner.workspace.worktree import fork
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git, make_repo

PIPELINE = """
from pathlib import Path
from ci_runner import Pipline_placeholder

class CI(Pipeline):
    __OPTION__
    async def run(self, event, step):
        def seen():
            found = {}
            for path in ("vendor/lib", "vendor/lib/deep", "vendor/other"):
                folder = Path(event.workspace) / path
                found[path] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() \
                    else None
            return found

        await step.do("seen", seen)
        await step.run("status", ["git", "status", "--porcelain"])
""".replace("Pipline_placeholder", "Pipeline")


def _pipeline(option: str = "") -> str:
    return PIPELINE.replace("__OPTION__", option or "pass")


def _sub_git(path: Path, *args: str) -> str:
    """git with file:// allowed for `submodule add/update` (git refuses it since 2.38.1):
    what a user with local submodules does once, in their own clone."""
    return git(path, "-c", "protocol.file.allow=always", *args)


def _identity(repo: Path) -> None:
    git(repo, "config", "user.name", "ci-runner tests")
    git(repo, "config", "user.email", "tests@ci-runner.invalid")


@pytest.fixture
def superproject(tmp_path: Path) -> Callable[..., Path]:
    """A repo with submodules vendor/lib (which has vendor/lib/deep inside) and
    vendor/other, all initialized, committed with a pipeline (``option`` in its class)."""

    def make(option: str = "", *, init: bool = True) -> Path:
        deep = make_repo(tmp_path / "deep", {"deep.txt": "deep\n"})
        lib = make_repo(tmp_path / "lib", {"hello.txt": "hello\n"})
        _sub_git(lib, "submodule", "add", "-q", str(deep), "deep")
        commit(lib, {}, "add deep")
        other = make_repo(tmp_path / "other", {"other.txt": "other\n"})
        upstream = make_repo(tmp_path / "upstream", {".ci/pipeline.py": _pipeline(option)})
        _sub_git(upstream, "submodule", "add", "-q", str(lib), "vendor/lib")
        _sub_git(upstream, "submodule", "add", "-q", str(other), "vendor/other")
        commit(upstream, {}, "add submodules")
        # The user's clone, as `git clone` then `git submodule update --init --recursive`.
        clone = tmp_path / "proj"
        git(tmp_path, "clone", "-q", str(upstream), str(clone))
        _identity(clone)
        if init:
            _sub_git(clone, "submodule", "update", "-q", "--init", "--recursive")
            _identity(clone / "vendor/lib")
        return clone

    return make


def _run(cli: Callable[..., Any], repo: Path) -> tuple[Any, dict[str, Any]]:
    """Run the pipeline; the result, and its record with ``output``: what it saw."""
    result = cli("run", "--json", cwd=repo)
    record = result.json()
    db = sqlite3.connect(Path(os.environ["CI_RUNNER_HOME"]) / "ci-runner.db")
    try:
        (seen,) = db.execute("SELECT result FROM steps WHERE instance_id = ? AND name = 'seen'",
                             (record["run_id"],)).fetchone()
    finally:
        db.close()
    record["output"] = json.loads(seen)
    return result, record


def test_initialized_submodules_are_checked_out_at_the_recorded_commits(
        cli, superproject, home: Path):
    repo = superproject()
    lib_head = git(repo / "vendor/lib", "rev-parse", "HEAD")
    # The user's checkout of lib moves on; the run takes the commit recorded in the tree.
    commit(repo / "vendor/lib", {"later.txt": "later\n"}, "later")
    result, record = _run(cli, repo)
    assert result.code == 0, result.err
    assert record["output"] == {"vendor/lib": [".git", ".gitmodules", "deep", "hello.txt"],
                                "vendor/lib/deep": [".git", "deep.txt"],
                                "vendor/other": [".git", "other.txt"]}
    status_log = cli("logs", record["run_id"], "status", cwd=repo).out
    assert "vendor" not in status_log  # the superproject sees its submodules as recorded
    assert "note:" not in result.err
    # The user's clone is as it was, and the run's worktree is gone with its submodules.
    assert git(repo / "vendor/lib", "log", "-1", "--format=%s") == "later"
    assert git(repo / "vendor/lib", "rev-parse", "HEAD~1") == lib_head
    assert not any((home / "worktrees").iterdir())
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not (repo / ".git" / "modules" / "vendor" / "lib" / "worktrees").exists()


def test_a_snapshot_run_checks_out_the_submodules_too(cli, superproject, home: Path):
    # The snapshot lives in ci-runner's own store (issue 16), which finds the user's
    # submodule clones through its `modules` link.
    repo = superproject()
    (repo / "uncommitted.txt").write_text("wip\n")
    result = cli("run", "--json", "--include-uncommitted", cwd=repo)
    assert result.code == 0, result.err
    record = result.json()
    db = sqlite3.connect(home / "ci-runner.db")
    (seen,) = db.execute("SELECT result FROM steps WHERE instance_id = ? AND name = 'seen'",
                         (record["run_id"],)).fetchone()
    assert json.loads(seen) == {"vendor/lib": [".git", ".gitmodules", "deep", "hello.txt"],
                                "vendor/lib/deep": [".git", "deep.txt"],
                                "vendor/other": [".git", "other.txt"]}
    assert "note:" not in result.err
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_submodules_not_initialized_are_named_in_the_runs_output(cli, superproject):
    repo = superproject(init=False)
    result, record = _run(cli, repo)
    assert result.code == 0, result.err
    assert record["output"] == {"vendor/lib": [], "vendor/lib/deep": None,
                                "vendor/other": []}
    for path in ("vendor/lib", "vendor/other"):
        line = (f"submodule {path} not checked out: it is not initialized in your clone"
                f" (`git submodule update --init {path}` there, and runs check it out)")
        assert f"note: {line}" in result.err
        assert f"ci-runner: {line}" in cli("logs", record["run_id"], cwd=repo).out


def test_the_pipeline_chooses_none_or_some(cli, superproject):
    repo = superproject("submodules = False")
    result, record = _run(cli, repo)
    assert result.code == 0, result.err
    assert record["output"]["vendor/lib"] == [] and record["output"]["vendor/other"] == []
    assert ("note: submodules not checked out: the pipeline says submodules = False:"
            " vendor/lib, vendor/other") in result.err

    commit(repo, {".ci/pipeline.py": _pipeline('submodules = ["vendor/other"]')}, "some")
    result, record = _run(cli, repo)
    assert result.code == 0, result.err
    assert record["output"]["vendor/lib"] == []
    assert record["output"]["vendor/other"] == [".git", "other.txt"]
    assert ("note: submodule vendor/lib not checked out: not in the pipeline's submodules"
            " list") in result.err

    commit(repo, {".ci/pipeline.py": _pipeline("submodules = pick()")}, "computed")
    result = cli("run", cwd=repo)
    assert result.code == 2
    assert "CI.submodules must be True, False or a list of paths" in result.err


def test_a_commit_missing_from_the_users_clone_is_named(cli, superproject):
    repo = superproject()
    missing = "1" * 40
    git(repo, "update-index", "--cacheinfo", f"160000,{missing},vendor/other")
    git(repo, "commit", "-q", "-m", "point other at a commit nobody fetched")
    result, record = _run(cli, repo)
    assert result.code == 0, result.err
    assert record["output"]["vendor/other"] == []
    assert record["output"]["vendor/lib"] == [".git", ".gitmodules", "deep", "hello.txt"]
    assert (f"note: submodule vendor/other not checked out: its commit {missing[:12]} is not"
            " in your clone of it (`git submodule update vendor/other` fetches it)"
            in result.err)


def test_a_url_in_the_commit_is_never_used(cli, superproject, tmp_path: Path):
    """A commit's .gitmodules is anyone's: an ext:: URL is a command, a file path reads
    any repository on the machine. No URL is used, even with submodule.recurse set."""
    repo = superproject(init=False)
    pwned = tmp_path / "pwned"
    gitmodules = (repo / ".gitmodules").read_text()
    gitmodules = gitmodules.replace(str(tmp_path / "lib"), f"ext::sh -c touch% {pwned}")
    commit(repo, {".gitmodules": gitmodules}, "hostile url")
    git(repo, "config", "submodule.recurse", "true")
    git(repo, "config", "protocol.ext.allow", "always")
    git(repo, "submodule", "init")  # the hostile URL is now in the user's config too
    result, _record = _run(cli, repo)
    assert result.code == 0, result.err
    assert not pwned.exists()
    assert "submodule vendor/lib not checked out: it is not initialized" in result.err


def test_forks_of_a_bare_mirror_say_submodules_are_not_supported_there(
        superproject, tmp_path: Path):
    repo = superproject()
    mirror = tmp_path / "mirror.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(mirror))
    bare = open_repo(mirror)
    sha = git(mirror, "rev-parse", "HEAD")
    notes = fork(bare, sha, tmp_path / "wt")
    assert notes == ["submodules not checked out: webhook runs do not check out submodules"
                     " yet (not supported): vendor/lib, vendor/other"]
    remove(bare, tmp_path / "wt")
    assert not (tmp_path / "wt").exists()


def test_a_worktree_with_submodules_is_removed_whole(superproject, tmp_path: Path):
    repo = superproject()
    user = open_repo(repo)
    sha = git(repo, "rev-parse", "HEAD")
    assert fork(user, sha, tmp_path / "wt") == []
    assert (tmp_path / "wt" / "vendor/lib/deep/deep.txt").read_text() == "deep\n"
    # The submodule's copy shares the user's objects: nothing is copied or fetched.
    alternates = tmp_path / "wt" / "vendor/lib/.git/objects/info/alternates"
    assert str(repo / ".git" / "modules") in alternates.read_text()
    remove(user, tmp_path / "wt")
    assert not (tmp_path / "wt").exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "status", "--porcelain") == ""


def test_the_option_is_read_from_the_class_without_running_it():
    source = b"import os\nclass A(Pipeline):\n    submodules = ['x/', 'y']\n" \
             b"class B(Pipeline):\n    submodules: bool = False\n"
    assert declared_submodules(source, "A") == ["x", "y"]
    assert declared_submodules(source, "B") is False
    assert declared_submodules(source, "C") is True
    assert declared_submodules(b"class A:\n    pass\n") is True
    assert declared_submodules(None) is True
    with pytest.raises(UsageError, match="--pipeline NAME"):
        declared_submodules(source)
    with pytest.raises(UsageError, match="line 2"):
        declared_submodules(b"class A:\n    submodules = os.environ['X']\n")


def test_git_itself_would_refuse_these_local_urls(superproject, tmp_path: Path):
    """Why ci-runner clones from the user's clones rather than updating submodules: git's
    own `submodule update` refuses file URLs by default (protocol.file.allow=user)."""
    repo = superproject(init=False)
    done = subprocess.run(["git", "submodule", "update", "--init"], cwd=repo,
                          env={**os.environ, **ISOLATED_GIT_ENV}, capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0 and "transport 'file' not allowed" in done.stderr
