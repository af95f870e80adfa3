"""Every step ends in a true state, said in the user's words: through the real CLI, in
JSON, in `show`, in `runs`, in plain lines and in the live view (a pseudo-terminal).

A rejected approval gate is `rejected`; the siblings of a failed parallel step are
`cancelled` (or, with ``fail_fast=False``, finish); a run is `failed`, not `errored`;
`--only`/`--skip` take any name and say which they never reached.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from tests.conftest import ROOT, Result
from tests.gitrepos import ISOLATED_GIT_ENV, git
from tests.terminal import Keys, in_terminal

Cli = Callable[..., Result]
RepoWith = Callable[..., Path]
PTY_TIMEOUT_S = 90.0
ENGINE_WORDS = ("errored", "terminated", "waiting_for_event")


def steps(record: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


def step_of(record: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in record["steps"] if s["name"] == name]
    return found


def in_pty(home: Path, *args: str, cwd: Path, ctrl_c_on: str | None = None) -> tuple[int, str]:
    """`ci-runner ARGS` with a pseudo-terminal as its stdout and stderr (the live view).
    ``ctrl_c_on``: once the screen matches that pattern, Ctrl-C."""
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}

    def interrupt(screen: str, keys: Keys) -> bool:
        if ctrl_c_on is None:
            return True
        if re.search(ctrl_c_on, screen):
            keys.ctrl_c()
            return True
        return False

    return in_terminal(args, env, cwd=cwd, stdin_tty=False, timeout=PTY_TIMEOUT_S,
                       react=interrupt)


def no_engine_words(text: str) -> None:
    for word in ENGINE_WORDS:
        assert word not in text, (word, text)


GATED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["echo", "built"])
        await step.wait_for_approval("gate", message="ship it?")
        await step.run("deploy", ["echo", "deployed"])
"""


def test_a_rejected_gate_is_rejected_not_complete(
    cli: Cli, repo_with: RepoWith, home: Path
) -> None:
    repo = repo_with(GATED)
    first = cli("run", "--json", cwd=repo)
    assert first.code == 3, first.err
    waiting = first.json()
    run_id = waiting["run_id"]
    assert waiting["status"] == "waiting" and waiting["waiting_for"] == "approval"
    assert step_of(waiting, "gate")["status"] == "waiting"
    assert step_of(waiting, "gate")["waiting_for"] == "approval"
    shown = cli("show", run_id)
    assert f"run {run_id} waiting for approval" in shown.out
    no_engine_words(shown.out)

    code, screen = in_pty(home, "reject", run_id, "--comment", "not today", "--as", "carol",
                          cwd=repo)

    assert code == 1, screen
    assert re.search(r"✗ +gate +rejected", screen), screen
    assert "1/2 steps complete" in screen and "2/2" not in screen
    assert "rejected by carol at step 'gate'" in screen and "not today" in screen
    assert "rejectd" not in screen
    record = cli("show", run_id, "--json").json()
    assert record["status"] == "failed" and record["waiting_for"] is None
    assert steps(record) == {"build": "complete", "gate": "rejected"}
    assert step_of(record, "gate")["error"] == "rejected by carol: not today"
    assert record["error"]["type"] == "Rejected"
    assert "rejected by carol: not today" in record["error"]["message"]
    text = cli("show", run_id).out
    assert re.search(r"rejected +gate", text) and "status   failed" in text, text
    assert "1/2 steps complete" in text and "rejectd" not in text
    no_engine_words(text)
    (listed,) = cli("runs", "--json", cwd=repo).json()
    assert listed["status"] == "failed" and steps(listed)["gate"] == "rejected"

    # Plain lines (a pipe) say it too; an approval says "approved by".
    again = cli("run", cwd=repo)
    assert again.code == 3
    second = cli("runs", "--json", cwd=repo).json()[0]["run_id"]
    approved = cli("approve", second, "--comment", "go", "--as", "dave")
    assert approved.code == 0, approved.err
    assert "approved by dave at step 'gate'" in cli("show", second).out
    third = cli("run", cwd=repo)
    rejected = cli("reject", cli("runs", "--json", cwd=repo).json()[0]["run_id"],
                   "--as", "erin")
    assert rejected.code == 1
    assert "✗ gate rejected - rejected by erin" in rejected.out, rejected.out
    assert third.code == 3


PARALLEL_CAUGHT = """
from ci_runner import Pipeline, StepFailed

class CI(Pipeline):
    async def run(self, event, step):
        try:
            await step.parallel(
                step.run("fails", ["sh", "-c", "sleep 0.3; exit 3"]),
                step.run("slow", ["sh", "-c", "sleep 30; echo finished > slow.done"]),
            )
        except StepFailed as exc:
            seen = str(exc)
        await step.run("after", ["sh", "-c", "test ! -e slow.done && echo went on"])
        return seen
"""


def test_fail_fast_cancels_the_siblings_at_once_and_says_so(
    cli: Cli, repo_with: RepoWith
) -> None:
    repo = repo_with(PARALLEL_CAUGHT)

    done = cli("run", "--json", cwd=repo, timeout=25)

    # The pipeline caught the failure and went on: the sibling was stopped then, not at
    # the end of the run, and is recorded cancelled while the run completes.
    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["status"] == "complete"
    assert steps(record) == {"fails": "failed", "slow": "cancelled", "after": "complete"}
    assert "step.parallel failed" in step_of(record, "slow")["error"]
    plain = cli("run", cwd=repo, timeout=25)
    assert re.search(r"⊗ slow cancelled .*- cancelled: a step beside it", plain.out), plain.out
    assert "✓ after complete" in plain.out


FAIL_FAST_OFF = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.parallel(
            step.run("lint", ["sh", "-c", "echo 'a.py:1:8: F401 unused'; exit 1"]),
            step.run("test", ["sh", "-c", "sleep 1; echo passed > test.done; echo ok"]),
            step.run("docs", ["sh", "-c", "sleep 2; exit 4"]),
            fail_fast=False,
        )
        await step.run("never", ["true"])
"""


def test_fail_fast_false_lets_the_siblings_finish(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(FAIL_FAST_OFF)

    done = cli("run", "--json", "--keep-workspace", cwd=repo, timeout=60)

    assert done.code == 1, (done.out, done.err)
    record = done.json()
    assert record["status"] == "failed"
    assert steps(record) == {"lint": "failed", "test": "complete", "docs": "failed"}
    assert step_of(record, "docs")["exit_code"] == 4
    assert (Path(record["workspace"]) / "test.done").read_text() == "passed\n"
    # The failure that came first is the run's.
    assert "'lint'" in record["error"]["message"], record["error"]


SELECTABLE = """
from pathlib import Path
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["sh", "-c", "test ! -e BROKEN"])
        await step.run("test", ["echo", "tested"])
        await step.run("deploy", ["echo", "deployed"])
"""


def test_only_and_skip_take_any_name_and_say_what_they_never_reached(
    cli: Cli, repo_with: RepoWith
) -> None:
    repo = repo_with(SELECTABLE, {"BROKEN": "yes\n"})
    early = cli("run", "--json", cwd=repo)
    assert early.code == 1 and steps(early.json()) == {"build": "failed"}

    # The last run never got to 'deploy': still, --only deploy is taken.
    deploy = cli("run", "--json", "--only", "deploy", cwd=repo)
    assert deploy.code == 0, (deploy.out, deploy.err)
    record = deploy.json()
    assert steps(record) == {"build": "skipped", "test": "skipped", "deploy": "complete"}
    assert record["selection"] == {"only": ["deploy"], "skip": [], "unreached": []}

    # A run that fails before a selected step says it never got there.
    failed = cli("run", "--only", "build,deploy", cwd=repo)
    assert failed.code == 1
    assert "--only deploy: no step named 'deploy' was reached" in failed.out
    assert "--only build" not in failed.out

    git(repo, "rm", "-q", "BROKEN")
    git(repo, "commit", "-q", "-m", "fixed")
    typo = cli("run", "--json", "--skip", "docker-check,test", cwd=repo)
    assert typo.code == 0, typo.err
    assert typo.json()["selection"]["unreached"] == ["docker-check"]
    shown = cli("show", typo.json()["run_id"])
    assert "--skip docker-check: no step named 'docker-check' was reached" in shown.out

    both = cli("run", "--only", "test", "--skip", "test", cwd=repo)
    assert both.code == 2 and both.err.startswith("error: ") and "both" in both.err
    assert len(both.err.strip().splitlines()) == 1


WORDS = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        if event.payload.get("how") == "sleep":
            await step.sleep("nap", "10 minutes")
        elif event.payload.get("how") == "event":
            await step.wait_for_event("hold", "go-ahead", timeout="1 hour")
        else:
            await step.run("boom", ["sh", "-c", "exit 5"])
"""


def test_runs_are_said_in_user_words_everywhere(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(WORDS)
    failed = cli("run", "--json", cwd=repo)
    assert failed.code == 1
    assert failed.json()["status"] == "failed"
    sleeping = cli("run", "--json", "--param", "how=sleep", cwd=repo)
    assert sleeping.code == 3
    assert sleeping.json()["status"] == "sleeping" and sleeping.json()["waiting_for"] is None
    assert step_of(sleeping.json(), "nap")["status"] == "sleeping"
    event = cli("run", "--param", "how=event", cwd=repo)
    assert event.code == 3
    assert "waiting for event go-ahead" in event.out
    no_engine_words(event.out)
    (waiting, asleep, failing) = cli("runs", "--json", cwd=repo).json()
    assert waiting["status"] == "waiting" and waiting["waiting_for"] == "go-ahead"
    assert step_of(waiting, "hold")["waiting_for"] == "go-ahead"
    assert cli("cancel", asleep["run_id"]).code == 0
    cancelled = cli("show", asleep["run_id"], "--json").json()
    assert cancelled["status"] == "cancelled"
    assert steps(cancelled) == {"nap": "cancelled"}
    listing = cli("runs", cwd=repo).out
    no_engine_words(listing)
    for word in ("waiting", "cancelled", "failed"):
        assert word in listing, listing
    for run_id in (waiting["run_id"], failing["run_id"]):
        no_engine_words(cli("show", run_id).out)
    resumed = cli("resume", failing["run_id"])
    assert resumed.code == 2 and "is failed" in resumed.err
    no_engine_words(resumed.err)


NOISY_FAILURE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("install", ["sh", "-c", '''
echo "npm ERR! code ENOLOCK"
echo "npm ERR! This command requires an existing lockfile."
for i in $(seq 1 40); do echo "noise line $i"; done
echo "the very end"
exit 1
'''])
"""


def test_a_failure_excerpt_shows_the_first_errors_and_the_tail(
    repo_with: RepoWith, home: Path
) -> None:
    repo = repo_with(NOISY_FAILURE)

    code, screen = in_pty(home, "run", cwd=repo)

    assert code == 1, screen
    excerpt = screen[screen.index("── install: first errors and last output ──"):]
    lines = [line.rstrip() for line in excerpt.splitlines()]
    assert lines[1:3] == ["npm ERR! code ENOLOCK",
                          "npm ERR! This command requires an existing lockfile."]
    assert lines[3].strip() == "⋮ 29 lines ⋮"  # noise 1-29; the last 12 lines follow
    assert lines[4:16] == [f"noise line {i}" for i in range(30, 41)] + ["the very end"]
    assert "noise line 29" not in excerpt


@pytest.mark.parametrize(("output", "expected"), [
    # ruff's full format: the rule line comes first, far above the end.
    (["F401 [*] `os` imported but unused", " --> a.py:1:8", *[f"  | ctx {i}" for i in range(30)],
      "Found 1 error."],
     ["F401 [*] `os` imported but unused", " --> a.py:1:8", "  ⋮ 19 lines ⋮"]),
    # pytest: the assertion lines, then the summary at the end.
    (["collected 3 items", "E   assert 1 == 2", "E    +  where 1 = f()",
      *[f"tests/x.py:{i}: in f" for i in range(20)], "FAILED tests/x.py::test_a"],
     ["  ⋮ 1 line ⋮", "E   assert 1 == 2", "E    +  where 1 = f()", "  ⋮ 9 lines ⋮"]),
    # Short output: the tail is all of it, nothing repeated.
    (["error: x", "ok"], []),
])
def test_excerpt_picks_error_looking_lines(output: list[str], expected: list[str]) -> None:
    from ci_runner.cli.view import TAIL_LINES, StepState

    state = StepState("s")
    for line in output:
        state.add_line(line)
    excerpt = state.excerpt()
    assert excerpt[:len(expected)] == expected
    assert excerpt[len(expected):] == output[-TAIL_LINES:]


def test_excerpt_is_bounded() -> None:
    from ci_runner.cli.view import EXCERPT_LINE_CHARS, FIRST_ERROR_LINES, TAIL_LINES, StepState

    state = StepState("s")
    for i in range(10_000):
        state.add_line(f"error: {i} " + "x" * 10_000)
    excerpt = state.excerpt()
    assert len(excerpt) <= FIRST_ERROR_LINES * 2 + TAIL_LINES
    assert all(len(line) <= EXCERPT_LINE_CHARS + 2 for line in excerpt)


def test_commit_statuses_and_server_words() -> None:
    from ci_runner.server.status import report_for

    waits = json.dumps([{"step": "gate", "event_type": "approval", "approval": True}])
    assert report_for("errored", None).description == "ci-runner: failed"
    assert report_for("terminated", None).description == "ci-runner: cancelled"
    assert report_for("waiting_for_event", waits).description == (
        "ci-runner: waiting for approval")
    hold = json.dumps([{"step": "hold", "event_type": "go-ahead"}])
    assert report_for("waiting_for_event", hold).description == (
        "ci-runner: waiting for event go-ahead")
    assert report_for("waiting", None).description == "ci-runner: sleeping"
    interrupted = report_for("interrupted", None)
    assert interrupted.state == "error" and not interrupted.final


def test_the_server_log_says_what_became_of_a_run(
    cli: Cli, repo_with: RepoWith, home: Path
) -> None:
    from ci_runner.server.dispatcher import driver_outcome

    repo = repo_with(dedent(GATED))
    assert cli("run", cwd=repo).code == 3
    run_id = cli("runs", "--json", cwd=repo).json()[0]["run_id"]
    assert driver_outcome(run_id, 3) == (
        "waiting for approval: it holds no process until then")
    assert cli("reject", run_id, "--comment", "no").code == 1
    assert driver_outcome(run_id, 1) == "failed: step 'gate' was rejected by " + (
        cli("show", run_id, "--json").json()["approvals"][0]["by"] + ": no")
    assert driver_outcome("no-such-run", 1) == (
        "is no longer driven (its driver exited with code 1)")


INTERRUPTIBLE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("quick", ["echo", "done"])
        await step.parallel(
            step.run("slow", ["sleep", "60"]),
            step.run("slower", ["sh", "-c", "sleep 60"]),
        )
"""


def test_ctrl_c_leaves_the_screen_saying_interrupted_not_running(
    cli: Cli, repo_with: RepoWith, home: Path
) -> None:
    repo = repo_with(INTERRUPTIBLE)

    code, screen = in_pty(home, "run", cwd=repo, ctrl_c_on=r"▶ +slower +running")

    assert code == 130, screen
    assert re.search(r"■ +slow +interrupted", screen), screen
    assert re.search(r"■ +slower +interrupted", screen), screen
    assert re.search(r"run \S+ interrupted in [\d.]+s: 1/3 steps complete", screen), screen
    record = cli("runs", "--json", cwd=repo).json()[0]
    assert record["status"] == "interrupted"
    assert steps(record) == {"quick": "complete", "slow": "interrupted",
                             "slower": "interrupted"}
    plain = cli("show", record["run_id"]).out
    assert re.search(r"interrupted +slow", plain), plain
