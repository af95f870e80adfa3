"""Step selection (--only/--skip), the input-keyed step cache and artifacts, through the
real CLI on real repositories."""

from __future__ import annotations

from pathlib import Path

from tests.gitrepos import commit

PIPELINE = """
import os
from ci_runner import Pipeline

LEDGER = os.environ["LEDGER"]

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("lint", f"echo lint >> {LEDGER}", inputs=["src/**"])
        await step.run("docs", f"echo docs >> {LEDGER}", inputs=["README.md"])
        await step.run("test", f"echo test >> {LEDGER}", inputs=["src/**", "tests/**"])
        n = await step.do("count", lambda: len(os.listdir("src")), inputs=["src/**"])
        await step.run("package", f"echo package >> {LEDGER}; mkdir -p dist;"
                       " echo wheel > dist/app.whl; echo cov > coverage.xml",
                       artifacts=["dist/*.whl", "coverage.xml"])
        await step.wait_for_approval("gate")
        await step.run("deploy", f"echo deploy >> {LEDGER}")
        return n
"""

FILES = {"src/app.py": "print('hi')\n", "tests/test_app.py": "x = 1\n", "README.md": "# app\n"}


def ran(ledger: Path) -> list[str]:
    text = ledger.read_text() if ledger.exists() else ""
    ledger.write_text("")
    return text.split()


def statuses(record: dict) -> dict[str, str]:
    return {s["name"]: ("cached" if s["cached"] else s["status"]) for s in record["steps"]}


def test_cache_reruns_exactly_the_steps_whose_inputs_changed(cli, repo_with, tmp_path):
    ledger = tmp_path / "ledger"
    repo = repo_with(PIPELINE, FILES)
    env = {"LEDGER": str(ledger)}
    first = cli("run", "--json", "--skip", "gate", cwd=repo, env=env)
    assert first.code == 0, first.err
    assert ran(ledger) == ["lint", "docs", "test", "package"]
    assert statuses(first.json())["deploy"] == "skipped"  # behind the skipped gate

    second = cli("run", "--json", "--skip", "gate", cwd=repo, env=env).json()
    assert ran(ledger) == ["package"]  # it declares no inputs: always runs
    assert [statuses(second)[s] for s in ("lint", "docs", "test", "count")] == ["cached"] * 4

    commit(repo, {"README.md": "# app, documented\n"}, "docs")
    cli("run", "--skip", "gate", cwd=repo, env=env)
    assert ran(ledger) == ["docs", "package"]

    commit(repo, {"tests/test_app.py": "x = 2\n"}, "tests")
    cli("run", "--skip", "gate", cwd=repo, env=env)
    assert ran(ledger) == ["test", "package"]

    none = cli("run", "--no-cache", "--skip", "gate", cwd=repo, env=env)
    assert none.code == 0
    assert ran(ledger) == ["lint", "docs", "test", "package"]

    listed = cli("cache", "list", "--json", cwd=repo).json()
    assert {e["step"] for e in listed} >= {"lint", "docs", "test", "count"}
    assert "removed" in cli("cache", "clear", cwd=repo).out
    assert cli("cache", "list", "--json", cwd=repo).json() == []


def test_cache_entries_are_never_shared_across_repos(cli, repo_with, tmp_path):
    ledger = tmp_path / "ledger"
    env = {"LEDGER": str(ledger)}
    for name in ("one", "two"):
        repo = repo_with(PIPELINE, FILES, name=name)
        assert cli("run", "--only", "lint", cwd=repo, env=env).code == 0
        assert ran(ledger) == ["lint"]


def test_only_and_skip_record_skipped_steps(cli, repo_with, tmp_path):
    ledger = tmp_path / "ledger"
    repo = repo_with(PIPELINE, FILES)
    env = {"LEDGER": str(ledger)}
    done = cli("run", "--json", "--only", "lint,test", "--no-cache", cwd=repo, env=env)
    assert done.code == 0, done.err
    assert ran(ledger) == ["lint", "test"]
    record = done.json()
    got = statuses(record)
    assert got["docs"] == got["package"] == got["gate"] == got["deploy"] == "skipped"
    because = {s["name"]: s["skipped_because"] for s in record["steps"]}
    assert because["docs"] == "not in --only"
    # The approval gate is never waited for when left out, and nothing after it runs.
    deploy_only = cli("run", "--json", "--only", "deploy", cwd=repo, env=env).json()
    assert ran(ledger) == []
    assert "after 'gate'" in next(
        s["skipped_because"] for s in deploy_only["steps"] if s["name"] == "deploy")

    # Any name is taken (a step may be new, or beyond where the last run failed); the run
    # then says which selected names it never reached.
    unknown = cli("run", "--only", "lnt", cwd=repo, env=env)
    assert unknown.code == 0, unknown.err
    assert ran(ledger) == []
    assert "--only lnt: no step named 'lnt' was reached" in unknown.out


def test_artifacts_are_kept_deduplicated_and_downloadable(cli, repo_with, tmp_path, home):
    ledger = tmp_path / "ledger"
    repo = repo_with(PIPELINE, FILES)
    env = {"LEDGER": str(ledger)}
    ids = [cli("run", "--json", "--only", "package", cwd=repo, env=env).json()["run_id"]
           for _ in range(2)]
    listed = cli("artifacts", ids[0], "--json").json()
    assert sorted(a["path"] for a in listed) == ["coverage.xml", "dist/app.whl"]
    objects = [p for p in (home / "artifacts" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 2  # two runs, the same two files: stored once each
    out = tmp_path / "out"
    assert cli("artifacts", ids[1], "--download", str(out)).code == 0
    assert (out / "dist" / "app.whl").read_text() == "wheel\n"


def test_artifacts_outside_the_worktree_are_refused(cli, repo_with, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours\n")
    pipeline = f"""
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("link", ["ln", "-s", "{outside}", "leak.txt"], artifacts=["leak.txt"])
"""
    repo = repo_with(pipeline)
    done = cli("run", "--json", cwd=repo)
    assert done.code == 2, done.out
    assert "points outside the worktree" in done.json()["error"]["message"]
    dotdot = repo_with(pipeline.replace('artifacts=["leak.txt"]', 'artifacts=["../x"]'),
                       name="dotdot")
    assert "without '..'" in cli("run", "--json", cwd=dotdot).json()["error"]["message"]
    assert outside.exists()


def test_a_failure_let_through_by_check_false_is_never_reused(cli, repo_with):
    repo = repo_with("""
from ci_runner import Pipeline
class CI(Pipeline):
    async def run(self, event, step):
        await step.run("lenient", ["sh", "-c", "exit 1"], inputs=["README"], check=False)
        await step.run("strict", ["sh", "-c", "exit 1"], inputs=["README"])
""", {"README": "x\\n"})
    done = cli("run", "--json", cwd=repo)
    assert done.code == 1, done.out
    steps = {s["name"]: s for s in done.json()["steps"]}
    assert not steps["strict"]["cached"] and steps["strict"]["status"] == "failed"
