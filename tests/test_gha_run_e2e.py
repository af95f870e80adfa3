"""GitHub workflows run through the real CLI, in real git repos: a Python project
tested on a matrix of installed Pythons (setup-python, setup-uv), a Node project
(setup-node, npm), outputs between jobs, gate jobs, include/exclude, secrets and
masks, and the errors a bad repo gets. Results are checked against the same
commands run by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ci_runner.workflows import tools
from tests.gitrepos import make_repo

INSTALLED = tools.find_pythons()


def _python(minor: str) -> dict[str, str]:
    found = tools.pick(INSTALLED, minor)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Python {minor} is needed here (pyenv install {minor})")
        pytest.skip(f"Python {minor} is not installed")
    return found


def _steps(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in record["steps"]}


def _log(cli: Any, run_id: str, step: str, cwd: Path) -> str:
    done = cli("logs", run_id, step, cwd=cwd)
    assert done.code == 0, done.err
    return str(done.out)


PY_PROJECT = {
    "pyproject.toml": "[project]\nname = 'calc'\nversion = '0.1'\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": (
        "import sys, unittest\nimport calc\n\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n\n"
        "    def test_version(self):\n        self.assertGreaterEqual(sys.version_info, (3, 8))\n"
    ),
}

PY_WORKFLOW = """\
name: tests
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        python-version: ["__HAVE__", "3.4"]
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: ${{ matrix.python-version }}
      - uses: astral-sh/setup-uv@v6
      - name: Versions
        run: |
          python -c "import sys; print('python', sys.version.split()[0])"
          uv --version
      - name: Test
        run: python -m unittest -v 2>&1
"""


def test_python_matrix_with_setup_python_and_setup_uv(cli: Any, tmp_path: Path) -> None:
    """One cell runs on the installed Python, in the sandbox (its interpreter's prefix
    is mounted); the one not installed is skipped with its reason; the tests' result
    matches the same command run by hand with that interpreter."""
    from ci_runner.workflows.tools import find_programs

    uv_dir = find_programs("uv").get("uv")  # on PATH, or in the test venv ([test] has it)
    if uv_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("uv is needed here (pip install uv)")
        pytest.skip("uv is not installed")
    have = _python("3.11")
    minor = ".".join(have["version"].split(".")[:2])
    repo = make_repo(tmp_path / "calc", {
        **PY_PROJECT,
        ".github/workflows/tests.yml": PY_WORKFLOW.replace("__HAVE__", minor)})
    done = cli("run", "--json", "--sandbox", "bwrap", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    steps = _steps(record)
    assert steps["test (3.4)"]["status"] == "skipped"
    assert steps["test (3.4)"]["skipped_because"].startswith(
        "Python 3.4 is not installed here (installed: ")
    versions = steps[f"test ({minor}) / Versions"]
    assert versions["status"] == "complete"
    assert versions["sandbox"] == "bwrap"
    log = _log(cli, record["run_id"], f"test ({minor}) / Versions", repo)
    assert f"python {have['version']}\n" in log
    uv_by_hand = subprocess.run([f"{uv_dir}/uv", "--version"], capture_output=True, text=True,
                                check=True).stdout
    assert uv_by_hand in log
    by_hand = subprocess.run([have["python"], "-m", "unittest", "-v"], cwd=repo,
                             capture_output=True, text=True, check=False)
    assert by_hand.returncode == 0
    test_log = _log(cli, record["run_id"], f"test ({minor}) / Test", repo)
    for line in by_hand.stderr.splitlines():
        if line.startswith(("test_", "Ran ", "OK")):
            assert line.split(" in ")[0] in test_log, line


NODE_PROJECT = {
    "package.json": json.dumps({"name": "greet", "version": "1.0.0", "private": True,
                                "scripts": {"test": "node test.js"}}, indent=2),
    "index.js": "module.exports = (name) => `hello ${name}`;\n",
    "test.js": ("const assert = require('assert');\nconst greet = require('./index');\n"
                "assert.strictEqual(greet('ci'), 'hello ci');\n"
                "console.log('all tests passed on', process.version);\n"),
}


def test_node_project_with_setup_node_and_npm(cli: Any, tmp_path: Path) -> None:
    nodes = tools.find_nodes()
    if not nodes or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed here (scripts/node-tools.sh)")
        pytest.skip("node or npm missing")
    major = nodes[0]["version"].split(".")[0]
    workflow = f"""\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-node@v4
        id: node
        with:
          node-version: {major}
      - run: npm test
      - run: echo "node ${{{{ steps.node.outputs.node-version }}}}"
"""
    repo = make_repo(tmp_path / "greet", {**NODE_PROJECT,
                                          ".github/workflows/ci.yml": workflow})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    steps = _steps(record)
    assert steps["build / Run npm test"]["status"] == "complete"
    by_hand = subprocess.run(["npm", "test"], cwd=repo, capture_output=True, text=True,
                             check=True, env={**os.environ, "npm_config_update_notifier":
                                              "false"})
    expected = next(line for line in by_hand.stdout.splitlines() if "all tests passed" in line)
    assert expected in _log(cli, record["run_id"], "build / Run npm test", repo)
    shown = _log(cli, record["run_id"], 'build / Run echo "node ${{ steps.node.outputs.'
                 'node-version }}"', repo)
    assert f"node v{nodes[0]['version']}" in shown


OUTPUTS_WORKFLOW = """\
on: push
env:
  STAGE: ci
jobs:
  version:
    runs-on: ubuntu-latest
    outputs:
      version: ${{ steps.read.outputs.version }}
      notes: ${{ steps.read.outputs.notes }}
    steps:
      - uses: actions/checkout@v4
      - id: read
        run: |
          echo "version=$(cat VERSION)" >> "$GITHUB_OUTPUT"
          {
            echo "notes<<EOF"
            echo "line one"
            echo "line two"
            echo "EOF"
          } >> "$GITHUB_OUTPUT"
          echo "BUILD_FLAVOR=fast" >> "$GITHUB_ENV"
          mkdir -p tools-bin
          printf '#!/bin/sh\\necho tool says hi\\n' > tools-bin/mytool
          chmod +x tools-bin/mytool
          echo "$PWD/tools-bin" >> "$GITHUB_PATH"
          echo "### Version $(cat VERSION)" >> "$GITHUB_STEP_SUMMARY"
      - name: Later step sees env and path
        run: |
          echo "flavor=$BUILD_FLAVOR stage=$STAGE"
          python3 -c "import json, os; p = os.environ['GITHUB_EVENT_PATH'];
          print('event ref', json.load(open(p))['ref'])"
          mytool
          echo "version from steps: ${{ steps.read.outputs.version }}"
  use:
    needs: version
    runs-on: ubuntu-latest
    steps:
      - name: Use ${{ needs.version.outputs.version }}
        env:
          NOTES: ${{ needs.version.outputs.notes }}
        run: |
          echo "got version ${{ needs.version.outputs.version }}"
          printf '%s\\n' "$NOTES" | wc -l
          echo "result=${{ needs.version.result }}"
"""


def test_outputs_env_path_and_summary_pass_between_steps_and_jobs(
        cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "outputs", {"VERSION": "4.5.6\n",
                                            ".github/workflows/ci.yml": OUTPUTS_WORKFLOW})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    run_id = done.json()["run_id"]
    later = _log(cli, run_id, "version / Later step sees env and path", repo)
    assert "flavor=fast stage=ci" in later
    assert "tool says hi" in later
    assert "version from steps: 4.5.6" in later
    assert "event ref refs/heads/main" in later
    used = _log(cli, run_id, "use / Use 4.5.6", repo)
    assert "got version 4.5.6" in used
    assert "result=success" in used
    assert "\n2\n" in used  # the heredoc output kept both lines
    shown = cli("show", run_id, cwd=repo)
    assert "summary:" in shown.out and "### Version 4.5.6" in shown.out


GATES_WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo building
  test:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: echo "testing"; exit 4
      - name: after the failure
        run: echo never
      - name: cleanup
        if: always()
        run: echo cleaning up
      - name: report failure
        if: failure()
        run: echo "a step failed"
  deploy:
    needs: test
    runs-on: ubuntu-latest
    steps:
      - run: echo deploying
  notify:
    needs: [build, test]
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: echo "build=${{ needs.build.result }} test=${{ needs.test.result }}"
  on-failure:
    needs: test
    if: failure()
    runs-on: ubuntu-latest
    steps:
      - run: echo "test failed, filing a report"
"""


def test_always_and_failure_gate_jobs(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "gates", {".github/workflows/ci.yml": GATES_WORKFLOW})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 1, done.err + done.out
    record = done.json()
    assert record["status"] == "failed"
    assert "jobs failed: test" in record["error"]["message"]
    steps = _steps(record)
    assert steps["test / Run echo \"testing\"; exit 4"]["status"] == "failed"
    assert steps["test / Run echo \"testing\"; exit 4"]["exit_code"] == 4
    assert steps["test / after the failure"]["status"] == "skipped"
    assert steps["test / after the failure"]["skipped_because"] == "an earlier step failed"
    assert steps["test / cleanup"]["status"] == "complete"
    assert steps["test / report failure"]["status"] == "complete"
    assert steps["deploy"]["status"] == "skipped"
    assert steps["deploy"]["skipped_because"] == "a job it needs failed"
    notify = next(name for name in steps if name.startswith("notify / "))
    assert steps[notify]["status"] == "complete"
    assert "build=success test=failure" in _log(cli, record["run_id"], notify, repo)
    assert steps["on-failure / Run echo \"test failed, filing a report\""]["status"] \
        == "complete"


MATRIX_WORKFLOW = """\
on: push
jobs:
  cells:
    name: cell
    runs-on: ubuntu-latest
    strategy:
      matrix:
        os: [linux, bsd]
        n: [1, 2]
        exclude:
          - os: bsd
            n: 2
        include:
          - os: linux
            extra: yes
          - os: haiku
            n: 9
    steps:
      - run: >-
          echo "os=${{ matrix.os }} n=${{ matrix.n }} extra=${{ matrix.extra }}
          at=${{ strategy.job-index }}/${{ strategy.job-total }}"
"""


def test_matrix_include_exclude_and_selection(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "matrix", {".github/workflows/ci.yml": MATRIX_WORKFLOW})
    listed = cli("workflows", "--json", cwd=repo)
    assert listed.code == 0, listed.err
    cells = [row["matrix"] for row in json.loads(listed.out)]
    assert cells == [{"os": "linux", "n": 1, "extra": "yes"},
                     {"os": "linux", "n": 2, "extra": "yes"},
                     {"os": "bsd", "n": 1}, {"os": "haiku", "n": 9}]
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    outputs = sorted(
        line.strip() for s in record["steps"]
        for line in _log(cli, record["run_id"], s["name"], repo).splitlines()
        if line.startswith("os="))
    assert outputs == ["os=bsd n=1 extra= at=2/4", "os=haiku n=9 extra= at=3/4",
                       "os=linux n=1 extra=yes at=0/4", "os=linux n=2 extra=yes at=1/4"]
    only = cli("run", "--json", "--matrix", "os=linux", "--matrix", "n=2", cwd=repo)
    assert only.code == 0, only.err
    assert [s["name"] for s in only.json()["steps"]] == [
        'cell (linux, 2) / Run echo "os=${{ matrix.os }} n=${{ matrix.n }} extra='
        '${{ matrix.extra }} at=${{ strategy.job-index }}/${{ strategy.job-total }}"']


def test_workflows_lists_jobs_cells_and_skips_like_act(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "listing", {
        ".github/workflows/tests.yml": PY_WORKFLOW.replace("__HAVE__", "3.11"),
        ".github/workflows/mac.yml": "on: pull_request\njobs:\n  mac:\n    runs-on: macos-14\n"
                                     "    steps: [{run: echo}]\n"})
    done = cli("workflows", cwd=repo)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0].split() == ["stage", "job", "id", "job", "name", "workflow", "events",
                                "note"]
    assert any(line.split()[:4] == ["0", "mac", "mac", "mac.yml"]
               and "skipped: runs-on macos-14 is not Linux" in line for line in lines)
    assert any("test (3.4)" in line and "Python 3.4 is not installed here" in line
               for line in lines)
    pushed = cli("workflows", "--event", "push", "--json", cwd=repo)
    assert {row["workflow"] for row in json.loads(pushed.out)} == {
        ".github/workflows/tests.yml"}


def test_secrets_are_passed_masked_and_add_mask_hides_values(
        cli: Any, tmp_path: Path) -> None:
    workflow = """\
on: push
jobs:
  s:
    runs-on: ubuntu-latest
    steps:
      - name: has token
        if: ${{ secrets.API_TOKEN != '' }}
        env:
          AUTH: Bearer ${{ secrets.API_TOKEN }}
        run: |
          echo "auth is $AUTH"
          test "$AUTH" = "Bearer tok-12345-abcde" && echo "matches"
      - name: missing secret
        if: secrets.NOT_SET != ''
        run: echo never
      - name: mask
        run: |
          value="generated-$((6 * 7))-value"
          echo "::add-mask::$value"
          echo "made $value"
      - name: later
        run: echo "still generated-42-value"
"""
    repo = make_repo(tmp_path / "secrets", {".github/workflows/ci.yml": workflow})
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("API_TOKEN: tok-12345-abcde\n")
    secrets.chmod(0o600)
    done = cli("run", "--json", "--secrets-file", str(secrets), cwd=repo)
    assert done.code == 0, done.err + done.out
    record = done.json()
    steps = _steps(record)
    assert steps["s / missing secret"]["status"] == "skipped"
    logs = cli("logs", record["run_id"], cwd=repo).out
    assert "auth is Bearer ***" in logs and "matches" in logs
    assert "made ***" in logs and "still ***" in logs
    assert "tok-12345" not in logs and "generated-42" not in logs
    assert "::add-mask::" not in logs


@pytest.mark.parametrize(("files", "args", "error"), [
    ({"README": "x"}, (), "no .ci/pipeline.py and no .github/workflows/*.yml in"),
    ({".github/workflows/ci.yml": "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
      "      - run: echo\n        bad-key: 1\n"}, (),
     ".github/workflows/ci.yml:7: jobs.a.steps[0].bad-key: unknown key"),
    ({".github/workflows/ci.yml": "on: push\njobs:\n  a:\n    runs-on: x\n"
      "    steps: [{run: echo}]\n"}, ("--job", "b"), "--job 'b': no such job (jobs: a)"),
    ({".github/workflows/ci.yml": "on: push\njobs:\n  a:\n    runs-on: x\n"
      "    steps: [{run: echo}]\n"}, ("--event", "release"),
     "--event must be one of push, pull_request, not 'release'"),
    ({".github/workflows/ci.yml": "on: pull_request\njobs:\n  a:\n    runs-on: x\n"
      "    steps: [{run: echo}]\n"}, (), "no workflow runs on push here (ci.yml:"
                                       " pull_request): pass --event or --workflow"),
    ({".github/workflows/ci.yml": "on: push\njobs:\n  a:\n    runs-on: x\n"
      "    steps: [{run: echo}]\n"}, ("--matrix", "py"),
     "--matrix 'py' must look like KEY=VALUE"),
])
def test_bad_repos_and_options_get_one_line(cli: Any, tmp_path: Path, files: dict[str, str],
                                            args: tuple[str, ...], error: str) -> None:
    repo = make_repo(tmp_path / "bad", files)
    done = cli("run", *args, cwd=repo)
    assert done.code == 2, done.out + done.err
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert len(lines) == 1, done.err
    assert error in lines[0], lines[0]
    assert cli("runs", "--json", cwd=repo).json() == []  # nothing was stored


def test_job_selection_and_platform_mapping(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "select", {".github/workflows/ci.yml": """\
on: push
jobs:
  prepare:
    runs-on: ubuntu-latest
    steps: [{name: prep, run: echo prep}]
  mac:
    needs: prepare
    runs-on: macos-latest
    steps: [{name: on mac, run: 'echo "mac job on $RUNNER_OS"'}]
  other:
    runs-on: ubuntu-latest
    steps: [{name: other, run: echo other}]
"""})
    plain = cli("run", "--json", "--job", "mac", cwd=repo)
    assert plain.code == 0, plain.err + plain.out
    steps = {s["name"]: s for s in plain.json()["steps"]}
    assert set(steps) == {"prepare / prep", "mac"}  # the job and what it needs, only
    assert steps["mac"]["skipped_because"].startswith("runs-on macos-latest is not Linux")
    mapped = cli("run", "--json", "--job", "mac", "--platform", "macos-latest=host",
                 cwd=repo)
    assert mapped.code == 0, mapped.err + mapped.out
    assert "mac job on Linux" in cli("logs", mapped.json()["run_id"], "mac / on mac",
                                     cwd=repo).out
    bad = cli("run", "--platform", "macos-latest=docker", cwd=repo)
    assert bad.code == 2
    assert "only LABEL=host is supported" in bad.err


def test_fail_fast_cancels_running_cells_and_skips_waiting_ones(
        cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "failfast", {".github/workflows/ci.yml": """\
on: push
jobs:
  wide:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - name: work
        run: |
          if [ ${{ matrix.n }} = 1 ]; then
            for i in $(seq 400); do [ -f started-2 ] && break; sleep 0.05; done; exit 1
          fi
          touch ../wide-0/started-2; sleep 30
  narrow:
    runs-on: ubuntu-latest
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    steps:
      - name: work
        run: exit ${{ matrix.n }}
  tolerant:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        n: [1, 2]
    steps:
      - name: work
        run: exit $(( ${{ matrix.n }} - 1 ))
"""})
    done = cli("run", "--json", cwd=repo, timeout=50)
    assert done.code == 1, done.err + done.out
    steps = _steps(done.json())
    assert steps["wide (1) / work"]["status"] == "failed"
    assert steps["wide (2) / work"]["status"] == "cancelled"
    assert steps["wide (2) / work"]["error"] == "cancelled: fail-fast: wide (1) failed"
    assert steps["narrow (1) / work"]["status"] == "failed"
    assert steps["narrow (2)"]["skipped_because"] == "fail-fast: narrow (1) failed"
    assert steps["narrow (3)"]["skipped_because"] == "fail-fast: narrow (1) failed"
    assert steps["tolerant (1) / work"]["status"] == "complete"
    assert steps["tolerant (2) / work"]["status"] == "failed"


def test_params_give_workflow_dispatch_inputs(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "inputs", {".github/workflows/ci.yml": """\
on:
  push:
  workflow_dispatch:
    inputs:
      level:
        default: low
      other:
        default: kept
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - name: show
        run: echo "level=${{ inputs.level }} other=${{ inputs.other }}"
"""})
    plain = cli("run", "--json", cwd=repo)
    assert plain.code == 0, plain.err
    assert "level=low other=kept" in cli("logs", plain.json()["run_id"], "a / show",
                                         cwd=repo).out
    given = cli("run", "--json", "--param", "level=high", cwd=repo)
    assert given.code == 0, given.err
    assert "level=high other=kept" in cli("logs", given.json()["run_id"], "a / show",
                                          cwd=repo).out


def test_step_timeout_minutes_working_directory_and_shells(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "shells", {"sub/dir/marker.txt": "here\n",
                                           ".github/workflows/ci.yml": """\
on: push
defaults:
  run:
    shell: sh
jobs:
  a:
    runs-on: ubuntu-latest
    defaults:
      run:
        working-directory: sub
    steps:
      - uses: actions/checkout@v4
      - name: slow
        timeout-minutes: 0.02
        continue-on-error: true
        run: sleep 20
      - name: where
        working-directory: sub/dir
        run: cat marker.txt; echo "shell is $0"
      - name: default dir
        run: pwd
      - name: pipefail
        shell: bash
        run: false | true; echo not reached
      - name: python
        if: always()
        shell: python3 {0}
        run: |
          import os
          print("python in", os.path.basename(os.getcwd()))
"""})
    done = cli("run", "--json", cwd=repo, timeout=60)
    assert done.code == 1, done.err + done.out
    record = done.json()
    steps = _steps(record)
    assert steps["a / slow"]["status"] == "failed"
    assert "timed out after 1.2s" in steps["a / slow"]["error"]
    where = _log(cli, record["run_id"], "a / where", repo)
    assert "here\n" in where and "shell is " in where and "/run/script" in where
    assert _log(cli, record["run_id"], "a / default dir", repo).splitlines()[1].endswith(
        "/.ci-runner-jobs/a-0/sub")
    assert steps["a / pipefail"]["status"] == "failed"
    assert "not reached" not in _log(cli, record["run_id"], "a / pipefail", repo)
    assert "python in sub" in _log(cli, record["run_id"], "a / python", repo)


def test_only_takes_a_matrix_cells_step_whose_name_has_a_comma(
        cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "only", {".github/workflows/ci.yml": """\
on: push
jobs:
  t:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        x: [1]
        y: [2, 3]
    steps:
      - name: first
        run: echo first
      - name: second
        run: echo second
"""})
    done = cli("run", "--json", "--only", "t (1, 2) / second,t (1, 3) / first", cwd=repo)
    assert done.code == 0, done.err + done.out
    ran = {s["name"]: s["status"] for s in done.json()["steps"]}
    assert ran == {"t (1, 2) / first": "skipped", "t (1, 2) / second": "complete",
                   "t (1, 3) / first": "complete", "t (1, 3) / second": "skipped"}


def test_each_cell_and_each_call_of_a_reusable_workflow_has_its_own_folders(
        cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "folders", {
        ".github/workflows/ci.yml": """\
on: push
jobs:
  one:
    uses: ./.github/workflows/called.yml
  two:
    uses: ./.github/workflows/called.yml
  cells:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - name: mine
        run: |
          test ! -e "$RUNNER_TEMP/claimed" && echo "$PWD" > "$RUNNER_TEMP/claimed"
          echo "temp $RUNNER_TEMP"
""",
        ".github/workflows/called.yml": """\
on: workflow_call
jobs:
  work:
    runs-on: ubuntu-latest
    steps:
      - name: claim
        run: test ! -e claimed && touch claimed && echo "dir $PWD"
"""})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    run_id = done.json()["run_id"]
    dirs = {_log(cli, run_id, f"{caller} / work / claim", repo).split("dir ")[1].split()[0]
            for caller in ("one", "two")}
    temps = {_log(cli, run_id, f"cells ({n}) / mine", repo).split("temp ")[1].split()[0]
             for n in (1, 2)}
    assert len(dirs) == 2 and len(temps) == 2
