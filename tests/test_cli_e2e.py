"""The real `ci-runner` CLI in a subprocess, on real git repositories: what a user sees.

No mocks: every test writes a `.ci/pipeline.py`, commits it, runs `python -m ci_runner`
against a private CI_RUNNER_HOME and checks exit codes, JSON records, logs, the
database file and the user's checkout. Side effects a pipeline must prove (a step
ran, how often, what payload it saw) go to files outside the run's worktree.
Usage and configuration errors are in test_cli_errors.py, which shares these helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git, make_repo, write

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

RUN_KEYS = {"run_id", "status", "repo", "sha", "steps"}
STEP_KEYS = {"name", "status", "attempts", "duration_s", "exit_code"}

Cli = Callable[..., Result]
RepoWith = Callable[..., Path]


# -- helpers ---------------------------------------------------------------------------


def pipeline(body: str, **values: Any) -> str:
    """A pipeline file: ``body`` dedented, each ``__NAME__`` replaced by ``repr(value)``."""
    text = textwrap.dedent(body).lstrip()
    for name, value in values.items():
        text = text.replace(f"__{name.upper()}__", repr(value))
    return text


BUMP = '''
from pathlib import Path

def bump(path):
    """Count one more call in a file outside the worktree; returns the new count."""
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n
'''


def with_bump(body: str, **values: Any) -> str:
    return BUMP.lstrip() + "\n" + pipeline(body, **values)


def count(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err


def assert_usage_error(result: Result, *needles: str) -> str:
    """Exit 2, exactly one non-empty stderr line starting with `error:`, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    no_traceback(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def at_once(*calls: Callable[[], Result]) -> list[Result]:
    """Independent CLI calls side by side (each a real subprocess), results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def no_git_above(tmp_path: Path) -> dict[str, str]:
    """Env that stops git from finding a repository above the test's tmp dir."""
    return {"GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}


def step_of(record: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in record["steps"] if s["name"] == name]
    assert found, (name, [s["name"] for s in record["steps"]])
    return found[0]


def step_names(record: dict[str, Any]) -> list[str]:
    return [s["name"] for s in record["steps"]]


def user_state(repo: Path) -> dict[str, Any]:
    """Everything about the user's checkout a run must leave exactly as it was."""
    files = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {
        # Index bytes before status; --no-optional-locks stops status rewriting the index.
        "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
        "status": git(repo, "--no-optional-locks", "status", "--porcelain=v1",
                      "--untracked-files=all"),
        "head": git(repo, "symbolic-ref", "HEAD"),
        "head_sha": git(repo, "rev-parse", "HEAD"),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "stash": git(repo, "stash", "list"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "files": files,
    }


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries E2E_MARK=mark (ours, started by a step)."""
    needle = f"E2E_MARK={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def wait_gone(mark: str, within_s: float = 8.0) -> list[int]:
    """Poll until no marked process is left (bounded, not a timing assertion)."""
    deadline = time.monotonic() + within_s
    while True:
        left = marked_pids(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def recorded_pgid(home: Path, step: str) -> bool:
    """Whether the running step's detail (what crash recovery reaps by) names a pgid."""
    try:
        conn = sqlite3.connect(f"file:{home / 'ci-runner.db'}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return False
    try:
        row = conn.execute("SELECT detail FROM steps WHERE name = ?", (step,)).fetchone()
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return row is not None and row[0] is not None and '"pgid"' in row[0]


@pytest.fixture
def mark() -> Iterator[str]:
    """A unique tag for processes a test's steps start; leftovers are killed afterwards."""
    value = uuid.uuid4().hex
    yield value
    for pid in marked_pids(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every repo and worktree for counters and pipeline reports."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


# -- a passing run -----------------------------------------------------------------------

GREEN = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello from ci"])
        await step.do("answer", lambda: 42)
"""

PASSING = with_bump("""
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello from ci"])
        await step.run("shell", "echo via sh && test -f README.md")
        soft = await step.run("soft", ["sh", "-c", "exit 3"], check=False)
        for i in range(2):
            await step.run("loop", ["echo", f"iteration {i}"])
        n = await step.do("answer", lambda: bump(__COUNTER__) and soft["exit_code"] * 14)
        await step.sleep("nap", 0.05)
        return {"n": n}
""")


def test_passing_run(cli: Cli, repo_with: RepoWith, outside: Path) -> None:
    counter = outside / "answer.count"
    repo = repo_with(pipeline(PASSING, counter=str(counter)), {"README.md": "hi\n"})
    head = git(repo, "rev-parse", "HEAD")

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    no_traceback(done)
    record = done.json()
    assert set(record) >= RUN_KEYS
    assert record["status"] == "complete"
    assert record["repo"] == "proj"
    assert record["sha"] == head
    assert record["snapshot"] is False
    assert record["params"] == {}
    assert record["error"] is None
    assert step_names(record) == ["hello", "shell", "soft", "loop", "loop#2", "answer", "nap"]
    for s in record["steps"]:
        assert set(s) >= STEP_KEYS, s
        assert s["status"] == "complete", s
        assert s["attempts"] == 1, s
        assert isinstance(s["duration_s"], (int, float)) and s["duration_s"] >= 0, s
    assert step_of(record, "hello")["exit_code"] == 0
    assert step_of(record, "shell")["exit_code"] == 0
    assert step_of(record, "soft")["exit_code"] == 3  # check=False: recorded, not failed
    assert step_of(record, "answer")["exit_code"] is None  # a Python step has no exit code
    assert "iteration 1" in cli("logs", record["run_id"], "loop#2").out
    assert count(counter) == 1

    shown = cli("show", record["run_id"], "--json")
    assert shown.code == 0, shown.err
    assert shown.json() == record
    listed = cli("runs", "--json")
    assert listed.code == 0, listed.err
    assert listed.json() == [record]

    # A finished run cannot be resumed, and trying changes nothing.
    again = cli("resume", record["run_id"])
    assert_usage_error(again, record["run_id"])
    assert_usage_error(cli("send-event", record["run_id"], "late"), "complete")
    assert count(counter) == 1
    assert cli("show", record["run_id"], "--json").json() == record


def test_worktree_removed_and_user_checkout_untouched(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(GREEN), {"README.md": "hi\n", "src/app.py": "x = 1\n"})
    git(repo, "branch", "feature")
    # A working copy in the middle of something: staged, modified, untracked, ignored.
    commit(repo, {".gitignore": "*.log\n"}, "ignore logs")
    write(repo, {"src/app.py": "x = 2\n"})
    git(repo, "add", "src/app.py")
    write(repo, {"README.md": "edited, not staged\n", "notes.txt": "untracked\n",
                 "debug.log": "ignored\n"})
    before = user_state(repo)

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["workspace"]
    assert not Path(record["workspace"]).exists()
    assert user_state(repo) == before
    admin = repo / ".git" / "worktrees"
    assert not admin.exists() or not any(admin.iterdir())


def test_keep_workspace_and_plain_output(
    cli: Cli, repo_with: RepoWith, home: Path, tmp_path: Path
) -> None:
    repo = repo_with(pipeline(GREEN), {"README.md": "hi\n", "sub/dir/f.txt": "f\n"})

    done = cli("run", "--keep-workspace", cwd=repo / "sub" / "dir")  # found from a subfolder

    assert done.code == 0, (done.out, done.err)
    no_traceback(done)
    (record,) = cli("runs", "--json").json()
    assert "hello from ci" in done.out
    assert record["run_id"] in done.out and "complete" in done.out
    assert record["repo_path"] == str(repo.resolve())
    workspace = Path(record["workspace"])
    assert workspace.is_dir()
    assert workspace.resolve().is_relative_to((home / "worktrees").resolve())
    assert (workspace / "README.md").read_text() == "hi\n"
    assert git(workspace, "rev-parse", "HEAD") == record["sha"]
    assert str(workspace.resolve()) in git(repo, "worktree", "list", "--porcelain")

    shown = cli("show", record["run_id"])
    assert shown.code == 0 and "hello" in shown.out and "answer" in shown.out
    table = cli("runs", "--repo", str(repo), cwd=tmp_path)
    assert table.code == 0 and record["run_id"] in table.out


def test_rev_runs_an_older_commit(cli: Cli, repo_with: RepoWith, tmp_path: Path) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("version", ["cat", "version.txt"])
    """
    repo = repo_with(pipeline(body), {"version.txt": "one\n"})
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    commit(repo, {"version.txt": "two\n"}, "two")

    done = cli("run", "-C", str(repo), "--rev", "v1", "--json", cwd=tmp_path)

    assert done.code == 0, done.err
    record = done.json()
    assert record["sha"] == first
    assert record["ref"] == "refs/tags/v1"


# -- failures ----------------------------------------------------------------------------

FAILING = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("first", ["echo", "first ok"])
        await step.run("boom", "echo to-stdout-before-failing; echo to-stderr >&2; exit 7")
        await step.run("later", ["echo", "never"])
"""


def test_failing_command_stops_the_run(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(FAILING))

    done = cli("run", cwd=repo)

    assert done.code == 1, (done.out, done.err)
    no_traceback(done)
    assert "to-stdout-before-failing" in done.out
    assert "exit 7" in done.out
    (record,) = cli("runs", "--json").json()
    assert record["status"] == "failed"
    assert step_names(record) == ["first", "boom"]  # "later" never started
    assert step_of(record, "first")["status"] == "complete"
    boom = step_of(record, "boom")
    assert boom["status"] == "failed"
    assert boom["exit_code"] == 7
    assert boom["attempts"] == 1
    assert "7" in record["error"]["message"]
    assert cli("show", record["run_id"][:-3], "--json").json() == record  # a prefix will do

    logs = cli("logs", record["run_id"], "boom")
    assert logs.code == 0, logs.err
    assert "to-stdout-before-failing" in logs.out
    assert "to-stderr" in logs.out
    assert "never" not in logs.out
    everything = cli("logs", record["run_id"])
    assert "first ok" in everything.out and "to-stderr" in everything.out
    followed = cli("logs", "--follow", record["run_id"], "boom", timeout=20)
    assert followed.code == 0 and "to-stderr" in followed.out  # ends: the run is over
    assert_usage_error(cli("logs", record["run_id"], "no-such-step"), "no-such-step", "boom")


def test_a_silent_step_writes_no_log_file(cli: Cli, repo_with: RepoWith, home: Path) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("quiet", ["true"])
            await step.run("talks", ["echo", "hello"])
    """
    repo = repo_with(pipeline(body))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    run_id = done.json()["run_id"]
    assert sorted(p.name for p in (home / "logs" / run_id).iterdir()) == [
        "pipeline.log", "talks.log"]
    talks = cli("logs", run_id, "talks").out.splitlines()
    assert talks[0].startswith("--- attempt 1: echo hello (")
    assert talks[1:] == ["hello", "--- exit code 0 after " + talks[2].split()[-1]]
    assert cli("logs", run_id, "quiet").out == "(no output recorded for this step)\n"
    assert cli("logs", run_id).out.splitlines()[:2] == ["==> quiet <==", "(no output)"]


def test_python_exception_in_pipeline_fails_the_run(cli: Cli, repo_with: RepoWith) -> None:
    body = """
    from ci_runner import Pipeline

    def explode():
        raise RuntimeError("kaboom from do")

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("explode", explode)
            await step.run("later", ["true"])
    """
    repo = repo_with(pipeline(body))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 1, (done.out, done.err)
    no_traceback(done)
    record = done.json()
    assert record["status"] == "failed"
    assert "kaboom from do" in record["error"]["message"]
    assert step_of(record, "explode")["status"] == "failed"
    assert "later" not in step_names(record)


# -- retries -----------------------------------------------------------------------------


def test_retry_succeeds_on_second_attempt(cli: Cli, repo_with: RepoWith, outside: Path) -> None:
    counter = outside / "flaky.count"
    body = """
    from ci_runner import Pipeline

    COUNTER = __COUNTER__

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run(
                "flaky",
                ["sh", "-c", 'n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1";'
                             ' echo "attempt $n"; [ "$n" -ge 2 ]', "sh", COUNTER],
                retries={"limit": 3, "delay": 0.05, "backoff": "constant"},
            )
            await step.run("after", ["true"])
    """
    repo = repo_with(pipeline(body, counter=str(counter)))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    flaky = step_of(record, "flaky")
    assert flaky["status"] == "complete"
    assert flaky["attempts"] == 2
    assert flaky["exit_code"] == 0
    assert count(counter) == 2
    assert step_of(record, "after")["status"] == "complete"
    logs = cli("logs", record["run_id"], "flaky").out
    assert "attempt 1" in logs and "attempt 2" in logs


def test_do_retries_then_run_retries_exhausted(
    cli: Cli, repo_with: RepoWith, outside: Path
) -> None:
    do_counter, run_log = outside / "do.count", outside / "always.log"
    body = with_bump("""
    from ci_runner import Pipeline

    def flaky():
        if bump(__DO_COUNTER__) < 3:
            raise ValueError("not yet")
        return "third time"

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("flaky", flaky, retries={"limit": 5, "delay": 0.01,
                                                   "backoff": "constant"})
            await step.run("always", ["sh", "-c", 'echo x >> "$1"; exit 5', "sh", __RUN_LOG__],
                           retries={"limit": 2, "delay": 0.01})
    """, do_counter=str(do_counter), run_log=str(run_log))
    repo = repo_with(body)

    done = cli("run", "--json", cwd=repo)

    assert done.code == 1, (done.out, done.err)
    record = done.json()
    assert step_of(record, "flaky")["status"] == "complete"
    assert step_of(record, "flaky")["attempts"] == 3
    assert count(do_counter) == 3
    always = step_of(record, "always")
    assert always["status"] == "failed"
    assert always["attempts"] == 3
    assert always["exit_code"] == 5
    assert run_log.read_text().count("x") == 3


# -- timeouts and leftover processes -----------------------------------------------------


def test_timeout_kills_the_command_and_fails_the_step(
    cli: Cli, repo_with: RepoWith, mark: str
) -> None:
    body = """
    from ci_runner import Pipeline, StepTimeout

    class CI(Pipeline):
        async def run(self, event, step):
            try:  # a whole process tree, caught: the run goes on
                await step.run("tree", "sleep 30 & (sleep 30 &) ; sleep 30",
                               timeout="500 milliseconds", env={"E2E_MARK": __MARK__})
            except StepTimeout:
                pass
            await step.run("slow", ["sleep", "30"], timeout=1, env={"E2E_MARK": __MARK__})
            await step.run("after", ["true"])
    """
    repo = repo_with(pipeline(body, mark=mark))

    done = cli("run", "--json", cwd=repo, timeout=25)  # far below the sleeps: they were killed

    assert done.code == 1, (done.out, done.err)
    no_traceback(done)
    record = done.json()
    for name in ("tree", "slow"):
        s = step_of(record, name)
        assert s["status"] == "failed", s
        assert "timed out" in (s["error"] or ""), s
    assert "slow" in record["error"]["message"]
    assert "timed out" in record["error"]["message"]
    assert "after" not in step_names(record)
    assert wait_gone(mark) == []


def test_failed_parallel_branch_leaves_no_sibling_running(
    cli: Cli, repo_with: RepoWith, mark: str
) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.parallel(
                step.run("fails", "sleep 0.2; exit 1"),
                step.run("long", ["sleep", "30"], env={"E2E_MARK": __MARK__}),
            )
    """
    repo = repo_with(pipeline(body, mark=mark))

    done = cli("run", "--json", cwd=repo, timeout=25)

    assert done.code == 1, (done.out, done.err)
    assert step_of(done.json(), "fails")["status"] == "failed"
    assert wait_gone(mark) == []


HANGS_ONCE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["sh", "-c", 'echo b >> "$1"', "sh", __BUILDS__])
        await step.run("hang", ["sh", "-c",
                                'if [ -e "$1" ]; then echo recovered; else : > "$1";'
                                ' exec sleep 30; fi', "sh", __SECOND__],
                       env={"E2E_MARK": __MARK__})
        await step.run("after", ["echo", "after"])
"""


def start_until_hanging(repo: Path, home: Path, mark: str) -> subprocess.Popen[str]:
    """`ci-runner run` in its own session, returned once step "hang" is running."""
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(
        [PY, "-m", "ci_runner", "run"], cwd=repo, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Only once the step's process group is on record, as it is for all but the first
    # instant of a command's life.
    deadline = time.monotonic() + 30
    while not (marked_pids(mark) and recorded_pgid(home, "hang")):
        if runner.poll() is not None or time.monotonic() > deadline:
            runner.kill()
            out, err = runner.communicate()
            raise AssertionError(f"step 'hang' never started: {out}\n{err}")
        time.sleep(0.05)
    return runner


def test_interrupted_run_resumes(
    cli: Cli, repo_with: RepoWith, outside: Path, mark: str, home: Path
) -> None:
    builds, second = outside / "builds", outside / "second-attempt"
    repo = repo_with(pipeline(HANGS_ONCE, builds=str(builds), second=str(second), mark=mark))
    runner = start_until_hanging(repo, home, mark)

    os.killpg(runner.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    out, err = runner.communicate(timeout=30)

    assert runner.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    (record,) = cli("runs", "--json").json()
    assert f"ci-runner resume {record['run_id']}" in err
    assert wait_gone(mark) == []  # Ctrl-C stopped the step's command too
    assert record["status"] == "interrupted"
    # Ctrl-C means stop: a worker does not drive the run on behind the user's back.
    assert cli("worker", "--once", "--poll", "0.1", timeout=60).code == 0
    (record,) = cli("runs", "--json").json()
    assert record["status"] == "interrupted"
    assert not builds.read_text().count("b") > 1

    resumed = cli("resume", record["run_id"], "--json", timeout=60)

    assert resumed.code == 0, (resumed.out, resumed.err)
    record = resumed.json()
    assert step_names(record) == ["build", "hang", "after"]
    assert all(s["status"] == "complete" for s in record["steps"])
    assert step_of(record, "hang")["attempts"] == 2  # the interrupted attempt counts
    assert builds.read_text() == "b\n"


def test_killed_runner_is_recovered_by_resume(
    cli: Cli, repo_with: RepoWith, outside: Path, mark: str, home: Path
) -> None:
    builds, second = outside / "builds", outside / "second-attempt"
    repo = repo_with(pipeline(HANGS_ONCE, builds=str(builds), second=str(second), mark=mark))
    runner = start_until_hanging(repo, home, mark)

    runner.send_signal(signal.SIGKILL)  # the driver dies mid-step, no cleanup at all
    runner.communicate()

    (record,) = cli("runs", "--json").json()
    assert record["status"] not in ("complete", "failed")
    resumed = cli("resume", record["run_id"], "--json", timeout=60)

    assert resumed.code == 0, (resumed.out, resumed.err)
    record = resumed.json()
    assert record["status"] == "complete"
    assert step_names(record) == ["build", "hang", "after"]
    assert step_of(record, "hang")["attempts"] == 2
    assert builds.read_text() == "b\n"  # committed before the crash: not run again
    assert wait_gone(mark) == []  # the dead runner's sleep was reaped
    assert not Path(record["workspace"]).exists()


# -- durable waits, events and resume ----------------------------------------------------

EVENTS = with_bump("""
import json
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("build", ["sh", "-c", 'echo b >> "$1"', "sh", __BUILDS__])
        n = await step.do("count", lambda: bump(__DOS__))
        approval = await step.wait_for_event("approval", "approve", timeout="10 minutes")
        await step.do("record", lambda: Path(__REPORT__).write_text(json.dumps(approval)) and n)
        await step.run("deploy", ["echo", "deploying for", approval["payload"]["who"]])
""")


def test_wait_for_event_hibernates_and_resume_finishes(
    cli: Cli, repo_with: RepoWith, outside: Path
) -> None:
    builds, dos, report = outside / "builds", outside / "dos", outside / "report.json"
    repo = repo_with(pipeline(EVENTS, builds=str(builds), dos=str(dos), report=str(report)))

    first = cli("run", "--json", cwd=repo)

    assert first.code == 3, (first.out, first.err)
    no_traceback(first)
    waiting = first.json()
    run_id = waiting["run_id"]
    assert waiting["status"] == "waiting" and waiting["waiting_for"] == "approve"
    assert [w["event_type"] for w in waiting["waits"]] == ["approve"]
    assert step_of(waiting, "build")["status"] == "complete"
    assert step_of(waiting, "count")["status"] == "complete"
    assert not Path(waiting["workspace"]).exists()  # a waiting run holds no worktree
    assert cli("show", run_id, "--json").json() == waiting

    early = cli("resume", run_id, "--json")  # nothing sent yet: back to sleep
    assert early.code == 3, (early.out, early.err)
    assert early.json()["status"] == "waiting"

    sent = cli("send-event", run_id, "approve", "--payload", '{"who": "alice"}')
    assert sent.code == 0, sent.err
    assert run_id in sent.out

    resumed = cli("resume", run_id, "--json")

    assert resumed.code == 0, (resumed.out, resumed.err)
    record = resumed.json()
    assert record["run_id"] == run_id
    assert record["status"] == "complete"
    assert step_names(record) == ["build", "count", "approval", "record", "deploy"]
    assert all(s["status"] == "complete" for s in record["steps"])
    # Steps before the wait replayed from the journal: they ran exactly once.
    assert builds.read_text() == "b\n"
    assert count(dos) == 1
    seen = json.loads(report.read_text())
    assert seen["type"] == "approve"
    assert seen["payload"] == {"who": "alice"}
    assert not Path(record["workspace"]).exists()  # cleaned up once the run ended
    assert cli("show", run_id, "--json").json() == record


def test_event_sent_early_is_kept_until_the_wait(cli: Cli, repo_with: RepoWith) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.wait_for_event("first", "one", timeout="10 minutes")
            got = await step.wait_for_event("second", "two", timeout="10 minutes")
            await step.run("show", ["echo", "got", got["payload"]["n"]])
    """
    repo = repo_with(pipeline(body))

    first = cli("run", "--json", cwd=repo)
    assert first.code == 3, first.err
    run_id = first.json()["run_id"]
    assert cli("send-event", run_id[:-2], "two", "--payload", '{"n": "2"}').code == 0
    assert cli("send-event", run_id, "one").code == 0

    resumed = cli("resume", run_id, "--json")

    assert resumed.code == 0, (resumed.out, resumed.err)
    assert "got 2" in cli("logs", run_id, "show").out


def test_event_timeout_fails_the_run_on_resume(cli: Cli, repo_with: RepoWith) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.wait_for_event("approval", "approve", timeout=1)
    """
    repo = repo_with(pipeline(body))
    first = cli("run", "--json", cwd=repo)
    assert first.code == 3, (first.out, first.err)
    (wait,) = first.json()["waits"]
    time.sleep(max(0.0, wait["deadline"] - time.time()) + 0.05)  # past the event's deadline

    resumed = cli("resume", first.json()["run_id"], "--json")

    assert resumed.code == 1, (resumed.out, resumed.err)
    record = resumed.json()
    assert record["status"] == "failed"
    assert step_of(record, "approval")["status"] == "failed"
    assert "approve" in record["error"]["message"]


def test_long_durable_sleep_hibernates(cli: Cli, repo_with: RepoWith, outside: Path) -> None:
    counter = outside / "before.count"
    body = with_bump("""
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("before", lambda: bump(__COUNTER__))
            await step.sleep("nap", "2 minutes")  # past the 60s inline limit
            await step.run("after", ["true"])
    """, counter=str(counter))
    repo = repo_with(body)

    first = cli("run", "--json", cwd=repo)

    assert first.code == 3, (first.out, first.err)
    record = first.json()
    assert record["status"] == "sleeping" and record["waiting_for"] is None
    (wait,) = record["waits"]
    assert wait["step"] == "nap"
    assert wait["sleep_until"] > time.time() + 60
    assert "after" not in step_names(record)
    assert step_of(record, "before")["status"] == "complete"
    assert count(counter) == 1
    shown = cli("show", record["run_id"])
    assert "nap" in shown.out and f"ci-runner resume {record['run_id']}" in shown.out


def test_replay_of_changed_code_is_a_nondeterminism_error(
    cli: Cli, repo_with: RepoWith
) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("prepare", lambda: 1)
            await step.wait_for_event("go", "go", timeout="10 minutes")
    """
    repo = repo_with(pipeline(body))
    # Bytecode on (this machine may set PYTHONDONTWRITEBYTECODE): a .pyc of the first
    # import must not stand in for the changed file, which has the same size and likely
    # the same mtime second. Nor may importing the pipeline litter the worktree.
    env = {"PYTHONDONTWRITEBYTECODE": ""}
    # Kept: a waiting run's worktree is otherwise removed, and forked again on resume.
    first = cli("run", "--json", "--keep-workspace", cwd=repo, env=env)
    assert first.code == 3, first.err
    # Tamper with the run's own checkout: replay now calls "prepare" as another kind.
    code = Path(first.json()["workspace"]) / ".ci" / "pipeline.py"
    code.write_text(code.read_text().replace('step.do("prepare", lambda: 1)',
                                             'step.run("prepare", ["true"])'))
    assert not (code.parent / "__pycache__").exists()
    assert cli("send-event", first.json()["run_id"], "go").code == 0

    resumed = cli("resume", first.json()["run_id"], "--json", env=env)

    assert resumed.code == 1, (resumed.out, resumed.err)
    no_traceback(resumed)
    record = resumed.json()
    assert record["status"] == "failed"
    assert record["error"]["type"] == "NondeterminismError"
    assert "prepare" in record["error"]["message"]


# -- params and uncommitted changes ------------------------------------------------------

PARAMS = """
import json
from pathlib import Path
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.do("report", lambda: Path(__REPORT__).write_text(json.dumps(
            {"payload": event.payload, "sha": event.sha, "trigger": event.trigger,
             "snapshot": event.snapshot, "workspace": str(event.workspace)})) and None)
"""


def test_params_reach_event_payload(cli: Cli, repo_with: RepoWith, outside: Path) -> None:
    report = outside / "report.json"
    repo = repo_with(pipeline(PARAMS, report=str(report)))

    done = cli("run", "--param", "target=staging", "-p", "note=a=b c", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["params"] == {"target": "staging", "note": "a=b c"}
    seen = json.loads(report.read_text())
    assert seen["payload"] == {"target": "staging", "note": "a=b c"}
    assert seen["sha"] == record["sha"] == git(repo, "rev-parse", "HEAD")
    assert seen["trigger"] == "cli"
    assert seen["snapshot"] is False
    assert seen["workspace"] == record["workspace"]


SHOW_FILES = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("cat", "cat data.txt; cat new.txt 2>/dev/null || echo no-new-file")
"""


def test_include_uncommitted_or_not(cli: Cli, repo_with: RepoWith) -> None:
    repo = repo_with(pipeline(SHOW_FILES), {"data.txt": "committed\n"})
    head = git(repo, "rev-parse", "HEAD")
    edited_pipeline = pipeline(SHOW_FILES) + (
        '        await step.run("extra", ["echo", "from the edited pipeline"])\n')
    write(repo, {"data.txt": "edited\n", "new.txt": "untracked\n",
                 ".ci/pipeline.py": edited_pipeline})
    before = user_state(repo)

    committed = cli("run", "--json", cwd=repo)
    snapshot = cli("run", "--include-uncommitted", "--json", cwd=repo)

    assert committed.code == 0, (committed.out, committed.err)
    record = committed.json()
    assert record["snapshot"] is False
    assert record["sha"] == head
    assert step_names(record) == ["cat"]
    out = cli("logs", record["run_id"], "cat").out
    assert "committed" in out and "no-new-file" in out
    assert "edited" not in out

    assert snapshot.code == 0, (snapshot.out, snapshot.err)
    record = snapshot.json()
    assert record["snapshot"] is True
    assert record["sha"] != head
    assert step_names(record) == ["cat", "extra"]
    assert cli("show", record["run_id"], "--json").json() == record
    out = cli("logs", record["run_id"], "cat").out
    assert "edited" in out and "untracked" in out
    assert "committed" not in out
    assert user_state(repo) == before  # no snapshot ref, stash or index change left behind


# -- a crashing pipeline -----------------------------------------------------------------


def test_os_exit_in_step_errors_the_run_and_engine_survives(
    cli: Cli, repo_with: RepoWith
) -> None:
    body = """
    import os
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("before", ["echo", "fine"])
            await step.do("crash", lambda: os._exit(3))
            await step.run("after", ["true"])
    """
    repo = repo_with(pipeline(body))

    crashed = cli("run", "--json", cwd=repo)

    assert crashed.code == 1, (crashed.out, crashed.err)
    no_traceback(crashed)
    record = crashed.json()
    assert record["status"] == "failed"
    assert record["error"]["type"] == "PipelineCrashed"
    assert "crash" in record["error"]["message"]
    assert step_of(record, "before")["status"] == "complete"
    assert step_of(record, "crash")["status"] == "failed"
    assert "after" not in step_names(record)
    assert not Path(record["workspace"]).exists()

    other = repo_with(pipeline(GREEN), name="other")
    healthy = cli("run", "--json", cwd=other)
    assert healthy.code == 0, (healthy.out, healthy.err)
    assert healthy.json()["status"] == "complete"
    newest_first = cli("runs", "--json").json()
    assert [r["run_id"] for r in newest_first] == [healthy.json()["run_id"], record["run_id"]]


def test_pipeline_process_holds_no_database_handle(
    cli: Cli, repo_with: RepoWith, home: Path
) -> None:
    """`run` and `approve` fork their pipeline process (`approve` after opening the
    database); the fork keeps only stdio and its pipe, like a spawned one: no
    descriptor of the database or of anything else the CLI had open."""
    body = """
    import os
    from ci_runner import Pipeline

    def open_files():
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # the listing's own descriptor, closed already
        return {"pid": os.getpid(), "ppid": os.getppid(), "fds": fds}

    class CI(Pipeline):
        async def run(self, event, step):
            await step.do("before", open_files)
            await step.wait_for_approval("gate")
            await step.do("after", open_files)
    """
    repo = repo_with(pipeline(body))

    waiting = cli("run", "--json", cwd=repo)
    assert waiting.code == 3, (waiting.out, waiting.err)
    approved = cli("approve", waiting.json()["run_id"], "--json")
    assert approved.code == 0, (approved.out, approved.err)

    db = sqlite3.connect(home / "ci-runner.db")
    for name in ("before", "after"):
        seen = json.loads(db.execute(
            "SELECT result FROM steps WHERE name = ?", (name,)).fetchone()[0])
        targets = seen["fds"].values()
        assert not [t for t in targets if "ci-runner.db" in t], (name, seen)
        assert all(t.startswith(("socket:", "pipe:", "anon_inode:", "/dev/null"))
                   or t.endswith("pipeline.log") for t in targets), (name, seen)
        assert seen["pid"] != seen["ppid"]


def test_steps_get_default_signal_handling(cli: Cli, repo_with: RepoWith) -> None:
    """The pipeline process lets the driver decide what Ctrl-C means, but its steps must
    not inherit that: a test suite run as a step sends SIGINT to what it starts."""
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("sig", ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    """
    repo = repo_with(pipeline(body))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    tail = done.json()["steps"][0]
    masks = dict(line.split(":\t") for line in
                 cli("logs", done.json()["run_id"], "sig").out.splitlines() if ":\t" in line)
    assert int(masks["SigIgn"], 16) & (1 << (signal.SIGINT - 1)) == 0, (tail, masks)
    assert int(masks["SigBlk"], 16) == 0, masks


# -- secrets -----------------------------------------------------------------------------

SECRETS = """
from ci_runner import Pipeline

SPLIT = (
    "import os, sys, time\\n"
    "v = os.environ['DEPLOY_TOKEN']\\n"
    "h = len(v) // 2\\n"
    "sys.stdout.write('split=' + v[:h]); sys.stdout.flush(); time.sleep(0.2)\\n"
    "sys.stdout.write(v[h:] + '\\\\n'); sys.stdout.flush()\\n"
)

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("whole", 'echo "token=$DEPLOY_TOKEN"; echo "err=$DEPLOY_TOKEN" >&2',
                       secrets=["DEPLOY_TOKEN"])
        await step.run("split", [__PY__, "-c", SPLIT], secrets=["DEPLOY_TOKEN"])
        await step.run("from-env", 'echo "env=$ENV_TOKEN"', secrets=["ENV_TOKEN"])
        await step.run("no-secret", 'echo "unset=${DEPLOY_TOKEN:-nothing}"')
        await step.run("leaks-then-fails", 'printf "fail=%s\\n" "$DEPLOY_TOKEN"; exit 9',
                       secrets=["DEPLOY_TOKEN"], retries={"limit": 1, "delay": 0.01})
"""


def test_secrets_never_reach_output_logs_or_database(
    cli: Cli, repo_with: RepoWith, tmp_path: Path, home: Path
) -> None:
    token = "tok-" + uuid.uuid4().hex + "-$.*+?()[]{}|^"  # regex and shell metacharacters
    env_token = "envtok-" + uuid.uuid4().hex
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(f"DEPLOY_TOKEN: '{token}'\n")
    secrets.chmod(0o600)
    repo = repo_with(pipeline(SECRETS, py=PY))

    done = cli("run", "--secrets-file", str(secrets), cwd=repo, env={"ENV_TOKEN": env_token})

    assert done.code == 1, (done.out, done.err)  # the last step fails, after echoing it
    (record,) = cli("runs", "--json").json()
    run_id = record["run_id"]
    assert step_of(record, "leaks-then-fails")["exit_code"] == 9
    assert step_of(record, "no-secret")["status"] == "complete"
    assert "token=***" in done.out
    logs = cli("logs", run_id)
    assert logs.code == 0
    for masked in ("token=***", "err=***", "split=***", "env=***", "unset=nothing",
                   "fail=***"):
        assert masked in logs.out, masked
    outputs = [done.out, done.err, logs.out, logs.err, json.dumps(record),
               cli("show", run_id).out]
    for value in (token, env_token):
        for text in outputs:
            assert value not in text
        for path in home.rglob("*"):  # logs, the db, its -wal and -shm, anything else
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path
    db = home / "ci-runner.db"
    conn = sqlite3.connect(db)  # and logically, after a checkpoint folds the WAL in
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert "DEPLOY_TOKEN" in dump or "whole" in dump  # the dump did see the run
    assert token not in dump and env_token not in dump
    assert token.encode() not in db.read_bytes()


# -- concurrency -------------------------------------------------------------------------


def test_two_runs_of_one_repo_at_once(cli: Cli, repo_with: RepoWith) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        async def run(self, event, step):
            await step.run("where", ["pwd"])
            await step.sleep("overlap", 0.3)
            await step.parallel(
                step.run("a", ["echo", "a"]),
                step.run("b", ["echo", "b"]),
            )
            await step.do("done", lambda: True)
    """
    repo = repo_with(pipeline(body))
    before = user_state(repo)

    results = at_once(lambda: cli("run", "--json", cwd=repo),
                      lambda: cli("run", "--json", cwd=repo))

    for done in results:
        assert done.code == 0, (done.out, done.err)
    records = [r.json() for r in results]
    assert records[0]["run_id"] != records[1]["run_id"]
    assert records[0]["workspace"] != records[1]["workspace"]
    wheres = at_once(*[lambda r=r: cli("logs", r["run_id"], "where") for r in records])
    for record, where in zip(records, wheres, strict=True):
        assert record["status"] == "complete"
        assert all(s["status"] == "complete" for s in record["steps"])
        assert record["workspace"] in where.out  # each ran in its own worktree
        assert not Path(record["workspace"]).exists()
    assert sorted(r["run_id"] for r in cli("runs", "--json").json()) == sorted(
        r["run_id"] for r in records)
    assert user_state(repo) == before


# -- init and the starters ---------------------------------------------------------------


def test_init_writes_a_starter_that_runs(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "fresh", {"README.md": "hello\n"})
    target = repo / ".ci" / "pipeline.py"
    minimal = (ROOT / "pipelines" / "minimal.py").read_text()

    wrote = cli("init", cwd=repo)

    assert wrote.code == 0, wrote.err
    assert "minimal" in wrote.out and "--include-uncommitted" in wrote.out
    assert target.read_text() == minimal

    # Not committed yet: a plain run says how to go on; the suggested one works.
    assert_usage_error(cli("run", cwd=repo), ".ci/pipeline.py", "--include-uncommitted")
    uncommitted = cli("run", "--include-uncommitted", "--json", cwd=repo)
    assert uncommitted.code == 0, (uncommitted.out, uncommitted.err)
    assert uncommitted.json()["snapshot"] is True

    target.write_text("# my own pipeline\n")
    assert_usage_error(cli("init", cwd=repo), "--force")
    assert target.read_text() == "# my own pipeline\n"
    forced = cli("init", "--force", "--template", "minimal", cwd=repo)
    assert forced.code == 0, forced.err
    assert target.read_text() == minimal

    git(repo, "add", ".ci/pipeline.py")
    git(repo, "commit", "-q", "-m", "add ci")
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert record["status"] == "complete"
    assert step_names(record) == ["hello", "list files", "count lines", "file count"]
    assert all(s["status"] == "complete" for s in record["steps"])
    assert "README.md" in cli("logs", record["run_id"], "list files").out


def test_init_picks_and_validates_templates(cli: Cli, tmp_path: Path) -> None:
    py = make_repo(tmp_path / "py", {"pyproject.toml": "[project]\nname = 'x'\n"})
    assert "python" in cli("init", cwd=py).out
    assert (py / ".ci" / "pipeline.py").read_text() == (
        ROOT / "pipelines" / "python.py").read_text()

    other = make_repo(tmp_path / "other", {"README.md": "x\n"})
    assert_usage_error(cli("init", "--template", "nosuch", cwd=other), "nosuch", "minimal")
    assert not (other / ".ci").exists()

    plain = tmp_path / "plain"
    plain.mkdir()
    assert_usage_error(cli("init", cwd=plain, env=no_git_above(tmp_path)), "git")


# -- a plain-def pipeline ----------------------------------------------------------------


def test_plain_def_pipeline_with_parallel(cli: Cli, repo_with: RepoWith, outside: Path) -> None:
    report = outside / "results.json"
    body = """
    import json
    from pathlib import Path
    from ci_runner import Pipeline

    class CI(Pipeline):
        def run(self, event, step):
            first = step.run("first", ["echo", "one"])
            results = step.parallel(
                lambda: step.run("left", ["echo", "left"]),
                lambda: step.run("right", "echo right; exit 0"),
                lambda: step.do("compute", lambda: 6 * 7),
            )
            step.sleep("pause", 0.05)
            step.do("report", lambda: Path(__REPORT__).write_text(json.dumps(
                {"first": first["exit_code"], "codes": [r["exit_code"] for r in results[:2]],
                 "computed": results[2]})) and None)
            return "ok"
    """
    repo = repo_with(pipeline(body, report=str(report)))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 0, (done.out, done.err)
    record = done.json()
    assert sorted(step_names(record)) == sorted(
        ["first", "left", "right", "compute", "pause", "report"])
    assert all(s["status"] == "complete" for s in record["steps"])
    assert json.loads(report.read_text()) == {"first": 0, "codes": [0, 0], "computed": 42}


def test_plain_def_pipeline_failure(cli: Cli, repo_with: RepoWith) -> None:
    body = """
    from ci_runner import Pipeline

    class CI(Pipeline):
        def run(self, event, step):
            step.parallel(
                lambda: step.run("ok", ["true"]),
                lambda: step.run("bad", ["sh", "-c", "exit 4"]),
            )
            step.run("never", ["true"])
    """
    repo = repo_with(pipeline(body))

    done = cli("run", "--json", cwd=repo)

    assert done.code == 1, (done.out, done.err)
    record = done.json()
    assert step_of(record, "bad")["exit_code"] == 4
    assert step_of(record, "bad")["status"] == "failed"
    assert "never" not in step_names(record)


PARALLEL_FAILS = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.parallel(
            step.run("fails", ["sh", "-c", "sleep 0.2; exit 1"]),
            step.run("slow", ["sleep", "30"]),
        )
"""


def test_a_sibling_of_a_failed_parallel_step_ends_cancelled_not_running(
    cli: Cli, repo_with: RepoWith,
) -> None:
    repo = repo_with(PARALLEL_FAILS)
    done = cli("run", "--json", cwd=repo)
    assert done.code == 1, done.err
    record = done.json()
    assert record["status"] == "failed"
    assert {s["name"]: s["status"] for s in record["steps"]} == {
        "fails": "failed", "slow": "cancelled"}
    shown = cli("show", record["run_id"], "--json").json()
    assert {s["name"]: s["status"] for s in shown["steps"]}["slow"] == "cancelled"
    plain = cli("run", cwd=repo)
    assert "⊗ slow cancelled" in plain.out
