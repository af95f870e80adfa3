"""The webhook server end to end: a real `ci-runner serve` on a loopback port, the forges'
fixture bodies (shas pointed at a local repo) with their real headers and signatures,
real runs, a real SQLite file, and a fake forge API recording the commit statuses."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import serverkit as kit
from tests.gitrepos import commit, git, make_repo

PIPELINE = """
import os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["sh", "-c", "echo sha=$(git rev-parse HEAD) | tee sha.txt"],
                       artifacts=["sha.txt"])
        if event.payload.get("forge") == "github":
            await step.run("secret", ["sh", "-c", 'test "${#DEPLOY_TOKEN}" -eq 13'],
                           secrets=["DEPLOY_TOKEN"])
        leaked = await step.do("env", lambda: sorted(
            k for k in os.environ if "SECRET" in k or k in ("DEPLOY_TOKEN", "GH_STATUS")))
        return {"sha": event.sha, "leaked": leaked}
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One server for the module, once on each store (its home's SQLite file, then a
    PostgreSQL database)."""
    root = tmp_path_factory.mktemp("hooks")
    db_env = {}
    if request.param == "postgresql":
        db_env = {"CI_RUNNER_DB": request.getfixturevalue("pg_server").create_database()}
    source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE})
    shas = [git(source, "rev-parse", "HEAD")]
    shas += [commit(source, {f"f{i}.txt": str(i)}, f"change {i}") for i in (1, 2)]
    # A commit on no branch of the source: only fetching it by sha can bring it.
    git(source, "checkout", "-q", "--detach")
    shas.append(commit(source, {"detached.txt": "x"}, "detached"))
    git(source, "checkout", "-q", "main")
    with kit.FakeForge(fail_first=1) as forge:
        repos = [
            kit.repo_entry("github", "Codertocat/Hello-World", source, secrets=["DEPLOY_TOKEN"],
                           status={"api_url": forge.url, "token_env": "GH_STATUS"}),
            kit.repo_entry("gitea", "jcitizen/my-repo", source,
                           status={"api_url": forge.url + "/api/v1", "token_env": "GH_STATUS"}),
            kit.repo_entry("gitea", "gogits/hello-world", source),
            kit.repo_entry("forgejo", "gogits/hello-world", source),
            kit.repo_entry("gitlab", "gitlab-org/hello-world", source,
                           status={"api_url": forge.url + "/api/v4", "token_env": "GH_STATUS",
                                   "context": "ci/local"}),
        ]
        config = kit.write_config(root / "ci-runner.yml", repos)
        home = root / "home"
        server = kit.Server(config, home, env={"DEPLOY_TOKEN": "deploy-123456",
                                               "GH_STATUS": "status-token", **db_env})
        try:
            server.start()
            yield {"server": server, "home": home, "shas": shas, "forge": forge,
                   "source": source}
        finally:
            server.stop()
            server.close()


def _counts(home: Path) -> tuple[int, int]:
    return (len(kit.rows(home, "SELECT id FROM deliveries")),
            len(kit.rows(home, "SELECT id FROM instances")))


def test_each_forge_push_and_pr_start_one_run_at_the_right_sha(served: dict[str, Any]):
    server, home, shas, forge = served["server"], served["home"], served["shas"], served["forge"]
    before = _counts(home)[1]
    sent = [
        ("github", kit.github_push(shas[0]), "push", shas[0]),
        ("github", kit.github_pr(shas[1], number=11), "pull_request", shas[1]),
        ("github", kit.github_pr(shas[3], name="github-pull_request-synchronize.json",
                                 number=12), "pull_request", shas[3]),
        ("gitea", kit.gitea_push(shas[1]), "push", shas[1]),
        ("gitea", kit.gitea_pr(shas[2]), "pull_request", shas[2]),
        ("forgejo", kit.gitea_push(shas[2]), "push", shas[2]),
        ("gitlab", kit.gitlab_push(shas[0]), "Push Hook", shas[0]),
        ("gitlab", kit.gitlab_mr(shas[3]), "Merge Request Hook", shas[3]),
    ]
    expected = {}
    for i, (forge_name, body, event, sha) in enumerate(sent):
        delivery = f"each-{i}"
        answer = server.post(forge_name, body, event=event, delivery=delivery)
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"delivery": delivery, "accepted": True, "duplicate": False}
        expected[delivery] = (forge_name, sha, event)
    found = kit.wait_for(kit.settled(home, before + len(sent)), timeout=60,
                         what="every delivery's run to finish")
    by_delivery = {r["meta"].get("delivery"): r for r in found}
    for delivery, (forge_name, sha, event) in expected.items():
        run = by_delivery[delivery]
        assert run["status"] == "complete", (delivery, server.output())
        assert run["meta"]["sha"] == sha and run["meta"]["forge"] == forge_name
        assert run["meta"]["trigger"] == "webhook"
        assert run["params"]["event"] == ("push" if "ush" in event else "pull_request")
        record = server.api("GET", f"/api/runs/{run['id']}").json()
        output = json.loads(kit.rows(home, "SELECT output FROM instances WHERE id = ?",
                                     run["id"])[0][0])
        assert output == {"sha": sha, "leaked": []}  # secrets reach steps via their file only
        assert record["webhook"]["delivery"] == delivery
    log = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/logs/hello")
    assert f"sha={shas[0]}" in log.text
    followed = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/logs/hello",
                          params={"follow": "true"})  # the run is over: ends at once
    assert followed.text == log.text
    kept = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/artifacts").json()
    assert [a["path"] for a in kept] == ["sha.txt"]
    got = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/artifacts/sha.txt")
    assert got.status_code == 200 and got.text == f"sha={shas[0]}\n"
    nothing = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/artifacts/x.txt")
    assert nothing.status_code == 404
    missing = server.api("GET", f"/api/runs/{by_delivery['each-0']['id']}/logs/nope")
    assert missing.status_code == 404 and "hello" in missing.json()["detail"]
    pr = by_delivery["each-7"]
    assert (pr["meta"]["pr"], pr["params"]["pr"], pr["meta"]["ref"]) == (
        7, 7, "refs/merge-requests/7/head")
    states = {r["state"] for r in kit.rows(home, "SELECT state FROM deliveries WHERE"
                                                 " delivery_id LIKE 'each-%'")}
    assert states == {"started"}

    # Commit statuses: pending then success per run, to each forge's API shape; the first
    # call was answered 500 and was tried again.
    def finals() -> list[dict[str, Any]]:
        return [c for c in forge.calls if c["body"]["state"] == "success"]

    # GitHub: the push and two pull requests; Gitea: one pull request; GitLab: two.
    kit.wait_for(lambda: len(finals()) == 6, timeout=30, what="six success statuses")
    assert forge.calls[0]["body"]["state"] == "pending"
    github = [c for c in forge.calls if c["path"] == f"/repos/Codertocat/Hello-World/statuses/"
                                                      f"{shas[0]}"]
    assert [c["body"]["state"] for c in github][-1] == "success"
    assert github[0]["headers"]["authorization"] == "Bearer status-token"
    assert github[0]["body"]["context"] == "ci-runner"
    lab = [c for c in forge.calls if c["path"] == f"/api/v4/projects/gitlab-org%2Fhello-world/"
                                                   f"statuses/{shas[3]}"]
    assert lab and lab[-1]["body"]["state"] == "success"
    assert lab[-1]["body"]["name"] == "ci/local/pr"  # a merge request's run
    assert lab[-1]["headers"]["private-token"] == "status-token"
    tea = [c for c in forge.calls if c["path"] == f"/api/v1/repos/jcitizen/my-repo/statuses/"
                                                   f"{shas[2]}"]
    assert tea and tea[-1]["headers"]["authorization"] == "token status-token"


def test_a_retried_webhook_run_is_reported_to_the_forge_again(served: dict[str, Any]):
    """`ci-runner retry` of a webhook run that already reported success: the commit goes
    back to pending while it runs, then gets its new final status."""
    server, home, shas, forge = served["server"], served["home"], served["shas"], served["forge"]
    answer = server.post("github", kit.github_pr(shas[2], number=31), event="pull_request",
                         delivery="retried-31")
    assert answer.status_code == 202, answer.text
    path = f"/repos/Codertocat/Hello-World/statuses/{shas[2]}"

    def states() -> list[str]:
        return [c["body"]["state"] for c in forge.calls
                if c["path"] == path and c["body"]["context"] == "ci-runner/pr"]

    kit.wait_for(lambda: states() and states()[-1] == "success", timeout=60,
                 what="the first success status")
    before = len(states())
    (run_id,) = kit.rows(home, "SELECT run_id FROM deliveries WHERE delivery_id = ?",
                         "retried-31")[0]
    retried = subprocess.run(
        [sys.executable, "-m", "ci_runner", "retry", run_id, "--from", "hello", "--json"],
        env=server.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        check=False)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] == "complete"
    kit.wait_for(lambda: len(states()) > before and states()[-1] == "success", timeout=30,
                 what="a new success status after the retry")


def test_ping_deleted_branches_and_other_events_start_nothing(served: dict[str, Any]):
    server, home, shas = served["server"], served["home"], served["shas"]
    before = _counts(home)
    closed = kit.github_pr(shas[0])
    closed["action"] = "closed"
    ping = kit.fixture("github-ping.json")
    ping["repository"]["full_name"] = "Codertocat/Hello-World"
    cases = [
        ("github", ping, "ping", "ping"),
        ("github", kit.fixture("github-push.json"), "push", "a deleted branch or tag"),
        ("github", kit.github_push(shas[0], branch="wip"), "push", "not in the repo's branches"),
        ("github", closed, "pull_request", "closed"),
        ("github", kit.github_push(shas[0]), "issues", "issues"),
    ]
    deleted = kit.github_push(shas[0])
    deleted["after"], deleted["deleted"] = "0" * 40, True
    cases.append(("github", deleted, "push", "a deleted branch"))
    for forge, body, event, reason in cases:
        answer = server.post(forge, body, event=event)
        assert answer.status_code == 200, answer.text
        assert reason in answer.json()["ignored"]
    assert _counts(home) == before


def test_refusals_store_nothing(served: dict[str, Any]):
    server, home, shas = served["server"], served["home"], served["shas"]
    before = _counts(home)
    body = json.dumps(kit.github_push(shas[0])).encode()
    good = kit.signed("github", body, event="push")

    def send(path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return server.http.post(path, content=content, headers=headers)

    bad_sig = {**good, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert send("/hooks/github", body, bad_sig).status_code == 401
    other_secret = kit.signed("github", body, event="push", secret="not-the-secret")
    assert send("/hooks/github", body, other_secret).status_code == 401
    no_sig = {k: v for k, v in good.items() if k != "X-Hub-Signature-256"}
    assert send("/hooks/github", body, no_sig).status_code == 401
    no_event = {k: v for k, v in good.items() if k != "X-GitHub-Event"}
    assert send("/hooks/github", body, no_event).status_code == 400
    no_delivery = {k: v for k, v in good.items() if k != "X-GitHub-Delivery"}
    assert send("/hooks/github", body, no_delivery).status_code == 400
    # Signed with a configured secret, but about a repository that is not configured.
    stranger = kit.github_push(shas[0])
    stranger["repository"]["full_name"] = "someone/else"
    raw = json.dumps(stranger).encode()
    assert send("/hooks/github", raw, kit.signed("github", raw, event="push")).status_code == 403
    # A GitLab body signed like GitHub's is malformed for /hooks/github.
    lab = json.dumps(kit.gitlab_push(shas[0])).encode()
    assert send("/hooks/github", lab, kit.signed("github", lab, event="push")).status_code == 400
    # Each path belongs to one forge: GitHub's signature means nothing at /hooks/gitea or
    # /hooks/gitlab, even with Gitea's own event header.
    assert send("/hooks/gitea", body, {**good, "X-Gitea-Event": "push"}).status_code == 401
    assert send("/hooks/gitlab", body, good).status_code == 401
    assert send("/hooks/bitbucket", body, good).status_code == 404
    tea = json.dumps(kit.gitea_push(shas[0])).encode()
    assert send("/hooks/forgejo", tea, kit.signed("gitea", tea, event="push")).status_code == 401
    # Malformed, but properly signed.
    for junk in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        assert send("/hooks/github", junk, kit.signed("github", junk, event="push")
                    ).status_code == 400
    bad_ref = kit.github_push(shas[0])
    bad_ref["ref"] = "refs/heads/--upload-pack=touch /tmp/pwned"
    raw = json.dumps(bad_ref).encode()
    assert send("/hooks/github", raw, kit.signed("github", raw, event="push")).status_code == 400
    # The Gitea fixture's legacy "secret" field is data, not a signature.
    pr = json.dumps(kit.gitea_pr(shas[0])).encode()
    unsigned = {k: v for k, v in kit.signed("gitea", pr, event="pull_request").items()
                if k not in ("X-Gitea-Signature", "X-Hub-Signature-256")}
    assert send("/hooks/gitea", pr, unsigned).status_code == 401
    assert _counts(home) == before


def test_oversized_bodies_are_refused_unread(served: dict[str, Any]):
    server, home = served["server"], served["home"]
    before = _counts(home)
    port = server.port
    # Declared too large: answered before the body is sent at all.
    with socket.create_connection((kit.LOOPBACK, port), timeout=10) as s:
        s.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\n"
                  b"Content-Length: 30000000\r\n\r\n" + b"{" * 65536)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Chunked with no length: refused once past 25 MB, without waiting for the end.
    async def chunked() -> int:
        async def body() -> Any:
            chunk = b"x" * (1 << 20)
            for _ in range(40):
                yield chunk

        async with httpx.AsyncClient(timeout=30) as client:
            try:
                answer = await client.post(
                    f"http://{kit.LOOPBACK}:{port}/hooks/github", content=body(),
                    headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "big2",
                             "X-Hub-Signature-256": "sha256=" + "0" * 64})
            except httpx.TransportError:
                return 413  # the server answered and closed while we were still sending
            return answer.status_code

    assert asyncio.run(chunked()) == 413
    assert server.http.get("/health").status_code == 200
    assert _counts(home) == before


def test_concurrent_redeliveries_start_one_run(served: dict[str, Any]):
    server, home, shas = served["server"], served["home"], served["shas"]
    before = _counts(home)[1]
    body = json.dumps(kit.github_push(shas[2])).encode()
    headers = kit.signed("github", body, event="push", delivery="redelivered-20x")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{kit.LOOPBACK}:{server.port}",
                                     timeout=30) as client:
            return await asyncio.gather(*(client.post("/hooks/github", content=body,
                                                      headers=headers) for _ in range(20)))

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [202] * 20
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 19
    found = kit.wait_for(kit.settled(home, before + 1), timeout=30, what="the one run")
    run = next(r for r in found if r["meta"].get("delivery") == "redelivered-20x")
    assert run["status"] == "complete"
    # Later, serial redeliveries: still that one run.
    assert server.http.post("/hooks/github", content=body, headers=headers).json()["duplicate"]
    assert len(kit.rows(home, "SELECT id FROM deliveries WHERE delivery_id = ?",
                        "redelivered-20x")) == 1
    assert len(kit.runs(home)) == before + 1


def test_the_api_wants_a_token(served: dict[str, Any]):
    server, home, shas = served["server"], served["home"], served["shas"]
    # A run of its own to list, whichever tests ran before.
    answer = server.post("github", kit.github_push(shas[0]), event="push", delivery="api-1")
    assert answer.status_code == 202, answer.text
    kit.wait_for(lambda: kit.rows(home, "SELECT run_id FROM deliveries WHERE delivery_id ="
                                        " 'api-1' AND state = 'started'"),
                 timeout=30, what="the delivery's run to start")
    for path in ("/api/runs", "/api/pending", "/openapi.json", "/api/deliveries"):
        assert server.http.get(path).status_code == 401, path
        bad = server.http.get(path, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401, path
    assert server.http.post("/api/runs/x/approve", json={"by": "a"}).status_code == 401
    health = server.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = server.api("GET", "/openapi.json").json()
    assert {"/hooks/github", "/hooks/gitea", "/hooks/gitlab", "/health", "/api/runs",
            "/api/runs/{run_id}/approve", "/api/pending"} <= set(schema["paths"])
    assert server.api("GET", "/api/runs/no-such-run").status_code == 404
    listed = server.api("GET", "/api/runs", params={"repo": "Codertocat/Hello-World"}).json()
    assert listed and all(r["repo"] == "Codertocat/Hello-World" for r in listed)
    deliveries = server.api("GET", "/api/deliveries").json()
    assert deliveries and {"forge", "delivery_id", "state", "run_id"} <= set(deliveries[0])


def test_a_big_signed_body_under_the_limit_is_read_whole(served: dict[str, Any]):
    server, home, shas = served["server"], served["home"], served["shas"]
    before = _counts(home)
    body = kit.github_push(shas[0], branch="wip")  # authenticated and parsed, starts nothing
    body["head_commit"]["message"] = "x" * (8 << 20)
    answer = server.post("github", body, event="push")
    assert answer.status_code == 200 and "wip" in answer.json()["ignored"]
    assert _counts(home) == before
