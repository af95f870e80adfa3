"""Real git repositories for tests, built with the git CLI so they never depend on ci-runner."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# Tests must not see the developer's ~/.gitconfig (signing, hooks, default branch).
ISOLATED_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(path: Path, *args: str) -> str:
    """Run git in ``path`` and return its stripped stdout; fail the test on error."""
    done = subprocess.run(
        ["git", *args],
        cwd=path,
        env={**os.environ, **ISOLATED_GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {path}: {done.stderr.strip()}")
    return done.stdout.strip()


def init_repo(path: Path) -> Path:
    """An empty repository on branch main with a local identity, and no commits."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "ci-runner tests")
    git(path, "config", "user.email", "tests@ci-runner.invalid")
    git(path, "config", "commit.gpgsign", "false")
    return path


def make_repo(path: Path, files: dict[str, str], *, message: str = "init") -> Path:
    """A repository on branch main whose first commit holds ``files``."""
    init_repo(path)
    commit(path, files, message)
    return path


def write(path: Path, files: dict[str, str]) -> None:
    """Write ``files`` (relative path -> text) under ``path``, making folders as needed."""
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def commit(path: Path, files: dict[str, str], message: str) -> str:
    """Write and commit ``files`` (and only them) on the current branch; return the sha."""
    write(path, files)
    if files:
        git(path, "add", "--", *files)
    git(path, "commit", "-q", "--allow-empty", "-m", message)
    return git(path, "rev-parse", "HEAD")
