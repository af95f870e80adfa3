"""The webhook server's durability and trust: kill -9 right after a 2xx, SIGTERM while a
step runs, fork pull requests gated on an approver, superseded runs and the per-repo
limit. Each test runs its own real server on a loopback port, with its own home."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import serverkit as kit
from tests.gitrepos import commit, git, make_repo

PIPELINE = """
import os
import sys
from ci_runner import Pipeline

print("IMPORTED in", os.getcwd(), flush=True)  # to the run's pipeline.log

class CI(Pipeline):
    async def run(self, event, step):
        p = event.payload
        if os.path.exists("SLOW"):
            await step.run("slow", ["sleep", open("SLOW").read().strip()])
        await step.run("hello", ["sh", "-c", "echo sha=$(git rev-parse HEAD)"])
        out = {"sha": event.sha}
        granted = p["forge"] == "github"  # only the GitHub repo is granted DEPLOY_TOKEN
        if granted and (not p.get("fork") or os.path.exists("GREEDY")):
            await step.run("secret", ["sh", "-c", 'test "${#DEPLOY_TOKEN}" -eq 13'],
                           secrets=["DEPLOY_TOKEN"])
        out["env_secrets"] = sorted(
            k for k in os.environ if k in ("DEPLOY_TOKEN", "HOOK_SECRET_GITHUB"))
        if p.get("fork"):
            probe = ("import socket, sys;"
                     " socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)")
            net = await step.run("net", [sys.executable, "-c", probe, os.environ["PROBE_PORT"]],
                                 check=False)
            out["net_exit"] = net["exit_code"]
        return out
"""

SECRET_ENV = {"DEPLOY_TOKEN": "deploy-123456"}


def _source(root: Path) -> tuple[Path, dict[str, str]]:
    source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE})
    shas = {"plain": git(source, "rev-parse", "HEAD")}
    shas["slow"] = commit(source, {"SLOW": "30"}, "slow")
    git(source, "rm", "-q", "SLOW")
    shas["greedy"] = commit(source, {"GREEDY": "yes"}, "greedy")
    return source, shas


def _github(source: Path, **more: Any) -> dict[str, Any]:
    return kit.repo_entry("github", "Codertocat/Hello-World", source, secrets=["DEPLOY_TOKEN"],
                          **more)


def _run_of(home: Path, delivery: str) -> dict[str, Any] | None:
    return next((r for r in kit.runs(home) if r["meta"].get("delivery") == delivery), None)


def _output(home: Path, run_id: str) -> Any:
    return json.loads(kit.rows(home, "SELECT output FROM instances WHERE id = ?", run_id)[0][0])


def _step_status(home: Path, run_id: str, step: str) -> str | None:
    found = kit.rows(home, "SELECT status FROM steps WHERE instance_id = ? AND name = ?",
                     run_id, step)
    return found[0][0] if found else None


def test_kill_9_right_after_the_2xx_loses_nothing(tmp_path: Path):
    source, shas = _source(tmp_path)
    staged = tmp_path / "staged"
    shutil.copytree(source, staged)
    late = tmp_path / "late"  # GitLab's clone URL: missing until the server is killed
    config = kit.write_config(tmp_path / "c.yml", [
        _github(source), kit.repo_entry("gitlab", "gitlab-org/hello-world", late)])
    home = tmp_path / "home"
    first = kit.Server(config, home, env=SECRET_ENV).start()
    try:
        answer = first.post("gitlab", kit.gitlab_push(shas["plain"]), event="Push Hook",
                            delivery="lab-1")
        assert answer.status_code == 202
        answer = first.post("github", kit.github_push(shas["plain"]), event="push",
                            delivery="gh-1")
        assert answer.status_code == 202
        first.stop(signal.SIGKILL)  # right after the 2xx
    finally:
        first.close()
    stored = {r["delivery_id"]: r["state"] for r in kit.rows(home, "SELECT * FROM deliveries")}
    assert set(stored) == {"lab-1", "gh-1"}
    assert stored["lab-1"] == "accepted"  # its fetch failed: no run was started for it
    staged.rename(late)
    second = kit.Server(config, home, env=SECRET_ENV).start()
    try:
        found = kit.wait_for(kit.settled(home, 2), timeout=60, what="both runs")
        assert {r["meta"]["delivery"] for r in found} == {"lab-1", "gh-1"}
        assert all(r["status"] == "complete" and r["meta"]["sha"] == shas["plain"]
                   for r in found), second.output()
        assert {r["state"] for r in kit.rows(home, "SELECT state FROM deliveries")} == {
            "started"}
        # A redelivery after the restart is still the same delivery.
        again = second.post("gitlab", kit.gitlab_push(shas["plain"]), event="Push Hook",
                            delivery="lab-1")
        assert again.json()["duplicate"] is True
        time.sleep(0.3)
        assert len(kit.runs(home)) == 2
    finally:
        second.stop()
        second.close()


def test_sigterm_leaves_a_running_step_to_the_next_start(tmp_path: Path):
    source, _ = _source(tmp_path)
    slow = commit(source, {"SLOW": "2"}, "two seconds")
    config = kit.write_config(tmp_path / "c.yml", [_github(source)], grace_s=0.3)
    home = tmp_path / "home"
    server = kit.Server(config, home, env=SECRET_ENV).start()
    try:
        assert server.post("github", kit.github_push(slow), event="push").status_code == 202
        run = kit.wait_for(lambda: (r := kit.runs(home)) and r[0], what="the run")
        kit.wait_for(lambda: _step_status(home, run["id"], "slow") == "running",
                     what="the slow step to run")
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.close()
    left = kit.runs(home)[0]
    assert left["status"] == "queued", left  # released for the next start, not failed
    again = kit.Server(config, home, env=SECRET_ENV).start()
    try:
        done = kit.wait_for(kit.settled(home, 1), timeout=30, what="the resumed run")[0]
        assert done["status"] == "complete", again.output()
        assert _output(home, done["id"])["sha"] == slow
    finally:
        again.stop()
        again.close()


def test_fork_pull_requests_wait_for_an_approver_and_get_no_secrets(tmp_path: Path):
    source, shas = _source(tmp_path)
    forge = kit.FakeForge().__enter__()
    config = kit.write_config(
        tmp_path / "c.yml", [_github(source, approvers=["alice"],
                                     status={"api_url": forge.url, "token_env": "ST"})],
        users={"bob": "BOB_TOKEN"}, pass_env=["PROBE_PORT"])
    home = tmp_path / "home"
    server = kit.Server(config, home, env={**SECRET_ENV, "BOB_TOKEN": "bobs-token",
                                           "ST": "t"})
    server.env["PROBE_PORT"] = str(server.port)  # the server itself listens there
    server.start()
    fork = "mallory/Hello-World"
    try:
        for number, sha in ((5, shas["plain"]), (6, shas["greedy"]), (7, shas["plain"])):
            answer = server.post("github", kit.github_pr(sha, number=number, fork=fork),
                                 event="pull_request", delivery=f"fork-{number}")
            assert answer.status_code == 202
        assert server.post("github", kit.github_push(shas["plain"]), event="push",
                           delivery="trusted").status_code == 202

        def gated() -> list[dict[str, Any]]:
            found = server.api("GET", "/api/pending").json()
            return found if len(found) == 3 else []

        pending = kit.wait_for(gated, what="three fork runs waiting for approval")
        assert {p["step"] for p in pending} == {"approve-fork"}
        assert all(p["what"] == "approval" and "from a fork" in p["message"] for p in pending)
        ids = {r["id"]: int(r["meta"]["pr"]) for r in kit.runs(home) if r["meta"]["untrusted"]}
        assert sorted(ids.values()) == [5, 6, 7]
        # Nothing of the fork's code was imported while it waits.
        for run_id in ids:
            log = home / "logs" / run_id / "pipeline.log"
            assert "IMPORTED" not in (log.read_text() if log.exists() else "")
        run5 = next(i for i, n in ids.items() if n == 5)
        approve = f"/api/runs/{run5}/approve"
        assert server.http.post(approve, json={"by": "alice"}).status_code == 401
        assert server.api("POST", approve).status_code == 400  # shared token: say who
        assert server.api("POST", approve, json={"by": "mallory"}).status_code == 403
        bob = {"Authorization": "Bearer bobs-token"}
        assert server.http.post(approve, headers=bob).status_code == 403  # not an approver
        assert server.http.post(approve, headers=bob, json={"by": "alice"}).status_code == 403
        ok = server.api("POST", approve, json={"by": "alice", "comment": "looked at it"})
        assert ok.status_code == 202 and ok.json()["by"] == "alice"
        assert server.api("POST", approve, json={"by": "alice"}).status_code == 409  # once
        run6 = next(i for i, n in ids.items() if n == 6)
        run7 = next(i for i, n in ids.items() if n == 7)
        assert server.api("POST", f"/api/runs/{run6}/approve", json={"by": "alice"}
                          ).status_code == 202
        assert server.api("POST", f"/api/runs/{run7}/reject", json={"by": "alice"}
                          ).status_code == 202
        found = {r["id"]: r for r in kit.wait_for(kit.settled(home, 4), timeout=60,
                                                   what="all four runs")}
        assert found[run5]["status"] == "complete", server.output()
        assert "IMPORTED" in (home / "logs" / run5 / "pipeline.log").read_text()
        out5 = _output(home, run5)
        assert out5["env_secrets"] == []
        assert found[run5]["meta"]["secrets_file"] is None and found[run5]["meta"]["untrusted"]
        if "cannot make network namespaces" not in server.output():
            assert out5["net_exit"] != 0  # no network, not even loopback
        assert _step_status(home, run5, "secret") is None
        record = server.api("GET", f"/api/runs/{run5}").json()
        assert record["approvals"][0]["by"] == "alice"
        assert found[run6]["status"] == "errored"
        error6 = json.loads(kit.rows(home, "SELECT error FROM instances WHERE id = ?", run6)[0][0])
        assert "get no secrets" in error6["message"]
        error7 = json.loads(kit.rows(home, "SELECT error FROM instances WHERE id = ?", run7)[0][0])
        assert found[run7]["status"] == "errored" and error7["type"] == "Rejected"
        trusted = _run_of(home, "trusted")
        assert trusted is not None and trusted["status"] == "complete"
        assert _step_status(home, trusted["id"], "secret") == "complete"  # via its file
        assert _output(home, trusted["id"])["env_secrets"] == []  # never the environment
        secrets_file = Path(trusted["meta"]["secrets_file"])
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        assert "deploy-123456" not in json.dumps(trusted)  # not in the stored envelope

        def reported(sha: str, context: str) -> list[tuple[str, str]]:
            return [(c["body"]["state"], c["body"]["description"]) for c in forge.calls
                    if c["path"].endswith(sha) and c["body"]["context"] == context]

        kit.wait_for(lambda: ("failure", "ci-runner: failed") in reported(
            shas["greedy"], "ci-runner/pr"), what="the failure status")
        assert ("pending", "ci-runner: waiting for approval") in reported(
            shas["greedy"], "ci-runner/pr")
        kit.wait_for(lambda: ("success", "ci-runner: passed") in reported(
            shas["plain"], "ci-runner"), what="the push's success status")
    finally:
        server.stop()
        server.close()
        forge.__exit__()


def test_a_newer_push_supersedes_and_the_repo_limit_holds(tmp_path: Path):
    source, shas = _source(tmp_path)
    for branch in ("release/a", "release/b"):
        git(source, "branch", branch, shas["plain"])
    config = kit.write_config(tmp_path / "c.yml", [_github(
        source, concurrency=1, branches=["main", "release/*"],
        supersede={"branches": True, "pull_requests": True})])
    home = tmp_path / "home"
    server = kit.Server(config, home, env=SECRET_ENV).start()
    try:
        assert server.post("github", kit.github_push(shas["slow"], branch="main"),
                           event="push", delivery="old").status_code == 202
        old = kit.wait_for(lambda: _run_of(home, "old"), what="the first run")
        kit.wait_for(lambda: _step_status(home, old["id"], "slow") == "running",
                     what="the slow step")
        for delivery, branch in (("b1", "release/a"), ("b2", "release/b")):
            assert server.post("github", kit.github_push(shas["plain"], branch=branch),
                               event="push", delivery=delivery).status_code == 202
        assert server.post("github", kit.github_push(shas["greedy"], branch="main"),
                           event="push", delivery="new").status_code == 202
        found = {r["meta"]["delivery"]: r for r in kit.wait_for(
            kit.settled(home, 4), timeout=60, what="four runs")}
        assert found["old"]["status"] == "terminated"
        assert all(found[d]["status"] == "complete" for d in ("b1", "b2", "new")), (
            server.output())
        spans = sorted((r["started_at"], r["finished_at"]) for r in kit.rows(
            home, "SELECT started_at, finished_at FROM instances"))
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 0.05, spans  # one run of this repo at a time
    finally:
        server.stop()
        server.close()


@pytest.mark.parametrize("args", [[], ["--config", "missing.yml"]])
def test_serve_without_a_usable_config_exits_2(cli, tmp_path: Path, args: list[str]):
    result = cli("serve", *args, cwd=tmp_path)
    assert result.code == 2
    assert "error:" in result.err


def test_print_example_config(cli, tmp_path: Path):
    result = cli("serve", "--print-example-config")
    assert result.code == 0 and "webhook_secret_env" in result.out
    path = tmp_path / "c.yml"
    path.write_text(result.out.replace("branches: [", "branchs: ["))
    bad = cli("serve", "--config", str(path), env={"OCTO_HOOK_SECRET": "x",
                                                    "CI_RUNNER_API_TOKEN": "y",
                                                    "DEPLOY_TOKEN": "z"})
    assert bad.code == 2 and "repos[0].branchs: unknown key" in bad.err
