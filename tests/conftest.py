"""Shared fixtures: a private CI_RUNNER_HOME per test and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.gitrepos import ISOLATED_GIT_ENV, make_repo

if TYPE_CHECKING:
    from tests.pgserver import PgServer

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGE_PREFIX = "ci-runner-test/"


def pytest_configure(config: pytest.Config) -> None:
    # The tests start the CLI hundreds of times; with PYTHONDONTWRITEBYTECODE=1 each
    # start would recompile the package. Write its bytecode once, as pip install does.
    import compileall

    compileall.compile_dir(str(ROOT / "ci_runner"), quiet=1)
    # Most end-to-end tests watch what a pipeline does through files and variables
    # outside its worktree (a ledger of steps run across crashes and resumes), which
    # the sandbox rightly hides. They run unsandboxed; the sandbox has suites of its
    # own (test_sandbox.py, test_isolation_*.py) and test_cli_e2e.py runs its core
    # pipelines in every sandbox the machine has. Each of those says --sandbox itself.
    os.environ["CI_RUNNER_SANDBOX"] = "off"
    # The suite builds, rebuilds and removes sandbox images: under a namespace of its
    # own, never a user's ci-runner/* images (ci_runner/images.py; test_images_prefix.py).
    os.environ["CI_RUNNER_IMAGE_PREFIX"] = TEST_IMAGE_PREFIX


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CI_RUNNER_HOME, also set for in-process code under test."""
    path = tmp_path / "home"
    monkeypatch.setenv("CI_RUNNER_HOME", str(path))
    return path


@pytest.fixture
def cli(home: Path) -> Callable[..., Result]:
    """Run `python -m ci_runner ARGS` for real; returns its exit code and output.

    In ``cwd``, else in the test's tmp folder: a command run inside a git repository
    (this one) would see only that repository's runs (`runs`, `latest`)."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
        full_env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
                    "PYTHONPATH": str(ROOT), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "ci_runner", *args], check=False,
            cwd=home.parent if cwd is None else cwd, env=full_env,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def repo_with(tmp_path: Path) -> Callable[..., Path]:
    """A real git repo with a .ci/pipeline.py (and other files), committed on main."""

    def make(pipeline: str, files: dict[str, str] | None = None, name: str = "proj") -> Path:
        return make_repo(tmp_path / name, {".ci/pipeline.py": pipeline, **(files or {})})

    return make


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session, started by the first test asking."""
    from tests.pgserver import running_server

    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test; its URL."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store under test, once per backend: a SQLite file's path or a database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "engine.db")
    return str(request.getfixturevalue("pg_url"))
