"""A run holds a git worktree only while a driver drives it, and checks out more than
its ``.ci/`` folder only when a step needs the files (issues 13 and 16).

Real repositories, the real CLI in a subprocess, a real SQLite file; what git itself
says (``git worktree list``) is the measure of what a run holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git

FILES = {f"src/f{i}.txt": f"file {i}\n" for i in range(30)}


def worktrees(repo: Path) -> list[str]:
    """The worktrees git knows of in ``repo``, the main one included."""
    listed = git(repo, "worktree", "list", "--porcelain")
    return [line.removeprefix("worktree ") for line in listed.splitlines()
            if line.startswith("worktree ")]


QUEUED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("sees the files", ["sh", "-c", "test -f src/f7.txt && cat src/f7.txt"])
"""


def test_queued_runs_hold_no_worktree_and_their_driver_forks_one(
    cli, repo_with, home: Path,
) -> None:
    """50 queued runs (as the webhook server and watch store them) hold no worktree;
    driving one forks it, with its files, and removes it at the end."""
    from ci_runner import paths
    from ci_runner.dispatch.runs import RunRequest, start_run
    from ci_runner.engine.driver import Engine

    repo = repo_with(QUEUED, FILES)
    # As the webhook server stores them: a zero lease, so a driver may take each at once.
    with Engine(paths.database(), lease_ttl_s=0.0) as engine:
        ids = [start_run(engine, RunRequest(repo_path=repo, trigger="webhook"))
               for _ in range(50)]
    assert worktrees(repo) == [str(repo.resolve())]
    assert not (home / "worktrees").exists() or not any((home / "worktrees").iterdir())

    done = cli("resume", ids[0], "--json")
    assert done.code == 0, done.err + done.out
    assert done.json()["status"] == "complete"
    assert "file 7" in cli("logs", ids[0], "sees the files").out
    assert worktrees(repo) == [str(repo.resolve())]
    queued = cli("runs", "--status", "queued", "--limit", "100", "--json", cwd=repo).json()
    assert len(queued) == 49


GATED = """
import json, os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("before", ["sh", "-c", "cat data.txt && echo made > made.txt"])
        await step.wait_for_approval("gate", timeout="1 hour")
        after = await step.run("after", ["sh", "-c", "cat data.txt; ls"])
        return after["output_tail"]
"""


def test_a_waiting_run_holds_no_worktree_and_resumes_at_its_sha(
    cli, repo_with, home: Path,
) -> None:
    repo = repo_with(GATED, {**FILES, "data.txt": "old\n"})
    first = cli("run", cwd=repo)
    assert first.code == 3, first.err + first.out  # waiting for the approval
    run_id = cli("pending", "--json").json()[0]["run_id"]
    record = cli("show", run_id, "--json").json()
    assert worktrees(repo) == [str(repo.resolve())]
    assert not Path(record["workspace"]).exists()
    # The branch moves on meanwhile: the run goes on at its own sha.
    commit(repo, {"data.txt": "new\n"}, "moved on")

    done = cli("approve", run_id, "--json")
    assert done.code == 0, done.err + done.out
    assert done.json()["status"] == "complete"
    after = cli("logs", run_id, "after").out
    assert "old" in after and "new" not in after
    assert "f7.txt" not in after and "src" in after  # the tree, checked out again
    assert "made.txt" not in after  # a file made before the wait went with the worktree
    assert worktrees(repo) == [str(repo.resolve())]


def test_a_waiting_run_with_keep_workspace_keeps_its_worktree(cli, repo_with) -> None:
    repo = repo_with(GATED, {**FILES, "data.txt": "old\n"})
    assert cli("run", "--keep-workspace", cwd=repo).code == 3
    run_id = cli("pending", "--json").json()[0]["run_id"]
    workspace = Path(cli("show", run_id, "--json").json()["workspace"])
    assert (workspace / "made.txt").is_file()
    done = cli("approve", run_id, "--json")
    assert done.code == 0, done.err + done.out
    assert "made.txt" in cli("logs", run_id, "after").out
    assert (workspace / "src" / "f7.txt").is_file()


CACHED = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        import colorsys, helper  # noqa: F401 - .ci/ is on the import path, not the tree
        for n in range(3):
            await step.run(f"check {n}", ["sh", "-c", f"cat src/f{n}.txt"],
                           inputs=["src/**"])
"""

MODES = ["off", "bwrap"]


def checkouts(trace: Path) -> list[list[str]]:
    """The git commands that wrote files of the tree into a worktree, from git's own
    trace of every git process the run started (GIT_TRACE2_EVENT)."""
    found = []
    for line in trace.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") != "start":
            continue
        argv = event["argv"]
        if ("worktree" in argv and "add" in argv and "--no-checkout" not in argv) or (
                "reset" in argv and "--hard" in argv):
            found.append(argv)
    return found


@pytest.mark.parametrize("mode", MODES)
def test_a_fully_cached_run_checks_out_nothing_but_its_pipeline(
    cli, repo_with, tmp_path: Path, mode: str,
) -> None:
    repo = repo_with(CACHED, {**FILES, ".ci/helper.py": "X = 1\n"})

    def run(name: str, *more: str) -> tuple[dict[str, object], list[list[str]]]:
        trace = tmp_path / f"{name}.trace"
        done = cli("run", "--sandbox", mode, "--json", *more, cwd=repo,
                   env={"GIT_TRACE2_EVENT": str(trace)})
        assert done.code == 0, done.err + done.out
        return done.json(), checkouts(trace)

    first, wrote = run("first")
    assert len(wrote) == 1  # the tree, checked out for the first step that ran
    assert "file 2" in cli("logs", str(first["run_id"]), "check 2").out

    cached, wrote = run("cached")
    record = cli("show", str(cached["run_id"]), "--json").json()
    assert [s["cached"] for s in record["steps"]] == [True, True, True], record["steps"]
    assert wrote == []  # nothing but .ci/ was ever checked out

    _, wrote = run("uncached", "--no-cache")
    assert len(wrote) == 1
    assert worktrees(repo) == [str(repo.resolve())]


DO_READS = """
from pathlib import Path
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        text = await step.do("read", lambda: Path("src/f3.txt").read_text())
        if text != "file 3\\n":
            raise ValueError(f"the do step read {text!r}")
"""


def test_a_do_step_that_runs_sees_the_files(cli, repo_with) -> None:
    repo = repo_with(DO_READS, FILES)
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out  # it read the file, not a missing one


def test_a_cached_run_kept_with_keep_workspace_has_its_files(cli, repo_with) -> None:
    repo = repo_with(CACHED, {**FILES, ".ci/helper.py": "X = 1\n"})
    assert cli("run", cwd=repo).code == 0
    kept = cli("run", "--keep-workspace", "--json", cwd=repo)
    assert kept.code == 0, kept.err + kept.out
    workspace = Path(cli("show", kept.json()["run_id"], "--json").json()["workspace"])
    assert (workspace / "src" / "f5.txt").read_text() == "file 5\n"
    assert git(workspace, "status", "--porcelain") == ""


CRASHING = """
import os, time
from pathlib import Path
from ci_runner import Pipeline

MARK = Path(os.environ["MARK"])

class CI(Pipeline):
    async def run(self, event, step):
        if not MARK.exists():  # the first drive: its driver dies before any step ran
            MARK.write_text("killed")
            os.kill(os.getppid(), 9)
            time.sleep(5)
            os._exit(1)
        await step.run("files", ["sh", "-c", "cat src/f1.txt"])
"""


def test_a_run_taken_over_before_any_step_checks_out_its_files(
    repo_with, home: Path, tmp_path: Path,
) -> None:
    """A driver killed before the run's first step leaves a worktree holding only .ci/:
    the next drive takes it over as it is, and checks out the rest for the step."""
    repo = repo_with(CRASHING, FILES)
    env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
           "PYTHONPATH": str(ROOT), "MARK": str(tmp_path / "mark")}

    def ci(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ci_runner", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    killed = ci("run")
    assert killed.returncode == -9, killed.stderr
    run_id = json.loads(ci("runs", "--json").stdout)[0]["run_id"]
    assert len(worktrees(repo)) == 2  # left by the dead driver, with .ci/ only
    workspace = Path(json.loads(ci("show", run_id, "--json").stdout)["workspace"])
    assert sorted(p.name for p in workspace.iterdir()) == [".ci", ".git"]
    done = ci("resume", run_id, "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "file 1" in ci("logs", run_id, "files").stdout
    assert worktrees(repo) == [str(repo.resolve())]


READS_EARLY = """
import glob, json
from pathlib import Path
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        import helper  # .ci/ is there from the start, and imports work
        %s
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("look", [
    "names = sorted(glob.glob('src/*.txt'))",
    "names = sorted(str(p) for p in Path('src').iterdir())",
    "names = [f'src/f{i}.txt' for i in range(30) if Path(f'src/f{i}.txt').exists()]",
    "names = [f'src/{n}' for n in os.listdir('src')] if os.path.isdir('src') else []",
    "names = [l.strip() for l in open('LIST')]",
])
def test_the_pipelines_code_sees_the_files_before_any_step_needed_them(
    cli, repo_with, tmp_path: Path, mode: str, look: str,
) -> None:
    """Code outside steps that looks at the repo's files (to pick its steps, say) gets
    them checked out first, as they are at the run's sha, however it looks."""
    early = READS_EARLY % (
        look + "\n"
        "        assert len(names) == 30, names\n"
        "        await step.run('count', ['sh', '-c', 'ls src | wc -l'], inputs=['src/**'])")
    files = {**FILES, ".ci/helper.py": "X = 1\n", "LIST": "\n".join(FILES) + "\n"}
    repo = repo_with(early.replace("import glob, json", "import glob, json, os"), files)
    for name in ("first", "cached"):
        trace = tmp_path / f"{mode}-{name}.trace"
        done = cli("run", "--sandbox", mode, "--json", cwd=repo,
                   env={"GIT_TRACE2_EVENT": str(trace)})
        assert done.code == 0, done.err + done.out
        assert len(checkouts(trace)) == 1  # the files, once, even for a cached step


def test_reading_the_tree_in_a_do_step_or_after_a_step_works(cli, repo_with) -> None:
    late = READS_EARLY % (
        "names = await step.do('list', lambda: sorted(glob.glob('src/*.txt')))\n"
        "        assert len(names) == 30, names\n"
        "        assert Path('src/f1.txt').read_text() == 'file 1\\n'\n"
        "        assert len(list(Path('src').iterdir())) == 30")
    repo = repo_with(late, {**FILES, ".ci/helper.py": "X = 1\n"})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 0, done.err + done.out
    # Served from nowhere: a do step has no cache, so the second run lists again.
    again = cli("run", "--json", cwd=repo)
    assert again.code == 0, again.err + again.out
