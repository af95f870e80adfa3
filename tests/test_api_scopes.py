"""A user's API token reads only the runs of the repos that user may approve; the shared
token reads everything. Over the real server on loopback, with three repos (two of them
with one name on two forges) and users who approve some of them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import serverkit as kit
from tests.gitrepos import git, make_repo

PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello from " + event.payload["forge"]],
                       artifacts=[".ci/pipeline.py"])
        await step.wait_for_approval("deploy", message="ship it?")
        return {"shipped": True}
"""

TOKENS = {"alice": "alices-token", "bob": "bobs-token", "root": "roots-token",
          "dave": "daves-token"}
FORGES = ("github", "gitea", "forgejo")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("scopes")
    source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE})
    sha = git(source, "rev-parse", "HEAD")
    repos = [
        kit.repo_entry("github", "Codertocat/Hello-World", source, approvers=["alice"]),
        kit.repo_entry("gitea", "gogits/hello-world", source, approvers=["bob"]),
        # The same name on another forge is another repo, with its own approvers.
        kit.repo_entry("forgejo", "gogits/hello-world", source, approvers=["alice"]),
    ]
    config = kit.write_config(root / "ci-runner.yml", repos, approvers=["root"],
                              users={u: f"{u.upper()}_TOKEN" for u in TOKENS})
    home = root / "home"
    server = kit.Server(config, home, env={f"{u.upper()}_TOKEN": t for u, t in TOKENS.items()})
    try:
        server.start()
        bodies = {"github": kit.github_push(sha), "gitea": kit.gitea_push(sha),
                  "forgejo": kit.gitea_push(sha)}
        for forge in FORGES:
            answer = server.post(forge, bodies[forge], event="push", delivery=f"{forge}-1")
            assert answer.status_code == 202, answer.text

        def waiting() -> list[dict[str, Any]]:
            found = server.api("GET", "/api/pending").json()
            return found if len(found) == 3 else []

        kit.wait_for(waiting, timeout=60, what="three runs waiting for approval")
        ids = {r["meta"]["forge"]: r["id"] for r in kit.runs(home)}
        assert set(ids) == set(FORGES), server.output()
        yield {"server": server, "ids": ids}
    finally:
        server.stop()
        server.close()


def _as(server: kit.Server, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKENS[user]}"}
    return server.http.request(method, path, headers=headers, **kwargs)


def _run_ids(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {r["run_id"] for r in answer.json()}


@pytest.mark.parametrize(("user", "forges"), [
    ("alice", {"github", "forgejo"}), ("bob", {"gitea"}), ("root", set(FORGES)),
    ("dave", set()),
])
def test_each_token_lists_only_the_repos_its_user_approves(
    served: dict[str, Any], user: str, forges: set[str]
):
    server, ids = served["server"], served["ids"]
    mine = {ids[f] for f in forges}
    assert _run_ids(_as(server, user, "GET", "/api/runs")) == mine
    pending = _as(server, user, "GET", "/api/pending")
    assert _run_ids(pending) == mine
    deliveries = _as(server, user, "GET", "/api/deliveries").json()
    assert {d["forge"] for d in deliveries} == forges
    assert {d["run_id"] for d in deliveries} == mine
    # One name on two forges: each token gets the runs of the one it may read.
    named = _as(server, user, "GET", "/api/runs", params={"repo": "gogits/hello-world"})
    if forges & {"gitea", "forgejo"}:
        assert _run_ids(named) == {ids[f] for f in forges & {"gitea", "forgejo"}}
    else:
        assert named.status_code == 404
    only = _as(server, user, "GET", "/api/deliveries", params={"repo": "gogits/hello-world"})
    assert {d["forge"] for d in only.json()} == forges & {"gitea", "forgejo"}


def test_the_shared_token_reads_every_repo(served: dict[str, Any]):
    server, ids = served["server"], served["ids"]
    assert _run_ids(server.api("GET", "/api/runs")) == set(ids.values())
    assert _run_ids(server.api("GET", "/api/pending")) == set(ids.values())
    assert {d["forge"] for d in server.api("GET", "/api/deliveries").json()} == set(FORGES)
    for run_id in ids.values():
        assert server.api("GET", f"/api/runs/{run_id}").status_code == 200
        assert "hello from" in server.api("GET", f"/api/runs/{run_id}/logs/hello").text


def test_a_run_of_another_repo_is_answered_as_one_that_does_not_exist(served: dict[str, Any]):
    server, ids = served["server"], served["ids"]
    theirs = ids["gitea"]
    ghost = theirs[:-4] + ("0000" if not theirs.endswith("0000") else "1111")
    for path in ("", "/logs/hello", "/logs/nope", "/artifacts", "/artifacts/.ci/pipeline.py"):
        hidden = _as(server, "alice", "GET", f"/api/runs/{theirs}{path}")
        absent = _as(server, "alice", "GET", f"/api/runs/{ghost}{path}")
        assert hidden.status_code == absent.status_code == 404, (path, hidden.text)
        assert hidden.text.replace(theirs, ghost) == absent.text, path
    # A unique prefix names a run as a full id does, and hides it the same way.
    assert _as(server, "alice", "GET", f"/api/runs/{theirs[:-2]}").status_code == 404
    assert _as(server, "bob", "GET", f"/api/runs/{theirs[:-2]}").status_code == 200


def test_a_prefix_is_unique_or_ambiguous_among_the_runs_a_token_sees(served: dict[str, Any]):
    server, ids = served["server"], served["ids"]
    # Characters, not path parts: ids start with the time they were made.
    shared = os.path.commonprefix(list(ids.values()))  # noqa: RUF071
    assert len(shared) >= 9, ids
    # alice sees two of the three: ambiguous, and the third is not named.
    answer = _as(server, "alice", "GET", f"/api/runs/{shared}")
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "is ambiguous: 2 runs start with it" in detail, detail
    assert ids["github"] in detail and ids["forgejo"] in detail
    assert ids["gitea"] not in detail
    # bob sees one: the prefix names it, whatever runs he may not see share it.
    answer = _as(server, "bob", "GET", f"/api/runs/{shared}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["run_id"] == ids["gitea"]
    # dave sees none: no run, as for a prefix nothing starts with.
    assert _as(server, "dave", "GET", f"/api/runs/{shared}").status_code == 404


def test_a_token_reads_its_own_runs_whole(served: dict[str, Any]):
    server, ids = served["server"], served["ids"]
    mine = ids["github"]
    record = _as(server, "alice", "GET", f"/api/runs/{mine}")
    assert record.status_code == 200 and record.json()["run_id"] == mine
    assert record.json()["webhook"]["forge"] == "github"
    log = _as(server, "alice", "GET", f"/api/runs/{mine}/logs/hello")
    assert log.status_code == 200 and "hello from github" in log.text
    kept = _as(server, "alice", "GET", f"/api/runs/{mine}/artifacts")
    assert [a["path"] for a in kept.json()] == [".ci/pipeline.py"]
    got = _as(server, "alice", "GET", f"/api/runs/{mine}/artifacts/.ci/pipeline.py")
    assert got.status_code == 200 and "wait_for_approval" in got.text


def test_deciding_another_repos_run_is_refused_without_telling_it_exists(
    served: dict[str, Any]
):
    server, ids = served["server"], served["ids"]
    theirs, ghost = ids["gitea"], "20000101-000000-00000000"
    for verb in ("approve", "reject"):
        hidden = _as(server, "alice", "POST", f"/api/runs/{theirs}/{verb}")
        absent = _as(server, "alice", "POST", f"/api/runs/{ghost}/{verb}")
        assert hidden.status_code == absent.status_code == 403, hidden.text
        assert hidden.text.replace(theirs, ghost) == absent.text
        assert "\n" not in hidden.json()["detail"]
        nobody = _as(server, "dave", "POST", f"/api/runs/{ids['github']}/{verb}")
        assert nobody.status_code == 403
    # The shared token names who decides; that person must approve the run's repo.
    wrong = server.api("POST", f"/api/runs/{theirs}/approve", json={"by": "alice"})
    assert wrong.status_code == 403 and "alice is not an approver" in wrong.json()["detail"]
    assert server.api("POST", f"/api/runs/{ghost}/approve", json={"by": "bob"}
                      ).status_code == 404
    # Still waiting: none of the refusals decided anything.
    assert theirs in _run_ids(server.api("GET", "/api/pending"))


def test_each_approver_decides_their_own_repos_run(served: dict[str, Any]):
    server, ids = served["server"], served["ids"]
    assert _as(server, "bob", "POST", f"/api/runs/{ids['gitea']}/approve").status_code == 202
    assert _as(server, "root", "POST", f"/api/runs/{ids['forgejo']}/reject").status_code == 202
    ok = _as(server, "alice", "POST", f"/api/runs/{ids['github']}/approve",
             json={"comment": "fine"})
    assert ok.status_code == 202 and ok.json()["by"] == "alice"

    def decided() -> bool:
        return not server.api("GET", "/api/pending").json()

    kit.wait_for(decided, timeout=30, what="every run to leave the pending list")
    assert _run_ids(_as(server, "bob", "GET", "/api/runs")) == {ids["gitea"]}
