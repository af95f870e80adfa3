"""Workflow files as data: parsing, the one-line errors (file, line, key), the plan
(which workflows an event runs, job order, runs-on), the files steps hand back
(GITHUB_OUTPUT/ENV/PATH), tool version matching and the ::add-mask:: filter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ci_runner.executors.masking import Masker
from ci_runner.executors.output import MaskCommands
from ci_runner.workflows import commands, tools
from ci_runner.workflows.model import parse_workflow
from ci_runner.workflows.plan import (
    Selection,
    branch_matches,
    choose,
    job_order,
    platform,
    stages,
    workflow_files,
)
from ci_runner.workflows.source import WorkflowError
from tests.conftest import ROOT

CI = ".github/workflows/ci.yml"

GOOD = """\
name: CI
on:
  push:
    branches: [main, "release/**"]
  pull_request:
env:
  A: 1
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: ruff check .
  test:
    needs: lint
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [ubuntu-latest]
    steps:
      - uses: actions/checkout@v4
      - id: t
        run: pytest
        shell: bash
        continue-on-error: true
  gate:
    needs: [lint, test]
    if: always()
    runs-on: ubuntu-latest
    steps:
      - run: echo done
"""


def test_a_workflow_parses_into_jobs_and_steps() -> None:
    wf = parse_workflow(GOOD, CI)
    assert wf.name == "CI"
    assert set(wf.on) == {"push", "pull_request"}
    assert list(wf.jobs) == ["lint", "test", "gate"]
    test = wf.jobs["test"]
    assert test.needs == ("lint",)
    assert test.line == 13
    assert test.line_of("needs") == 14
    assert [s.id for s in test.steps] == [None, "t"]
    assert test.steps[1].shell == "bash"
    assert test.steps[1].continue_on_error is True
    assert wf.jobs["gate"].needs == ("lint", "test")
    assert wf.env == {"A": 1}


def test_on_and_yes_stay_strings_as_in_githubs_parser() -> None:
    wf = parse_workflow("on: push\njobs:\n  a:\n    runs-on: linux\n    env: {X: yes}\n"
                        "    steps: [{run: echo}]\n", CI)
    assert wf.on == {"push": {}}
    assert wf.jobs["a"].env == {"X": "yes"}


@pytest.mark.parametrize(("text", "error"), [
    ("on: push\njobs:\n  a:\n    runs-on: x\n    needs: b\n    steps: [{run: echo}]\n",
     f"{CI}:5: jobs.a.needs: unknown job 'b' (jobs: a)"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    needs: b\n    steps: [{run: echo}]\n"
     "  b:\n    runs-on: x\n    needs: a\n    steps: [{run: echo}]\n",
     f"{CI}:5: jobs.a.needs: a cycle: a -> b -> a"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo\n"
     "        uses: actions/checkout@v4\n",
     f"{CI}:6: jobs.a.steps[0]: a step needs exactly one of `run:` or `uses:`"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    stesp: []\n",
     f"{CI}:5: jobs.a.stesp: unknown key"),
    ("jobs:\n  a:\n    runs-on: x\n    steps: [{run: echo}]\n",
     f"{CI}:1: on: missing"),
    ("on: push\njobs:\n  a:\n    steps: [{run: echo}]\n", f"{CI}:3: jobs.a.runs-on: missing"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: a\n        id: x\n"
     "      - run: b\n        id: x\n",
     f"{CI}:8: jobs.a.steps[1].id: 'x' is already the id of step 0"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    steps: [{run: echo, env: {X: [1]}}]\n",
     f"{CI}:5: jobs.a.steps[0].env.X: must be a string, number or boolean, not a list"),
    ("on: push\njobs:\n  a: [\n", f"{CI}:4: not valid YAML"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    runs-on: y\n    steps: [{run: echo}]\n",
     f"{CI}: line 5: 'runs-on' appears twice"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo ${{ foo.bar }}\n",
     f"{CI}:6: jobs.a.steps[0].run: Unrecognized named-value: 'foo'. Located at position 1"
     " within expression: foo.bar"),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    if: github.ref == 'x' &&\n"
     "    steps: [{run: echo}]\n",
     f"{CI}:5: jobs.a.if: Unexpected end of expression: '&&'."),
    ("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo ${{ x\n",
     f"{CI}:6: jobs.a.steps[0].run: the expression is not closed: ${{{{ x"),
])
def test_bad_files_get_one_line_naming_file_line_and_key(text: str, error: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, CI)
    message = caught.value.message
    assert message.startswith(error), message
    assert "\n" not in message


def test_the_event_picks_workflows_and_branch_filters_apply() -> None:
    ci = parse_workflow(GOOD, CI)
    docs = parse_workflow("on:\n  pull_request:\n    branches: [main]\njobs:\n  d:\n"
                          "    runs-on: ubuntu-latest\n    steps: [{run: echo}]\n",
                          ".github/workflows/docs.yml")
    both = [ci, docs]
    assert choose(both, Selection(event="push"), ref="refs/heads/main") == [ci]
    assert choose(both, Selection(event="pull_request"), ref="refs/heads/x") == [ci, docs]
    assert choose(both, Selection(event="push"), ref="refs/heads/release/1.2") == [ci]
    with pytest.raises(WorkflowError, match="no workflow runs on push here"):
        choose(both, Selection(event="push"), ref="refs/heads/feature")
    with pytest.raises(WorkflowError, match=r"docs.yml is not triggered by push \(on:"
                                            r" pull_request\)"):
        choose(both, Selection(event="push", workflow="docs.yml"))
    with pytest.raises(WorkflowError, match=r"--job 'nope': no such job \(jobs: gate, lint,"):
        choose(both, Selection(job="nope"), ref="refs/heads/main")
    with pytest.raises(WorkflowError, match="--event must be one of push, pull_request"):
        choose(both, Selection(event="schedule"))


@pytest.mark.parametrize(("filters", "ref", "runs"), [
    ({"branches": ["main"]}, "refs/heads/main", True),
    ({"branches": ["main"]}, "refs/heads/dev", False),
    ({"branches-ignore": ["wip/*"]}, "refs/heads/wip/x", False),
    ({"branches-ignore": ["wip/*"]}, "refs/heads/wip/x/y", True),
    ({"branches": ["**", "!docs/**"]}, "refs/heads/docs/a/b", False),
    ({"tags": ["v*"]}, "refs/heads/main", False),
    ({"tags": ["v*"]}, "refs/tags/v1.0", True),
    ({}, "refs/heads/anything", True),
])
def test_branch_filters(filters: dict[str, object], ref: str, runs: bool) -> None:
    assert branch_matches(filters, ref) is runs


def test_job_order_and_stages_follow_needs() -> None:
    wf = parse_workflow(GOOD, CI)
    assert [j.id for j in job_order(wf)] == ["lint", "test", "gate"]
    assert [j.id for j in job_order(wf, "test")] == ["lint", "test"]
    assert [[j.id for j in stage] for stage in stages(wf)] == [["lint"], ["test"], ["gate"]]


def test_runs_on_linux_here_others_skipped_unless_mapped() -> None:
    assert platform("ubuntu-latest", {}).skip is None
    assert platform(["self-hosted", "linux"], {}).skip is None
    skip = platform("macos-latest", {}).skip
    assert skip == ("runs-on macos-latest is not Linux: map it with --platform"
                    " macos-latest=host to run it here")
    assert platform("macos-latest", {"macos-latest": "host"}).skip is None
    assert platform({"labels": ["windows-2022"]}, {}).skip is not None


def test_workflow_files_are_yml_directly_in_the_folder() -> None:
    assert workflow_files([".github/workflows/a.yml", ".github/workflows/b.yaml",
                           ".github/workflows/sub/c.yml", ".github/workflows/README.md",
                           "x.yml"]) == [".github/workflows/a.yml", ".github/workflows/b.yaml"]


def test_output_and_env_files_with_heredocs() -> None:
    text = "a=1\nb=x=y\nmulti<<EOF\nline 1\nline 2\nEOF\n\nc=\na=2\n"
    assert commands.parse_assignments(text, "f") == {
        "a": "2", "b": "x=y", "multi": "line 1\nline 2", "c": ""}
    with pytest.raises(WorkflowError, match="has no closing 'END' line"):
        commands.parse_assignments("x<<END\nbody\n", "f")
    with pytest.raises(WorkflowError, match="a line must be NAME=VALUE"):
        commands.parse_assignments("just text\n", "f")
    assert commands.parse_paths("/a/bin\n/b/bin\n") == ["/b/bin", "/a/bin"]


def test_shells_as_github_runs_them() -> None:
    assert commands.shell_argv(None, "w") == ["bash", "-e", "{0}"]
    assert commands.shell_argv("bash", "w") == ["bash", "--noprofile", "--norc", "-eo",
                                                "pipefail", "{0}"]
    assert commands.shell_argv("sh", "w") == ["sh", "-e", "{0}"]
    assert commands.shell_argv("python", "w") == ["python", "{0}"]
    assert commands.shell_argv("perl -w {0}", "w") == ["perl", "-w", "{0}"]
    assert commands.shell_argv("node", "w") == ["node", "{0}"]
    with pytest.raises(WorkflowError, match="shell 'pwsh' is not available on Linux"):
        commands.shell_argv("pwsh", "w")


INSTALLED = [{"version": v, "bin": f"/p/{v}/bin", "python": f"/p/{v}/bin/python3"}
             for v in ("3.13.0", "3.12.1", "3.11.7", "3.11.2", "3.10.13")]


@pytest.mark.parametrize(("wanted", "picked"), [
    ("3.11", "3.11.7"), ("3.11.2", "3.11.2"), ("3", "3.13.0"), ("3.x", "3.13.0"),
    ("3.10.x", "3.10.13"), (">=3.11 <3.13", "3.12.1"), ("<3.11", "3.10.13"),
    ("3.9", None), ("3.11.5", None), ("3.1", None),
])
def test_versions_match_like_setup_python(wanted: str, picked: str | None) -> None:
    found = tools.pick(INSTALLED, wanted)
    assert (found or {}).get("version") == picked


def test_add_mask_lines_are_taken_out_and_masked_from_then_on() -> None:
    masker = Masker([])
    seen: list[str] = []
    commands_ = MaskCommands(masker, seen.append)
    out = ""
    # In pieces, as a pipe delivers them: the command line split across reads.
    for piece in ("before tok3n\n::add-", "mask::tok3n\nafter ", "tok3n\n:: not a command\n"):
        out += masker.feed(commands_.feed(piece))
    out += masker.feed(commands_.flush()) + masker.flush()
    assert seen == ["tok3n"]
    assert out == "before tok3n\nafter ***\n:: not a command\n"


def test_a_runs_toolchains_are_mounted_read_only_in_its_sandbox(tmp_path: Path) -> None:
    """setup-python's interpreter may be in no folder on the runner's PATH (uv's, a
    pyenv version): the run's metadata names it and its sandbox mounts its prefix."""
    from ci_runner.dispatch.confine import plan
    from ci_runner.sandbox import probe

    if probe("bwrap").kind != "bwrap":
        if os.environ.get("CI") == "true":
            pytest.fail("bubblewrap is needed here (scripts/sandbox-tools.sh)")
        pytest.skip("no bubblewrap")
    prefix = ROOT / "benchmarks"  # stands for /opt/python-3.x: outside /tmp and HOME
    metadata = {"run_id": "r1", "workspace": str(tmp_path / "wt"), "repo": str(tmp_path),
                "sandbox": "bwrap", "toolchains": [str(prefix)]}
    assert prefix in plan(metadata).ro
    assert prefix not in plan({**metadata, "toolchains": []}).ro


def test_a_webhooks_run_takes_its_event_and_a_forks_goes_behind_the_gate(
        tmp_path: Path) -> None:
    from ci_runner.dispatch.runs import RunRequest, _workflow_metadata
    from ci_runner.workspace import open_repo, resolve_rev
    from tests.gitrepos import make_repo

    path = make_repo(tmp_path / "hooked", {CI: GOOD})
    repo = open_repo(path)
    sha = resolve_rev(repo, "HEAD").sha
    secrets = tmp_path / "secrets.yml"
    secrets.write_text("TOKEN: x\n")
    secrets.chmod(0o600)
    trusted = _workflow_metadata(repo, sha, "refs/heads/main", RunRequest(
        repo_path=path, extra={"event": "pull_request", "sender": "alice"}), secrets)
    assert trusted["gha"]["selection"]["event"] == "pull_request"
    assert trusted["gha"]["actor"] == "alice"
    assert trusted["gha"]["secret_names"] == ["TOKEN"]
    assert trusted["loader"] == "ci_runner.workflows.loader:load_runner"
    fork = _workflow_metadata(repo, sha, None, RunRequest(
        repo_path=path, extra={"event": "pull_request", "untrusted": True,
                               "loader": "ci_runner.server.gate:load_untrusted"}), secrets)
    assert "loader" not in fork  # the request's own (the gate) stays
    assert fork["inner_loader"] == "ci_runner.workflows.loader:load_runner"
    assert fork["gha"]["secret_names"] == []


def test_github_context_and_default_env_from_the_runs_metadata() -> None:
    from ci_runner.workflows.contexts import default_env, github_context, runner_context

    wf = parse_workflow(GOOD, CI)
    meta = {"sha": "a" * 40, "ref": "refs/heads/feature/x", "repo_name": "proj",
            "run_id": "20261201-1", "gha": {"repository": "acme/proj", "actor": "alice"}}
    github = github_context(meta, "pull_request", wf, "/w")
    assert (github["ref_name"], github["head_ref"], github["base_ref"]) == (
        "feature/x", "feature/x", "main")
    assert github["repository_owner"] == "acme" and github["actor"] == "alice"
    assert github["event"]["pull_request"]["head"]["sha"] == "a" * 40
    env = default_env(github, runner_context("/t"))
    assert env["GITHUB_EVENT_NAME"] == "pull_request"
    assert env["GITHUB_REPOSITORY"] == "acme/proj" and env["RUNNER_OS"] == "Linux"
    assert env["GITHUB_ACTIONS"] == "true" and env["RUNNER_TEMP"] == "/t"
    tag = github_context({**meta, "ref": "refs/tags/v1"}, "push", wf, "/w")
    assert (tag["ref_type"], tag["ref_name"], tag["head_ref"]) == ("tag", "v1", "")
