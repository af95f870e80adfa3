"""inputs= patterns match what git's own :(glob) pathspecs match, on a real repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ci_runner.errors import UsageError
from ci_runner.workspace.inputs import TreeIndex
from tests.gitrepos import ISOLATED_GIT_ENV, make_repo

FILES = [
    "pyproject.toml", "README.md", "setup.cfg", "a.py", "src/a.py", "src/b.txt",
    "src/pkg/c.py", "src/pkg/deep/d.py", "docs/index.md", "docs/api/x.md",
    "tests/test_a.py", "tests/data/t.json", "src2/e.py", "x/src/f.py",
]
PATTERNS = [
    "src/**", "src/*.py", "**/*.py", "*.py", "docs", "docs/", "pyproject.toml",
    "src/**/*.py", "**/data/**", "tests/test_?.py", "src/[ab].*", "*", "**",
    "x/**/f.py", "src/pkg",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("inputs") / "r", {f: f"{f}\n" for f in FILES})


def git_glob(repo: Path, pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--", f":(glob){pattern}"], cwd=repo,
                         capture_output=True, text=True, check=True,
                         env={**ISOLATED_GIT_ENV, "PATH": "/usr/bin:/bin"}).stdout
    return sorted(p for p in out.split("\0") if p)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_patterns_match_like_git(repo: Path, pattern: str) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    ours = [path for path, _ in TreeIndex(repo, head).match([pattern])]
    assert ours == git_glob(repo, pattern.rstrip("/") + ("/**" if pattern.endswith("/")
                                                          else ""))


@pytest.mark.parametrize("bad", ["", ":(exclude)x", "-rf", "../up", "a/../../b"])
def test_bad_patterns_are_refused(repo: Path, bad: str) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    with pytest.raises(UsageError):
        TreeIndex(repo, head).match([bad])
