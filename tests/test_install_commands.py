"""The README's first two commands (issue 12): they install into a virtual environment,
which a stock Debian/Ubuntu Python allows (a bare `pip install` there fails with
`externally-managed-environment`), `.ci/run` runs exactly the second one, and
ci-runner installed in a venv runs its demo, its pipeline process and steps in the
sandbox with the venv's interpreter."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ci_runner.sandbox import probe
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "the README starts with no sh block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def test_the_readme_starts_with_an_install_and_a_test_command_in_a_venv():
    install, tests = _readme_commands()
    for line in (install, tests):
        assert line.startswith("python3 -m venv .venv && .venv/bin/pip install "), line
        assert "python3 -m pip" not in line  # the system's pip refuses (PEP 668)
    assert install.endswith(".venv/bin/ci-runner demo")
    assert tests.endswith(".venv/bin/python -m pytest")


def test_ci_run_runs_exactly_the_readmes_test_command():
    _, tests = _readme_commands()
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == tests
    # What it provisions first is there and executable (venv needs python3-venv).
    for name in re.findall(r"scripts/[\w.-]+\.sh", script):
        assert os.access(ROOT / name, os.X_OK), name


@pytest.mark.slow
def test_ci_runner_installed_in_a_venv_runs_its_demo_in_the_sandbox(tmp_path: Path):
    """`pip install .` into a venv, as the README's first line does (the package built
    from a copy of the source; its dependencies are this interpreter's, put on the
    venv's path), then `.venv/bin/ci-runner demo`."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("ci_runner", "pipelines", "sandbox_images"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / ".venv"
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(tmp_path / "home"),
           "CI_RUNNER_SANDBOX": "auto"}
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    # The dependencies: this interpreter's (a venv's own, when the suite runs in one),
    # after the new venv's own site-packages, where ci-runner itself goes.
    inner = subprocess.run(
        [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, timeout=60, check=True, env=env).stdout.strip()
    outer = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"),
                           sysconfig.get_path("platlib")])
    (Path(inner) / "outer-dependencies.pth").write_text("\n".join(outer) + "\n")
    # Built as pip builds it (its build backend from the package index, as for the
    # README's own commands); the dependencies are this interpreter's.
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", str(source)],
                         capture_output=True, text=True, timeout=600, env=env, check=False)
    assert pip.returncode == 0, pip.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import ci_runner; print(ci_runner.__file__)"],
        capture_output=True, text=True, timeout=60, env=env, check=True, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # not ROOT's
    demo = subprocess.run([str(venv / "bin/ci-runner"), "demo", "--json"],
                          capture_output=True, text=True, timeout=300, env=env, check=False,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert demo.returncode == 0, demo.stderr
    record = json.loads(demo.stdout.strip().splitlines()[-1])
    assert record["status"] == "complete"
    # Its light steps ran where `auto` puts them on this machine (bubblewrap, as root or
    # with user namespaces): with the venv's interpreter and packages mounted.
    light = {s["sandbox"] for s in record["steps"] if s["kind"] == "run"}
    assert light == {probe("auto").kind}, (light, demo.stderr)
