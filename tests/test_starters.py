"""The starters `ci-runner init` writes pass out of the box on a fresh repo of their kind,
run through the real CLI.

- node: with real npm (a project without dependencies needs no network): `npm install`
  without a lockfile, `npm ci` with one; a failing lint lets the tests finish.
- python: the real starter, the real venv and pip, offline: pip finds only a wheelhouse
  of stand-in `pytest` and `ruff` (they record that they ran, and fail when told to), and
  the project builds with a backend of its own (no setuptools to download). What it shows
  is the starter's logic: the environment is built once per content of its inputs and
  reused while they are unchanged, each run installs its own copy of the project, and a
  failing lint lets the tests finish. Real pytest and ruff from an index work the same
  way (checked by hand where an index is reachable).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result
from tests.gitrepos import commit, git, init_repo, make_repo

Cli = Callable[..., Result]
RUN_TIMEOUT_S = 240.0


def steps(record: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


@pytest.fixture
def step_home(tmp_path: Path) -> Path:
    """The HOME the steps see (sandbox off: the runner's), with nothing of the user's."""
    home = tmp_path / "step-home"
    home.mkdir()
    return home


def init_and_commit(cli: Cli, repo: Path, expected: str) -> None:
    wrote = cli("init", cwd=repo)
    assert wrote.code == 0, wrote.err
    assert f"starter {expected!r}" in wrote.out
    git(repo, "add", ".ci/pipeline.py")
    git(repo, "commit", "-q", "-m", "ci")


# -- node -----------------------------------------------------------------------------


def need_npm() -> None:
    if shutil.which("npm") and shutil.which("node"):
        return
    message = "npm and node are needed (Debian: apt-get install npm; scripts/node-tools.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


NODE_FILES = {
    "package.json": json.dumps({
        "name": "fresh", "version": "1.0.0", "private": True,
        "scripts": {"test": "node --test", "lint": "node lint.js"},
    }, indent=2) + "\n",
    # Fails when told to, at once; the tests take a moment, so they are still running.
    "lint.js": "const fs = require('fs');\n"
               "if (fs.existsSync('LINT_FAILS')) { console.error('lint: error: no'); "
               "process.exit(1); }\nconsole.log('lint ok');\n",
    "test/add.test.js": "const test = require('node:test');\n"
                        "const assert = require('node:assert');\n"
                        "test('adds', async () => {\n"
                        "  await new Promise((done) => setTimeout(done, 1500));\n"
                        "  assert.strictEqual(1 + 1, 2);\n});\n",
}


def npm_env(step_home: Path) -> dict[str, str]:
    (step_home / ".npmrc").write_text("update-notifier=false\nfund=false\naudit=false\n")
    return {"HOME": str(step_home)}


def test_node_starter_passes_on_a_fresh_repo_without_a_lockfile_then_with_one(
    cli: Cli, tmp_path: Path, step_home: Path
) -> None:
    need_npm()
    env = npm_env(step_home)
    repo = make_repo(tmp_path / "fresh", NODE_FILES)
    init_and_commit(cli, repo, "node")

    first = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)

    assert first.code == 0, (first.out, first.err)
    record = first.json()
    assert steps(record) == {"install": "complete", "lint": "complete", "test": "complete"}
    install = cli("logs", record["run_id"], "install").out
    assert "npm install" in install and "npm ci" not in install

    # With the lockfile committed, the install is `npm ci`.
    locked = cli("run", "--json", "--keep-workspace", cwd=repo, env=env,
                 timeout=RUN_TIMEOUT_S)
    lockfile = Path(locked.json()["workspace"]) / "package-lock.json"
    commit(repo, {"package-lock.json": lockfile.read_text()}, "lock")
    again = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)
    assert again.code == 0, (again.out, again.err)
    assert "npm ci" in cli("logs", again.json()["run_id"], "install").out

    # A failing lint does not stop the tests: both outcomes are shown.
    commit(repo, {"LINT_FAILS": "yes\n"}, "break the lint")
    broken = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)
    assert broken.code == 1
    assert steps(broken.json()) == {"install": "complete", "lint": "failed",
                                    "test": "complete"}


def test_node_starter_on_npm_inits_placeholder_says_there_are_no_tests(
    cli: Cli, tmp_path: Path, step_home: Path
) -> None:
    need_npm()
    env = npm_env(step_home)
    package = {"name": "blank", "version": "1.0.0", "scripts": {
        "test": 'echo "Error: no test specified" && exit 1'}}
    repo = make_repo(tmp_path / "blank", {"package.json": json.dumps(package)})
    init_and_commit(cli, repo, "node")

    done = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert steps(record) == {"install": "complete", "lint": "complete",
                             "no tests yet": "complete"}
    assert "add one" in cli("logs", record["run_id"], "no tests yet").out


# -- python ---------------------------------------------------------------------------


def wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel of ``files`` (what pip needs of one: METADATA, WHEEL, RECORD)."""
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\n"
             f"Version: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
             "Tag: py3-none-any\n"}
    records = []
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            data = text.encode()
            archive.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{member},sha256={digest.decode()},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*records, f"{info}/RECORD,,"]) + "\n")
    return path


def stand_in_tools(wheelhouse: Path, ledger: Path) -> None:
    """`pytest` and `ruff` wheels whose `python -m` writes a line to ``ledger``."""
    wheelhouse.mkdir()
    ruff = f"""
import pathlib, sys
with open({str(ledger)!r}, "a") as out:
    out.write("ruff\\n")
if pathlib.Path("LINT_FAILS").exists():
    print("src/demo/__init__.py:1:8: F401 `os` imported but unused")
    sys.exit(1)
print("All checks passed!")
"""
    pytest_main = f"""
import time
from importlib.metadata import PackageNotFoundError, version
import demo
time.sleep(1.5)  # still running when the lint fails
try:
    installed = version("demo")
except PackageNotFoundError:
    installed = None
with open({str(ledger)!r}, "a") as out:
    out.write(f"pytest demo={{demo.VALUE}} version={{installed}} from={{demo.__file__}}\\n")
print("1 passed")
"""
    wheel(wheelhouse, "ruff", "99.0", {"ruff/__init__.py": "", "ruff/__main__.py": ruff})
    wheel(wheelhouse, "pytest", "99.0", {"pytest/__init__.py": "",
                                         "pytest/__main__.py": pytest_main})


# A build backend of the project's own (PEP 517 and 660), so that nothing is downloaded to
# build it: a wheel of src/, or an editable one that points at it.
BACKEND = '''
import base64, hashlib, os, zipfile

NAME, VERSION = "demo", "0.1"
INFO = f"{NAME}-{VERSION}.dist-info"


def _wheel(directory, files):
    files = {**files, f"{INFO}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\n"
             f"Version: {VERSION}\\n", f"{INFO}/WHEEL": "Wheel-Version: 1.0\\n"
             "Generator: demo\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(os.path.join(directory, name), "w") as archive:
        for member, text in files.items():
            data = text.encode()
            archive.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{member},sha256={digest.decode()},{len(data)}")
        archive.writestr(f"{INFO}/RECORD", "\\n".join(records + [f"{INFO}/RECORD,,"]))
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open("src/demo/__init__.py") as f:
        return _wheel(wheel_directory, {"demo/__init__.py": f.read()})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {"demo.pth": os.path.abspath("src") + "\\n"})
'''

PYPROJECT = """
[project]
name = "demo"
version = "0.1"
dependencies = [{dependencies}]

[build-system]
requires = []
build-backend = "demo_backend"
backend-path = ["_build"]
"""


def offline_pip(step_home: Path, wheelhouse: Path) -> None:
    """pip, for the steps, finds only the wheelhouse (whatever this machine's own pip
    configuration says of indexes and constraints)."""
    (step_home / "empty-constraints.txt").write_text("")
    config = step_home / ".config" / "pip" / "pip.conf"
    config.parent.mkdir(parents=True)
    config.write_text(f"[global]\nno-index = true\nfind-links = {wheelhouse}\n"
                      f"constraint = {step_home / 'empty-constraints.txt'}\n"
                      "disable-pip-version-check = true\n")


def environments(step_home: Path) -> list[Path]:
    found = step_home / ".cache" / "ci-runner" / "python-envs"
    return sorted(p for p in found.iterdir() if p.is_dir()) if found.exists() else []


def test_python_starter_keeps_its_environment_per_inputs_and_lets_tests_finish(
    cli: Cli, tmp_path: Path, step_home: Path
) -> None:
    ledger = tmp_path / "ledger"
    stand_in_tools(tmp_path / "wheelhouse", ledger)
    offline_pip(step_home, tmp_path / "wheelhouse")
    env = {"HOME": str(step_home)}
    repo = make_repo(tmp_path / "demo", {
        "pyproject.toml": PYPROJECT.format(dependencies=""),
        "_build/demo_backend.py": BACKEND,
        "src/demo/__init__.py": "VALUE = 1\n",
        "tests/test_demo.py": "import demo\n\n\ndef test_value():\n    assert demo.VALUE\n",
    })
    init_and_commit(cli, repo, "python")

    first = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)

    assert first.code == 0, (first.out, first.err)
    assert steps(first.json()) == {"environment": "complete", "lint": "complete",
                                   "test": "complete"}
    (built,) = environments(step_home)
    assert "building the environment" in cli("logs", first.json()["run_id"],
                                             "environment").out
    runs = ledger.read_text().splitlines()
    assert runs[0] == "ruff" and runs[1].startswith("pytest demo=1 version=0.1 from=")
    # The project came from the run's own worktree, not from the kept environment.
    assert f"{first.json()['workspace']}/src/demo/__init__.py" in runs[1]
    assert not list(built.glob("lib/python*/site-packages/demo*"))
    stamp = (built / ".complete").stat().st_mtime_ns

    # Code changes, the inputs do not: the environment is reused, the new code tested.
    commit(repo, {"src/demo/__init__.py": "VALUE = 2\n"}, "two")
    ledger.write_text("")
    second = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)
    assert second.code == 0, (second.out, second.err)
    assert environments(step_home) == [built]
    assert (built / ".complete").stat().st_mtime_ns == stamp
    assert "reusing the environment" in cli("logs", second.json()["run_id"],
                                             "environment").out
    assert "pytest demo=2 version=0.1" in ledger.read_text()

    # A failing lint lets the tests finish.
    commit(repo, {"LINT_FAILS": "yes\n"}, "lint fails")
    ledger.write_text("")
    broken = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)
    assert broken.code == 1
    assert steps(broken.json()) == {"environment": "complete", "lint": "failed",
                                    "test": "complete"}
    assert "'lint'" in broken.json()["error"]["message"]
    assert ledger.read_text().splitlines()[0] == "ruff"

    # An input changes (a new dependency): a new environment, with it.
    git(repo, "rm", "-q", "LINT_FAILS")
    commit(repo, {"pyproject.toml": PYPROJECT.format(dependencies='"ruff"')},
           "depends on ruff, lint passes")
    third = cli("run", "--json", cwd=repo, env=env, timeout=RUN_TIMEOUT_S)
    assert third.code == 0, (third.out, third.err)
    assert len(environments(step_home)) == 2
    assert "building the environment" in cli("logs", third.json()["run_id"],
                                             "environment").out


def test_python_starter_without_a_project_file_installs_requirements(
    cli: Cli, tmp_path: Path, step_home: Path
) -> None:
    ledger = tmp_path / "ledger"
    stand_in_tools(tmp_path / "wheelhouse", ledger)
    offline_pip(step_home, tmp_path / "wheelhouse")
    repo = init_repo(tmp_path / "scripts")
    commit(repo, {"requirements.txt": "ruff\n", "demo/__init__.py": "VALUE = 3\n"}, "init")
    init_and_commit(cli, repo, "python")  # requirements.txt makes it a Python repo

    done = cli("run", "--json", cwd=repo, env={"HOME": str(step_home)},
               timeout=RUN_TIMEOUT_S)

    # pytest (the stand-in) imports `demo` from the worktree: python -m puts it on the path.
    assert done.code == 0, (done.out, done.err)
    assert "pytest demo=3" in ledger.read_text()
