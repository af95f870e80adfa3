"""The first hour at the terminal: naming runs (`latest`, prefixes), listing them, reading
their logs, and `--version`. The real CLI in a subprocess, on real git repositories.

`latest` and `runs` look at the repository the command runs in, so every call here
says where it runs (``cwd=``); ``away`` is a folder inside no repository.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git, make_repo

ROOT = Path(__file__).resolve().parents[1]
Cli = Callable[..., Result]

GREEN = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello from {name}"])
        print("the pipeline itself speaks")
"""

RED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("fine", ["echo", "all good here"])
        await step.run("broken", ["sh", "-c", "echo something broke; exit 3"])
"""

GATED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.wait_for_approval("gate", timeout="1 hour")
        await step.run("after", ["echo", "approved and done"])
"""


@pytest.fixture
def away(tmp_path: Path) -> Path:
    path = tmp_path / "away"
    path.mkdir()
    return path


@pytest.fixture
def no_git(tmp_path: Path) -> dict[str, str]:
    """Git must not find a repository above the test's folders."""
    return {"GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}


def usage_error(result: Result, *needles: str) -> str:
    """Exit 2 and one `error:` line holding every needle; no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_id(result: Result) -> str:
    assert result.code in (0, 1, 3), (result.code, result.out, result.err)
    return str(result.json()["run_id"])


def ids(result: Result) -> list[str]:
    assert result.code == 0, (result.out, result.err)
    return [r["run_id"] for r in result.json()]


def ran_as(cli: Cli, run: str, cwd: Path) -> dict[str, Any]:
    shown = cli("show", run, "--json", cwd=cwd)
    assert shown.code == 0, shown.err
    return dict(shown.json())


# -- --version ---------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(cli: Cli, away: Path) -> None:
    expected = f"ci-runner {version('ci-runner')}\n"

    for flag in ("--version", "-V"):
        done = cli(flag, cwd=away)
        assert (done.code, done.out, done.err) == (0, expected, "")


# -- naming a run: latest, prefixes --------------------------------------------------------


def test_latest_is_the_newest_run_of_the_repo_here(
    cli: Cli, tmp_path: Path, away: Path, no_git: dict[str, str]
) -> None:
    alpha = make_repo(tmp_path / "alpha", {".ci/pipeline.py": GREEN.format(name="alpha")})
    beta = make_repo(tmp_path / "beta", {".ci/pipeline.py": RED})
    first = run_id(cli("run", "--json", cwd=alpha))
    second = run_id(cli("run", "--json", cwd=alpha))
    newest = run_id(cli("run", "--json", cwd=beta))

    # In alpha (or any folder of it), `latest` and no run at all mean alpha's newest.
    (alpha / "sub").mkdir()
    for where in (alpha, alpha / "sub"):
        assert cli("show", "--json", cwd=where).json()["run_id"] == second
        assert cli("show", "latest", "--json", cwd=where).json()["run_id"] == second
    assert f"run      {second}" in cli("show", cwd=alpha).out
    # --repo/-C names another repo; outside every repo, the newest of all.
    assert cli("show", "-C", str(alpha), "--json", cwd=beta).json()["run_id"] == second
    assert cli("show", "--repo", str(beta), "--json", cwd=alpha).json()["run_id"] == newest
    assert cli("show", "--json", cwd=away, env=no_git).json()["run_id"] == newest
    # An explicit id still works from anywhere.
    assert cli("show", first, "--json", cwd=beta).json()["run_id"] == first

    # logs: of the latest run too; `logs STEP` is that run's step.
    assert "hello from alpha" in cli("logs", cwd=alpha).out
    assert "something broke" in cli("logs", "latest", "broken", cwd=beta).out
    assert "something broke" in cli("logs", "broken", cwd=beta).out
    assert "something broke" not in cli("logs", "fine", cwd=beta).out
    usage_error(cli("logs", "nosuch", cwd=beta), "no run 'nosuch'", "broken", newest)

    # A repo with no runs yet, and a home with none at all.
    empty = make_repo(tmp_path / "empty", {"README.md": "x\n"})
    usage_error(cli("show", cwd=empty), "no run of empty yet", "--all")
    usage_error(cli("logs", "latest", cwd=empty), "no run of empty yet")
    usage_error(cli("show", "-C", str(tmp_path / "nowhere"), cwd=alpha), "nowhere")


KEEPS = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("pack", ["sh", "-c", "echo {name} > out.txt"], artifacts=["out.txt"])
"""


def test_artifacts_of_the_latest_run(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "keeps", {".ci/pipeline.py": KEEPS.format(name="first")})
    run_id(cli("run", "--json", cwd=repo))
    commit(repo, {".ci/pipeline.py": KEEPS.format(name="second")}, "second")
    newest = run_id(cli("run", "--json", cwd=repo))

    listed = cli("artifacts", "--json", cwd=repo)
    out = tmp_path / "out"
    copied = cli("artifacts", "latest", "--download", str(out), cwd=repo)

    assert [a["path"] for a in listed.json()] == ["out.txt"], listed.err
    assert copied.code == 0 and (out / "out.txt").read_text() == "second\n", copied.err
    assert cli("artifacts", newest, "--json", cwd=tmp_path).json() == listed.json()


def test_no_runs_at_all(cli: Cli, away: Path, no_git: dict[str, str]) -> None:
    usage_error(cli("show", cwd=away, env=no_git), "no runs yet", "ci-runner run")
    usage_error(cli("resume", cwd=away, env=no_git), "no runs yet")
    usage_error(cli("retry", "latest", cwd=away, env=no_git), "no runs yet")
    done = cli("runs", cwd=away, env=no_git)
    assert done.code == 0 and "no runs yet" in done.out


def test_an_ambiguous_prefix_lists_its_candidates(cli: Cli, repo_with: Callable[..., Path],
                                                  away: Path) -> None:
    repo = repo_with(GREEN.format(name="p"))
    one = run_id(cli("run", "--json", cwd=repo))
    two = run_id(cli("run", "--json", cwd=repo))
    size = next(i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b)
    shared = one[:size]
    assert shared  # ids start with their date

    line = usage_error(cli("show", shared, cwd=away), "ambiguous", "2 runs", one, two, "proj")
    assert "no run" not in line
    for command in (("logs", shared), ("resume", shared), ("cancel", shared),
                    ("approve", shared), ("retry", shared)):
        usage_error(cli(*command, cwd=away), "ambiguous", one, two)
    # A unique prefix is enough, as before; a prefix of nothing is no run.
    assert cli("show", two[:len(shared) + 1], "--json", cwd=away).json()["run_id"] == two
    usage_error(cli("show", "zz-no-such", cwd=away), "no run 'zz-no-such'")
    usage_error(cli("show", "", cwd=away), "the run is empty")


def test_commands_that_stop_a_run_want_it_named(
    cli: Cli, repo_with: Callable[..., Path]
) -> None:
    repo = repo_with(GATED)
    waiting = run_id(cli("run", "--json", cwd=repo))

    usage_error(cli("cancel", cwd=repo), "name the run to cancel", "latest")
    usage_error(cli("pause", cwd=repo), "name the run to pause", "latest")
    assert "waiting" in ran_as(cli, waiting, repo)["status"]  # untouched

    done = cli("cancel", "latest", cwd=repo)

    assert done.code == 0 and waiting in done.out, done.err
    assert ran_as(cli, waiting, repo)["status"] in ("terminated", "cancelled")


def test_retry_and_resume_default_to_the_latest_run(
    cli: Cli, tmp_path: Path
) -> None:
    flag = tmp_path / "pass-now"
    body = f"""
from pathlib import Path
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("check", ["test", "-e", {str(flag)!r}])
"""
    repo = make_repo(tmp_path / "retried", {".ci/pipeline.py": body})
    failed = run_id(cli("run", "--json", cwd=repo))
    assert cli("show", "--json", cwd=repo).json()["steps"][0]["exit_code"] == 1
    flag.touch()

    again = cli("retry", "--json", cwd=repo)

    assert again.code == 0, (again.out, again.err)
    assert again.json()["run_id"] == failed
    assert again.json()["steps"][0]["exit_code"] == 0
    # Nothing left to drive: resume of the latest says so in one line.
    usage_error(cli("resume", cwd=repo), failed)
    usage_error(cli("resume", failed, "--all", cwd=repo), "not both")


# -- approve / reject with no run named ---------------------------------------------------


def test_approve_with_no_run_takes_the_one_waiting_here(
    cli: Cli, tmp_path: Path, away: Path, no_git: dict[str, str]
) -> None:
    alpha = make_repo(tmp_path / "alpha", {".ci/pipeline.py": GATED})
    beta = make_repo(tmp_path / "beta", {".ci/pipeline.py": GATED})
    plain = make_repo(tmp_path / "plain", {".ci/pipeline.py": GREEN.format(name="x")})
    usage_error(cli("approve", cwd=alpha), "no run of alpha waits for an approval")
    a = run_id(cli("run", "--json", cwd=alpha))
    b = run_id(cli("run", "--json", cwd=beta))
    assert cli("run", cwd=plain).code == 0

    # Outside a repo both wait: which one is meant must be said.
    line = usage_error(cli("approve", cwd=away, env=no_git), "2 runs wait for an approval",
                       a, b, "'gate'")
    usage_error(cli("reject", cwd=away, env=no_git), a, b)
    # In a repo without one, the others are mentioned.
    usage_error(cli("approve", cwd=plain), "no run of plain waits", "2 runs of other repos")
    assert "alpha" in line and "beta" in line

    done = cli("approve", "--as", "ann", "--json", cwd=alpha)

    assert done.code == 0, (done.out, done.err)
    assert done.json()["run_id"] == a and done.json()["approvals"][0]["by"] == "ann"
    # Now one waits anywhere: outside a repo that is the one.
    rejected = cli("reject", "--as", "bob", "--json", cwd=away, env=no_git)
    assert rejected.json()["run_id"] == b and rejected.code == 1
    assert rejected.json()["approvals"][0]["decision"] == "reject"
    usage_error(cli("approve", cwd=away, env=no_git), "no run waits for an approval")


# -- runs: this repo by default, filters ----------------------------------------------------


def test_runs_lists_this_repo_and_filters(
    cli: Cli, tmp_path: Path, away: Path, no_git: dict[str, str]
) -> None:
    alpha = make_repo(tmp_path / "alpha", {".ci/pipeline.py": GREEN.format(name="a")})
    beta = make_repo(tmp_path / "beta", {".ci/pipeline.py": RED})
    a_main = run_id(cli("run", "--json", cwd=alpha))
    git(alpha, "checkout", "-q", "-b", "feature")
    commit(alpha, {"f.txt": "f\n"}, "feature work")
    a_feature = run_id(cli("run", "--json", cwd=alpha))
    b_failed = run_id(cli("run", "--json", cwd=beta))

    assert ids(cli("runs", "--json", cwd=alpha)) == [a_feature, a_main]
    assert ids(cli("runs", "--json", cwd=beta)) == [b_failed]
    assert ids(cli("runs", "--all", "--json", cwd=alpha)) == [b_failed, a_feature, a_main]
    assert ids(cli("runs", "--json", cwd=away, env=no_git)) == [b_failed, a_feature, a_main]
    assert ids(cli("runs", "-C", str(beta), "--json", cwd=alpha)) == [b_failed]
    assert ids(cli("runs", "--branch", "main", "--json", cwd=alpha)) == [a_main]
    assert ids(cli("runs", "--branch", "feature", "--all", "--json", cwd=beta)) == [a_feature]
    assert ids(cli("runs", "--limit", "1", "--json", cwd=alpha)) == [a_feature]
    # Statuses in the user's words (the engine stores 'errored' for a failed run).
    assert ids(cli("runs", "--all", "--status", "failed", "--json", cwd=alpha)) == [b_failed]
    assert ids(cli("runs", "--all", "--status", "complete", "--json", cwd=alpha)) == [
        a_feature, a_main]
    assert ids(cli("runs", "--all", "--status", "failed,complete", "--json", cwd=alpha)) == [
        b_failed, a_feature, a_main]
    assert ids(cli("runs", "--status", "cancelled", "--json", cwd=alpha)) == []
    human = cli("runs", "--status", "failed", cwd=alpha)
    assert human.code == 0 and "no run of alpha matches" in human.out and "--all" in human.out
    listed = cli("runs", cwd=alpha).out.splitlines()
    assert [line.split()[0] for line in listed] == [a_feature, a_main]

    usage_error(cli("runs", "--status", "broken", cwd=alpha), "unknown status 'broken'",
                "failed", "cancelled")
    usage_error(cli("runs", "--limit", "0", cwd=alpha), "--limit")
    usage_error(cli("runs", "--all", "-C", str(beta), cwd=alpha), "--all", "--repo")
    usage_error(cli("runs", "--branch", " ", cwd=alpha), "--branch")


# -- logs: --failed, the pipeline's own output, following ---------------------------------


def test_logs_failed_and_the_pipeline_section(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    red = make_repo(tmp_path / "red", {".ci/pipeline.py": RED})
    green = make_repo(tmp_path / "green", {".ci/pipeline.py": GREEN.format(name="g")})
    bad = run_id(cli("run", "--json", cwd=red))
    good = run_id(cli("run", "--json", cwd=green))

    failed = cli("logs", "--failed", cwd=red)
    assert failed.code == 0, failed.err
    assert failed.out.splitlines()[0] == "==> broken <=="
    assert "something broke" in failed.out and "all good here" not in failed.out
    everything = cli("logs", bad, cwd=green)
    assert "all good here" in everything.out and "something broke" in everything.out
    nothing = cli("logs", "--failed", good, cwd=red)
    assert (nothing.code, nothing.out) == (0, "")
    assert f"no step of run {good} failed" in nothing.err
    usage_error(cli("logs", "--failed", bad, "fine", cwd=red), "--failed")

    # The pipeline's own output is its own section, after the steps'.
    shown = cli("logs", cwd=green).out
    assert shown.index("==> hello <==") < shown.index("hello from g")
    assert shown.index("==> pipeline <==") > shown.index("hello from g")
    assert "the pipeline itself speaks" in shown.split("==> pipeline <==")[1]
    assert cli("logs", good, "pipeline", cwd=red).out == "the pipeline itself speaks\n"
    # A run whose pipeline printed nothing has no such section.
    assert "==> pipeline <==" not in cli("logs", bad, cwd=red).out
    assert (home / "logs" / bad / "pipeline.log").exists()

    # A step may be called "pipeline": `logs RUN pipeline` is that step's log, and the
    # pipeline's own output stays its own.
    named = make_repo(tmp_path / "named", {".ci/pipeline.py": NAMED_PIPELINE})
    both = run_id(cli("run", "--json", cwd=named))
    assert cli("logs", both, "pipeline", cwd=named).out.splitlines()[1] == "from the step"
    shown = cli("logs", cwd=named).out
    assert shown.count("==> pipeline <==") == 2
    assert "from the step" in shown and "from the pipeline" in shown


NAMED_PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("pipeline", ["echo", "from the step"])
        print("from the pipeline")
"""


PARALLEL = """
import os
from ci_runner import Pipeline

WAIT = 'echo {me}1; touch "$1/{me}"; while [ ! -e "$1/go" ]; do sleep 0.05; done; echo {me}2'

class CI(Pipeline):
    async def run(self, event, step):
        await step.parallel(
            step.run("left", ["sh", "-c", WAIT.format(me="L"), "sh", __DIR__]),
            step.run("right", ["sh", "-c", WAIT.format(me="R"), "sh", __DIR__]),
        )
"""


class Streaming:
    """A CLI process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, home: Path) -> None:
        env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
               "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ci_runner", *args], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def wait_for(self, line: str, within_s: float = 30) -> None:
        deadline = time.monotonic() + within_s
        while line not in self.lines:
            ended = not self._reader.is_alive()  # its stdout closed: it exited
            if line in self.lines:
                return
            if ended or time.monotonic() > deadline:
                raise AssertionError(f"never printed {line!r}: {self.lines}")
            time.sleep(0.02)

    def finish(self, within_s: float = 60) -> tuple[int, str]:
        """Its exit code and stderr, once it has exited (killed past ``within_s``)."""
        try:
            self.proc.wait(timeout=within_s)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(10)
        self._err_reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode, "".join(self.err)


def step_statuses(home: Path) -> dict[str, str]:
    try:
        with sqlite3.connect(f"file:{home / 'ci-runner.db'}?mode=ro", uri=True,
                             timeout=5) as db:
            return dict(db.execute("SELECT name, status FROM steps").fetchall())
    except sqlite3.OperationalError:
        return {}


def test_follow_prefixes_lines_while_steps_run_side_by_side(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    repo = make_repo(tmp_path / "par",
                     {".ci/pipeline.py": PARALLEL.replace("__DIR__", repr(str(gates)))})
    runner = Streaming(["run"], repo, home)
    try:
        deadline = time.monotonic() + 60
        while not ((gates / "L").exists() and (gates / "R").exists()
                   and step_statuses(home) == {"left": "running", "right": "running"}):
            assert time.monotonic() < deadline and runner.proc.poll() is None, runner.lines
            time.sleep(0.05)
        both = Streaming(["logs", "-f"], repo, home)
        one = Streaming(["logs", "-f", "latest", "left"], repo, home)
        both.wait_for("[left] L1")
        both.wait_for("[right] R1")
        one.wait_for("L1")
        (gates / "go").touch()
        assert runner.finish()[0] == 0
        assert both.finish()[0] == 0 and one.finish()[0] == 0
    finally:
        (gates / "go").touch()
        runner.finish()

    # Side by side: every line says its step (the attempt's own notes too).
    assert {"[left] L1", "[left] L2", "[right] R1", "[right] R2"} <= set(both.lines), both.lines
    assert all(line.startswith(("[left] ", "[right] ")) for line in both.lines), both.lines
    # One step followed: its lines as they are.
    assert [line for line in one.lines if not line.startswith("---")] == ["L1", "L2"]


def test_follow_of_steps_one_after_another_is_not_prefixed(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    one = make_repo(tmp_path / "one", {".ci/pipeline.py": GREEN.format(name="solo")})
    two = make_repo(tmp_path / "two", {".ci/pipeline.py": RED})
    run_id(cli("run", "--json", cwd=one))
    run_id(cli("run", "--json", cwd=two))

    solo = cli("logs", "-f", cwd=one, timeout=60)
    seq = cli("logs", "--follow", cwd=two, timeout=60)

    assert solo.code == 0 and seq.code == 0, (solo.err, seq.err)
    assert not any(line.startswith("[") for line in solo.out.splitlines() + seq.out.splitlines())
    assert "hello from solo" in solo.out.splitlines()
    lines = seq.out.splitlines()
    assert lines[0] == "==> fine <==" and "==> broken <==" in lines
    assert lines.index("all good here") < lines.index("==> broken <==") < lines.index(
        "something broke")


# -- Ctrl-C: interrupted, offered resume and cancel, not driven by a worker ----------------


HANGS = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hang", ["sh", "-c",
                                'echo started; if [ -e "$1" ]; then echo again; else : > "$1";'
                                ' exec sleep 60; fi', "sh", __FLAG__])
        await step.run("after", ["echo", "after"])
"""


def test_ctrl_c_offers_resume_and_cancel_and_only_resume_drives_it_on(
    cli: Cli, tmp_path: Path, home: Path
) -> None:
    flag = tmp_path / "second-attempt"
    repo = make_repo(tmp_path / "hangs",
                     {".ci/pipeline.py": HANGS.replace("__FLAG__", repr(str(flag)))})
    runner = Streaming(["run"], repo, home)
    try:
        deadline = time.monotonic() + 60
        while not (flag.exists() and step_statuses(home).get("hang") == "running"):
            assert time.monotonic() < deadline and runner.proc.poll() is None, runner.lines
            time.sleep(0.05)
        os.killpg(runner.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        code, err = runner.finish()
    finally:
        if runner.proc.poll() is None:
            os.killpg(runner.proc.pid, signal.SIGKILL)

    (record,) = cli("runs", "--json", cwd=repo).json()
    rid = record["run_id"]
    assert code == 130, err
    assert f"`ci-runner resume {rid}`" in err and f"`ci-runner cancel {rid}`" in err
    assert record["status"] == "interrupted"
    # Nothing drives it behind the user's back; `pending` says it waits for them.
    assert cli("worker", "--once", "--poll", "0.1", timeout=60).code == 0
    assert ran_as(cli, rid, repo)["status"] == "interrupted"
    pending = cli("pending", cwd=repo).out
    assert f"ci-runner resume {rid}" in pending and "interrupted" in pending

    resumed = cli("resume", "--json", cwd=repo, timeout=90)  # no id: the latest

    assert resumed.code == 0, (resumed.out, resumed.err)
    assert resumed.json()["run_id"] == rid and resumed.json()["status"] == "complete"
    assert "again" in cli("logs", "hang", cwd=repo).out
    assert json.loads(cli("pending", "--json", cwd=repo).out) == []
