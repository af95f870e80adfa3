"""`ci-runner serve` says what became of every delivery (issue 12): one line in its log
per delivery (accepted, a duplicate, ignored and why, refused with its status and
why, and the run it started), and `GET /api/deliveries` lists the ignored and refused
ones too. Refusals are kept from their headers only, never their bodies, and in a
capped table, so a flood of bad signatures cannot fill the disk. Over the real server
on loopback, with the forges' own fixture bodies."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ci_runner.store import connect
from ci_runner.store import deliveries as store
from tests import serverkit as kit
from tests.gitrepos import git, make_repo

PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello"])
"""
REPO = "Codertocat/Hello-World"
TOKENS = {"alice": "alices-token", "bob": "bobs-token"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("delivery-log")
    source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE})
    repos = [kit.repo_entry("github", REPO, source, approvers=["alice"]),
             kit.repo_entry("gitlab", "gitlab-org/hello-world", source, approvers=["bob"])]
    config = kit.write_config(root / "ci-runner.yml", repos,
                              users={u: f"{u.upper()}_TOKEN" for u in TOKENS})
    home = root / "home"
    server = kit.Server(config, home, env={f"{u.upper()}_TOKEN": t for u, t in TOKENS.items()})
    try:
        server.start()
        yield {"server": server, "home": home, "sha": git(source, "rev-parse", "HEAD")}
    finally:
        server.stop()
        server.close()


def _lines_about(server: kit.Server, delivery: str) -> list[str]:
    return [line for line in server.output().splitlines() if f"delivery {delivery} " in line]


def _line(server: kit.Server, delivery: str, *, containing: str = "") -> str:
    """The one log line about ``delivery`` (that says ``containing``), once written."""
    def found() -> list[str]:
        return [line for line in _lines_about(server, delivery) if containing in line]

    lines = kit.wait_for(found, timeout=20, what=f"a log line about delivery {delivery}")
    assert len(lines) == 1, lines
    return str(lines[0])


def _listed(server: kit.Server, delivery: str, *, token: str | None = None,
            **params: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = (server.http.get("/api/deliveries", params=params, headers=headers) if token
              else server.api("GET", "/api/deliveries", params=params))
    assert answer.status_code == 200, answer.text
    return [d for d in answer.json() if d["delivery_id"] == delivery]


def _one_listed(server: kit.Server, delivery: str) -> dict[str, Any]:
    # Notes are written by the intake's thread just after the answer: wait for it.
    found = kit.wait_for(lambda: _listed(server, delivery), timeout=20,
                         what=f"delivery {delivery} in /api/deliveries")
    assert len(found) == 1, found
    return dict(found[0])


def test_ignored_deliveries_are_logged_and_listed_with_their_reason(served: dict[str, Any]):
    server, sha = served["server"], served["sha"]
    ping = kit.fixture("github-ping.json")
    ping["repository"]["full_name"] = REPO
    closed = kit.github_pr(sha)
    closed["action"] = "closed"
    cases = [
        ("log-ping", ping, "ping", "ping"),
        ("log-wip", kit.github_push(sha, branch="wip"), "push",
         "branch 'wip' is not in the repo's branches"),
        ("log-closed", closed, "pull_request", "event 'pull_request' (closed)"),
        ("log-issues", kit.github_push(sha), "issues", "event 'issues'"),
    ]
    for delivery, body, event, reason in cases:
        answer = server.post("github", body, event=event, delivery=delivery)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"delivery": delivery, "ignored": reason}
        line = _line(server, delivery)
        assert f"(github {event}, {REPO}" in line and line.endswith(f": ignored: {reason}")
        listed = _one_listed(server, delivery)
        assert (listed["outcome"], listed["state"], listed["reason"], listed["http_status"]) == (
            "ignored", "ignored", reason, 200)
        assert (listed["forge"], listed["repo"], listed["event"], listed["signed"]) == (
            "github", REPO, event, True)
        assert listed["run_id"] is None and listed["id"] is None
    assert "branch wip at " + sha[:12] in _line(server, "log-wip")
    assert not kit.rows(served["home"], "SELECT id FROM deliveries WHERE delivery_id LIKE 'log-%'")


def test_accepted_duplicate_and_started_deliveries_each_get_their_line(served: dict[str, Any]):
    server, home, sha = served["server"], served["home"], served["sha"]
    body = kit.github_push(sha)
    assert server.post("github", body, event="push", delivery="log-push").status_code == 202
    accepted = _line(server, "log-push", containing="accepted")
    assert f"(github push, {REPO}, branch master at {sha[:12]}): accepted" in accepted
    run_id = kit.wait_for(lambda: kit.rows(home, "SELECT run_id FROM deliveries WHERE"
                                                 " delivery_id = 'log-push' AND state = 'started'"),
                          timeout=60, what="the delivery's run to start")[0][0]
    started = _line(server, "log-push", containing=run_id)
    assert REPO in started
    again = server.post("github", body, event="push", delivery="log-push")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert "no second run" in _line(server, "log-push", containing="redelivery")
    listed = _one_listed(server, "log-push")
    assert (listed["outcome"], listed["run_id"], listed["http_status"], listed["reason"]) == (
        "started", run_id, 202, None)
    # A redelivery with another body under the same id: refused, logged, listed.
    other = kit.github_push(sha, branch="main")
    assert server.post("github", other, event="push", delivery="log-push").status_code == 409
    refused = _line(server, "log-push", containing="refused (409)")
    assert "another body" in refused
    outcomes = kit.wait_for(lambda: sorted(d["outcome"] for d in _listed(server, "log-push"))
                            if len(_listed(server, "log-push")) == 2 else None,
                            timeout=20, what="the refused redelivery in /api/deliveries")
    assert outcomes == ["refused", "started"]


def test_bad_bodies_and_bad_signatures_are_logged_and_listed_without_their_body(
        served: dict[str, Any]):
    server, home, sha = served["server"], served["home"], served["sha"]
    marker = "body-secret-4c1f9e"  # in every refused body: it must be stored nowhere
    push = kit.github_push(sha)
    push["head_commit"]["message"] = marker
    raw = json.dumps(push).encode()
    good = kit.signed("github", raw, event="push", delivery="log-badsig")
    bad = {**good, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert server.http.post("/hooks/github", content=raw, headers=bad).status_code == 401
    line = _line(server, "log-badsig")
    assert "(github push, from 127.0.0.1): refused (401): X-Hub-Signature-256 does not" in line
    listed = _one_listed(server, "log-badsig")
    assert (listed["outcome"], listed["http_status"], listed["signed"], listed["repo"]) == (
        "refused", 401, False, None)
    assert listed["client"] == "127.0.0.1" and "does not match" in listed["reason"]

    junk = b'{"marker": "' + marker.encode() + b'", '  # signed, but not JSON
    sent = kit.signed("github", junk, event="push", delivery="log-junk")
    assert server.http.post("/hooks/github", content=junk, headers=sent).status_code == 400
    assert _line(server, "log-junk").endswith(
        f"(github push, {REPO}): refused (400): the body is not a JSON webhook payload")
    listed = _one_listed(server, "log-junk")
    assert (listed["outcome"], listed["http_status"], listed["signed"], listed["repo"]) == (
        "refused", 400, True, REPO)

    # Declared too large: answered before the body is read, from the headers alone.
    with socket.create_connection((kit.LOOPBACK, server.port), timeout=10) as s:
        s.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: log-huge\r\n"
                  b"Content-Length: 30000000\r\n\r\n" + b"{" * 1024)
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    assert "(github push, from 127.0.0.1): refused (413): the body is over" in _line(
        server, "log-huge")
    assert _one_listed(server, "log-huge")["http_status"] == 413

    # A header carrying a terminal's escape (C1 CSI, as HTTP allows it) comes out inert.
    sneaky = {**bad, "X-GitHub-Delivery": b"log-sneaky\x9b31mfake"}
    assert server.http.post("/hooks/github", content=raw, headers=sneaky).status_code == 401
    assert "log-sneaky?31mfake (github push" in _line(server, "log-sneaky?31mfake")
    assert not any(marker in path.read_bytes().decode("latin-1")
                   for path in home.glob("ci-runner.db*"))


def test_a_flood_of_bad_signatures_is_capped_and_keeps_what_forges_sent(
        served: dict[str, Any]):
    server, home, sha = served["server"], served["home"], served["sha"]
    ping = kit.fixture("github-ping.json")
    ping["repository"]["full_name"] = REPO
    assert server.post("github", ping, event="ping", delivery="log-before-flood"
                       ).status_code == 200
    _one_listed(server, "log-before-flood")
    raw = json.dumps(kit.github_push(sha)).encode()
    flood = store.LOG_KEEP + 40
    for i in range(flood):
        headers = kit.signed("github", raw, event="push", delivery=f"flood-{i}",
                             secret="an-attackers-guess")
        assert server.http.post("/hooks/github", content=raw, headers=headers
                                ).status_code == 401
    newest = _one_listed(server, f"flood-{flood - 1}")
    assert newest["http_status"] == 401
    assert len(_lines_about(server, "flood-0")) == 1  # every one logged...
    unsigned = kit.rows(home, "SELECT delivery_id FROM delivery_log WHERE signed = 0")
    assert len(unsigned) == store.LOG_KEEP  # ...but only the newest kept
    assert "flood-0" not in {r[0] for r in unsigned}
    # What the forge really sent is still there (past the newest 50 listed by default).
    assert _listed(server, "log-before-flood") == []
    kept = _listed(server, "log-before-flood", repo=REPO)
    assert [d["outcome"] for d in kept] == ["ignored"]


def test_a_users_token_lists_only_its_repos_deliveries(served: dict[str, Any]):
    server, sha = served["server"], served["sha"]
    closed = kit.github_pr(sha)
    closed["action"] = "closed"
    assert server.post("github", closed, event="pull_request", delivery="log-alice"
                       ).status_code == 200
    assert server.post("gitlab", kit.gitlab_mr(sha, action="close"),
                       event="Merge Request Hook", delivery="log-bob").status_code == 200
    raw = json.dumps(kit.github_push(sha)).encode()
    unsigned = kit.signed("github", raw, event="push", delivery="log-nobody", secret="guess")
    assert server.http.post("/hooks/github", content=raw, headers=unsigned).status_code == 401
    for delivery in ("log-alice", "log-bob", "log-nobody"):
        _one_listed(server, delivery)  # the shared token sees all of them
    alice, bob = TOKENS["alice"], TOKENS["bob"]
    assert [d["repo"] for d in _listed(server, "log-alice", token=alice)] == [REPO]
    assert _listed(server, "log-bob", token=alice) == []
    assert _listed(server, "log-nobody", token=alice) == []
    assert _listed(server, "log-nobody", token=bob) == []
    assert [d["outcome"] for d in _listed(server, "log-bob", token=bob)] == ["ignored"]
    assert _listed(server, "log-bob", repo=REPO) == []
    assert len(_listed(server, "log-alice", repo=REPO)) == 1


def test_the_delivery_log_keeps_each_kind_to_its_cap(tmp_path: Path):
    """The store's cap, on a real SQLite file: signed and unsigned rows are capped on
    their own, oldest out first."""
    conn = connect(tmp_path / "ci-runner.db")

    def row(i: int, signed: bool) -> dict[str, Any]:
        return {"forge": "github", "delivery_id": f"{'s' if signed else 'u'}{i}",
                "outcome": "ignored" if signed else "refused", "reason": "why",
                "http_status": 200 if signed else 401, "signed": int(signed),
                "received_at": float(i)}

    try:
        store.note(conn, [row(i, True) for i in range(3)], keep=5)
        for start in range(0, 40, 7):
            store.note(conn, [row(i, False) for i in range(start, start + 7)], keep=5)
        kept = [(r["delivery_id"]) for r in store.recent_log(conn, limit=100)]
    finally:
        conn.close()
    assert kept == ["u41", "u40", "u39", "u38", "u37", "s2", "s1", "s0"]
