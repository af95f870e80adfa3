"""The built-in stand-ins through the real CLI: actions/cache across two runs of a repo,
a local composite action, upload-artifact then download-artifact between jobs (and
kept as the run's artifacts), a local reusable workflow's outputs, checkout's own
folder per job, and an action that is not available offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.gitrepos import commit, make_repo

WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/cache@v4
        id: cache
        with:
          path: deps
          key: deps-${{ hashFiles('requirements.txt') }}
          restore-keys: deps-
      - name: deps
        run: |
          echo "hit=${{ steps.cache.outputs.cache-hit }}"
          if [ ! -d deps ]; then
            mkdir deps; echo "built $(od -An -N8 -tx8 /dev/urandom)" > deps/stamp
          fi
          cat deps/stamp
      - uses: ./.github/actions/greet
        id: greet
        with:
          who: ci
      - name: greeting
        run: echo "greeting=${{ steps.greet.outputs.greeting }}"
      - run: |
          mkdir -p dist/sub && echo "wheel ${{ github.sha }}" > dist/pkg.whl
          echo n > dist/sub/notes.txt
      - uses: actions/upload-artifact@v4
        with:
          name: dist
          path: dist/
  check:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - name: clean workspace
        run: ls -A | wc -l
      - uses: actions/download-artifact@v4
        with:
          name: dist
          path: got
      - name: listing
        run: find got -type f | sort; cat got/pkg.whl
  reuse:
    uses: ./.github/workflows/called.yml
    with:
      word: hello
  after:
    needs: reuse
    runs-on: ubuntu-latest
    steps:
      - name: said
        run: echo "called said ${{ needs.reuse.outputs.said }}"
"""

CALLED = """\
on:
  workflow_call:
    inputs:
      word:
        required: true
        type: string
    outputs:
      said:
        value: ${{ jobs.speak.outputs.out }}
jobs:
  speak:
    runs-on: ubuntu-latest
    outputs:
      out: ${{ steps.s.outputs.out }}
    steps:
      - id: s
        run: echo "out=${{ inputs.word }} world" >> "$GITHUB_OUTPUT"
"""

ACTION = """\
name: greet
inputs:
  who:
    default: world
outputs:
  greeting:
    value: ${{ steps.g.outputs.text }}
runs:
  using: composite
  steps:
    - id: g
      shell: bash
      run: echo "text=hello ${{ inputs.who }}" >> "$GITHUB_OUTPUT"
    - shell: sh
      name: where
      run: echo "action path $GITHUB_ACTION_PATH"
"""


def _log(cli: Any, run_id: str, step: str, repo: Path) -> str:
    done = cli("logs", run_id, step, cwd=repo)
    assert done.code == 0, done.err
    return str(done.out)


def test_stand_ins_cache_composite_artifacts_and_reusable(cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "standins", {
        ".github/workflows/ci.yml": WORKFLOW, ".github/workflows/called.yml": CALLED,
        ".github/actions/greet/action.yml": ACTION, "requirements.txt": "requests\n"})
    first = cli("run", "--json", cwd=repo)
    assert first.code == 0, first.err + first.out
    run_id = first.json()["run_id"]
    deps = _log(cli, run_id, "build / deps", repo)
    assert "hit=false" in deps
    stamp = next(line for line in deps.splitlines() if line.startswith("built "))
    names = [s["name"] for s in first.json()["steps"]]
    assert "build / Post Run actions/cache@v4" in names
    assert "greeting=hello ci" in _log(cli, run_id, "build / greeting", repo)
    assert "/.github/actions/greet" in _log(
        cli, run_id, "build / Run ./.github/actions/greet / where", repo)
    assert _log(cli, run_id, "check / clean workspace", repo).splitlines()[-2] == "0"
    listing = _log(cli, run_id, "check / listing", repo)
    assert "got/pkg.whl\n" in listing and "got/sub/notes.txt\n" in listing
    sha = first.json()["sha"]
    assert f"wheel {sha}" in listing
    assert "called said hello world" in _log(cli, run_id, "after / said", repo)
    kept = cli("artifacts", run_id, cwd=repo)
    assert "_artifacts/dist/pkg.whl" in kept.out and "_artifacts/dist/sub/notes.txt" in kept.out

    # The same key on the next run: restored, not built again.
    second = cli("run", "--json", cwd=repo)
    assert second.code == 0, second.err
    again = _log(cli, second.json()["run_id"], "build / deps", repo)
    assert "hit=true" in again and stamp in again
    assert "build / Post Run actions/cache@v4" not in [s["name"] for s in second.json()["steps"]]

    # Another key: a restore-keys prefix match restores it, and it is saved anew.
    commit(repo, {"requirements.txt": "requests\nrich\n"}, "deps")
    third = cli("run", "--json", cwd=repo)
    assert third.code == 0, third.err
    partial = _log(cli, third.json()["run_id"], "build / deps", repo)
    assert "hit=false" in partial and stamp in partial
    assert "build / Post Run actions/cache@v4" in [s["name"] for s in third.json()["steps"]]


def test_an_action_not_available_offline_skips_its_job_in_one_line(
        cli: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "offline", {".github/workflows/ci.yml": """\
on: push
jobs:
  deploy:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: aws-actions/configure-aws-credentials@v4
      - uses: docker://alpine:3
  fine:
    runs-on: ubuntu-latest
    steps:
      - run: echo fine
"""})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    steps = {s["name"]: s for s in done.json()["steps"]}
    reason = steps["deploy"]["skipped_because"]
    assert reason.startswith("aws-actions/configure-aws-credentials@v4 is not available"
                             " offline")
    assert "docker://alpine:3 is not available offline" in reason
    assert "\n" not in reason
    assert steps["fine / Run echo fine"]["status"] == "complete"


def test_checkout_with_submodules_from_the_runs_worktree(cli: Any, tmp_path: Path) -> None:
    """In bubblewrap (the worktree is not the sandbox user's): the job's checkout gets
    the submodule from the run's worktree, no URL used, and a clean `git status`."""
    from tests.gitrepos import git

    lib = make_repo(tmp_path / "lib", {"lib.txt": "the library\n"})
    repo = make_repo(tmp_path / "app", {".github/workflows/ci.yml": """\
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          submodules: true
          fetch-depth: 0
      - name: look
        run: cat vendor/lib/lib.txt; git status --short | wc -l; git log --oneline | wc -l
"""})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib),
        "vendor/lib")
    git(repo, "commit", "-q", "-m", "vendor lib")
    done = cli("run", "--json", "--sandbox", "bwrap", cwd=repo)
    assert done.code == 0, done.err + done.out
    log = _log(cli, done.json()["run_id"], "a / look", repo)
    assert "the library\n0\n2\n" in log
