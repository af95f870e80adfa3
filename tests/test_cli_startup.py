"""What `ci-runner` does before its first useful work (issue 16): the top-level help
is typer's own text although built without each command's parameters, `runs` lists
without importing the engine, and `run` starts one git process before its checkout
and one after it. Real CLI in a subprocess; git counted through a PATH shim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV

FULL_APP = """
import sys
import typer.main
from ci_runner.cli.app import app
typer.main.get_command(app)(sys.argv[1:], prog_name="ci-runner")
"""


def _python(args: list[str], home: Path, columns: str,
            cwd: Path | None = None) -> tuple[int, str, str]:
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "COLUMNS": columns}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL, check=False,
                          cwd=cwd or home.parent)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("argv", [["--help"], [], ["--version"], ["-V"], ["--help", "run"],
                                  ["--bogus"]])
@pytest.mark.parametrize("columns", ["80", "200"])
def test_the_top_level_answers_are_typers_own(home: Path, argv: list[str], columns: str):
    fast = _python(["-m", "ci_runner", *argv], home, columns)
    full = _python(["-c", FULL_APP, *argv], home, columns)
    assert fast == full
    if argv[:1] == ["--help"]:
        assert fast[0] == 0 and "Commands:" in fast[1] and "secrets" in fast[1]


def test_a_commands_own_help_is_whole(home: Path) -> None:
    for argv in (["run", "--help"], ["secrets", "--help"], ["secrets", "set", "--help"]):
        fast = _python(["-m", "ci_runner", *argv], home, "100")
        assert fast == _python(["-c", FULL_APP, *argv], home, "100"), argv
        assert fast[0] == 0 and "Usage: ci-runner" in fast[1]
    assert "--include-uncommitted" in _python(["-m", "ci_runner", "run", "--help"], home,
                                              "100")[1]


def test_runs_lists_without_the_engine(cli: Any, repo_with: Any, home: Path) -> None:
    repo = repo_with("from ci_runner import Pipeline\n\nclass CI(Pipeline):\n"
                     "    async def run(self, event, step):\n        pass\n")
    run_id = cli("run", "--json", cwd=repo).json()["run_id"]
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('loaded:', 'ci_runner.engine.driver' in"
            " sys.modules, file=sys.stderr))\n"
            "sys.argv = ['ci-runner', 'runs']\n"
            "from ci_runner.cli.app import main\nmain()\n")
    status, out, err = _python(["-c", code], home, "100", cwd=repo)
    assert status == 0, err
    assert run_id in out and "complete" in out
    assert "loaded: False" in err
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([sys.executable, "-m", "ci_runner", "runs"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert listed == out


def test_run_starts_two_gits_before_its_checkout_and_three_after(
    cli: Any, repo_with: Any, tmp_path: Path
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "git.log"
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (shim / "git").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    repo = repo_with("from ci_runner import Pipeline\n\nclass CI(Pipeline):\n"
                     "    async def run(self, event, step):\n"
                     "        await step.run('hello', ['echo', 'hello'])\n")
    path = f"{shim}{os.pathsep}{os.environ['PATH']}"

    done = cli("run", "--json", cwd=repo, env={"PATH": path})

    assert done.code == 0, (done.out, done.err)
    calls = log.read_text().splitlines()
    checkout = [i for i, c in enumerate(calls) if " worktree add " in c]
    assert len(checkout) == 1, calls
    before, after = calls[:checkout[0]], calls[checkout[0] + 1:]
    # Before: the repo and the commit, then the pipeline file read from git (the run is
    # stored with no worktree). After: its .ci/ folder for the pipeline, the rest of the
    # tree for the step that runs (a cached step would need none), and the removal.
    assert [_verb(c) for c in before] == ["rev-parse", "cat-file"], calls
    assert " --no-checkout " in calls[checkout[0]], calls
    assert [_verb(c) for c in after] == ["checkout", "reset", "worktree"], calls
    assert " worktree remove " in after[-1], calls
    # And a missing pipeline file still says so, leaving no worktree behind.
    (repo / ".ci" / "pipeline.py").unlink()
    subprocess.run(["git", "commit", "-qam", "no pipeline"], cwd=repo, check=True,
                   env={**os.environ, **ISOLATED_GIT_ENV})
    missing = cli("run", "--json", cwd=repo)
    assert missing.code == 2 and "no .ci/pipeline.py" in missing.err, missing.err
    listed = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert listed.count("worktree ") == 1


def _verb(call: str) -> str:
    """The git command of a logged call, past its -c options and --git-dir/--work-tree."""
    words = call.split()
    i = 0
    while i < len(words) and (words[i] == "-c" or words[i].startswith("--")):
        i += 2 if words[i] == "-c" else 1
    return words[i]
