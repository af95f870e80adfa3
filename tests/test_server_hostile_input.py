"""Bad input, isolated (issue 11): a real `ci-runner serve` on loopback fed deliveries
with values out of range, JSON nested too deep, slow clients, reused delivery ids and
a changed clone URL, and a database that stops taking writes. Every flood is bounded
in count and time, and every test asserts what was answered and what was stored."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import resource
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ci_runner.errors import WorkspaceError
from ci_runner.server.config import parse_config
from ci_runner.server.forges import HookRejected
from ci_runner.server.intake import Intake
from ci_runner.workspace import fork, remove
from ci_runner.workspace.mirror import (
    ensure_mirror,
    fetch,
    follow_clone_url,
    has_commit,
    mirror_path,
    reset_foreign_config,
)
from tests import serverkit as kit
from tests.gitrepos import git, make_repo

PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        return await step.do("sha", lambda: event.sha)
"""
VALID = "Codertocat/Hello-World"
POISONED = "mallory/poisoned"
TIMEOUT_S = 2.0  # the served request deadline (CI_RUNNER_REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE})
    sha = git(source, "rev-parse", "HEAD")
    repos = [kit.repo_entry("github", VALID, source, supersede={"branches": True}),
             kit.repo_entry("github", POISONED, source)]
    config = kit.write_config(root / "ci-runner.yml", repos, max_body_mb=1)
    home = root / "home"
    server = kit.Server(config, home, env={"CI_RUNNER_REQUEST_TIMEOUT_S": str(TIMEOUT_S)})
    try:
        server.start()
        yield {"server": server, "home": home, "sha": sha, "source": source}
    finally:
        server.stop()
        server.close()
    assert "Traceback" not in server.output(), server.output()


def _deliveries(home: Path, where: str = "1", *args: Any) -> list[sqlite3.Row]:
    return kit.rows(home, f"SELECT * FROM deliveries WHERE {where}", *args)


def _raw(body: dict[str, Any], **replace: str) -> bytes:
    """``body`` as JSON, with the placeholder strings in it swapped for raw JSON text
    (lone surrogates and numbers json.dumps would not write)."""
    text = json.dumps(body)
    for placeholder, raw in replace.items():
        text = text.replace(json.dumps(placeholder), raw)
    return text.encode()


# -- 1. one delivery's failure never fails another's ---------------------------------------


def _poisoned(sha: str) -> dict[str, bytes]:
    """Signed, well-formed deliveries of another tenant, each with one value that is out
    of range or cannot be stored."""
    def pr(number: int = 5) -> dict[str, Any]:
        return kit.about_repo(kit.github_pr(sha, number=number), POISONED)

    huge = pr()
    huge["number"] = huge["pull_request"]["number"] = "HUGE"
    negative = pr(-3)
    long_sender = pr()
    long_sender["sender"]["login"] = "m" * 100_000
    long_branch = pr()
    long_branch["pull_request"]["head"]["ref"] = "b" * 300
    not_hex = pr()
    not_hex["pull_request"]["head"]["sha"] = "z" * 40
    short_sha = kit.about_repo(kit.github_push(sha[:39]), POISONED)
    surrogate = pr()
    surrogate["pull_request"]["head"]["ref"] = "SURROGATE"
    surrogate_sender = kit.about_repo(kit.github_push(sha), POISONED)
    surrogate_sender["sender"]["login"] = "SURROGATE"
    return {
        "pr-2**70": _raw(huge, HUGE=str(2**70)),
        "pr-negative": _raw(negative),
        "sender-100k": _raw(long_sender),
        "branch-300": _raw(long_branch),
        "sha-not-hex": _raw(not_hex),
        "sha-39": _raw(short_sha),
        "branch-lone-surrogate": _raw(surrogate, SURROGATE='"x\\ud800"'),
        "sender-lone-surrogate": _raw(surrogate_sender, SURROGATE='"\\udfff"'),
    }


def test_poisoned_deliveries_fail_alone(served: dict[str, Any]):
    """60 concurrent valid deliveries of one repo and 8 poisoned ones of another, all
    signed and sent at once: every valid one 202 and stored once, every poisoned one
    400 and stored nowhere."""
    server, home, sha = served["server"], served["home"], served["sha"]
    valid = {f"valid-{i}": json.dumps(kit.github_push(sha, branch="main")).encode()
             for i in range(60)}
    poisoned = {f"poisoned-{name}": body for name, body in _poisoned(sha).items()}
    event = {**dict.fromkeys(valid, "push"),
             **{d: "push" if "sha-39" in d or "sender-lone" in d else "pull_request"
                for d in poisoned}}
    everything = {**valid, **poisoned}

    async def burst() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{kit.LOOPBACK}:{server.port}",
                                     timeout=30) as client:
            async def post(delivery: str) -> httpx.Response:
                body = everything[delivery]
                headers = kit.signed("github", body, event=event[delivery], delivery=delivery)
                return await client.post("/hooks/github", content=body, headers=headers)

            # Interleaved, so poisoned ones land in the same group commits as valid ones.
            order = list(valid)
            for i, delivery in enumerate(poisoned):
                order.insert(i * 7, delivery)
            answers = await asyncio.gather(*(post(d) for d in order))
            return dict(zip(order, answers, strict=True))

    answers = asyncio.run(burst())
    for delivery, answer in answers.items():
        expected = 202 if delivery in valid else 400
        assert answer.status_code == expected, (delivery, answer.status_code, answer.text)
    assert all(not answers[d].json()["duplicate"] for d in valid)
    assert "out of range" in answers["poisoned-pr-2**70"].json()["error"]
    assert "not valid Unicode" in answers["poisoned-branch-lone-surrogate"].json()["error"]
    stored = _deliveries(home, "delivery_id LIKE 'valid-%'")
    assert sorted(r["delivery_id"] for r in stored) == sorted(valid)  # each exactly once
    assert _deliveries(home, "repo = ? OR delivery_id LIKE 'poisoned-%'", POISONED) == []


def test_a_group_commit_that_fails_is_retried_row_by_row(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """Rows that slip past parsing and cannot be stored (an integer past SQLite's, a
    missing NOT NULL value) are refused alone; the rest of their group commit is stored."""
    monkeypatch.setenv("CI_RUNNER_HOME", str(tmp_path / "home"))
    config = parse_config({"repos": [{"name": VALID, "forge": "github", "clone_url": "/x",
                                      "webhook_secret": "s"}]},
                          path=tmp_path / "c.yml", environ={})
    db = tmp_path / "home" / "ci-runner.db"
    woken: list[int] = []
    intake = Intake(config, db, on_accept=lambda: woken.append(1))

    def record(delivery: str, **values: Any) -> dict[str, Any]:
        return {"forge": "github", "delivery_id": delivery, "repo": VALID, "event": "push",
                "action": "push", "sha": "a" * 40, "ref": "refs/heads/main", "branch": "main",
                "tag": None, "pr": None, "is_fork": 0, "sender": "octocat",
                "lane": "branch:main", "source_ref": "refs/heads/main",
                "body_sha256": "0" * 64, **values}

    # Queued before the writer starts: it takes all of them into one group commit.
    futures = {f"good-{i}": intake.submit(record(f"good-{i}")) for i in range(10)}
    futures["too-big"] = intake.submit(record("too-big", pr=2**70, lane="pr:x"))
    futures["no-sha"] = intake.submit(record("no-sha", sha=None))
    intake.start()
    try:
        for name, future in futures.items():
            if name.startswith("good-"):
                assert future.result(timeout=30) == "new", name
            else:
                with pytest.raises(HookRejected) as refused:
                    future.result(timeout=30)
                assert refused.value.status == 400, name
    finally:
        intake.stop()
    assert woken
    conn = sqlite3.connect(db)
    try:
        ids = sorted(r[0] for r in conn.execute("SELECT delivery_id FROM deliveries"))
    finally:
        conn.close()
    assert ids == sorted(f"good-{i}" for i in range(10))


# -- 2. nested or huge JSON ------------------------------------------------------------------


def test_deeply_nested_json_is_400_and_the_size_limit_holds(served: dict[str, Any]):
    server, home, sha = served["server"], served["home"], served["sha"]
    before = len(_deliveries(home))
    push = kit.github_push(sha)
    push["head_commit"]["message"] = "DEEP"
    bodies = {
        "arrays": b"[" * 10_000 + b"]" * 10_000,
        "objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "inside-a-push": _raw(push, DEEP="[" * 10_000 + "]" * 10_000),
    }
    for name, body in bodies.items():
        answer = server.post("github", body, event="push", delivery=f"deep-{name}")
        assert answer.status_code == 400, (name, answer.text)
        assert "nested too deeply" in answer.json()["error"], name
    # The server is configured with max_body_mb: 1; a signed body past it is refused.
    big = kit.github_push(sha)
    big["head_commit"]["message"] = "x" * (1 << 20)
    assert server.post("github", big, event="push").status_code == 413
    assert server.http.get("/health").status_code == 200
    assert len(_deliveries(home)) == before


# -- 3. slow clients -------------------------------------------------------------------------


async def _slow_client(port: int, request: bytes, *, at_once: int = 0,
                       give_up_s: float) -> tuple[float, bytes]:
    """Send ``request``, its first ``at_once`` bytes in one write and the rest one byte a
    second, until the server closes the connection (or ``give_up_s`` passes); how long
    that took and what the server said."""
    # From before the connection: the server's deadline starts when it accepts, never
    # earlier, while this coroutine may resume from its connect well after that on a
    # loaded machine (with 199 others waiting to run), which once read as a cut-off
    # 0.5 s early.
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(kit.LOOPBACK, port)
    answer = b""
    writer.write(request[:at_once])
    try:
        for byte in request[at_once:]:
            if time.monotonic() - start > give_up_s:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            except OSError:
                break
            answer += chunk
            if not chunk:  # closed by the server
                break
            # A socket closed with our unread bytes in it ends in a reset: what came
            # before it (the 408) is the answer.
            with contextlib.suppress(OSError):
                answer += await asyncio.wait_for(reader.read(), timeout=give_up_s)
            break
    finally:
        writer.close()
    return time.monotonic() - start, answer


def test_slow_clients_are_cut_off_and_health_still_answers(served: dict[str, Any]):
    """200 connections sending a byte a second (half still in their headers, half in
    their body): /health answers while they hold their connections (before the first
    is cut off: no wall-clock bound, which a loaded machine would break), and the
    server closes every one of them with a 408 once the request deadline passes."""
    server, sha = served["server"], served["sha"]
    headers = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
    in_headers = headers + b"X-Padding: " + b"p" * 200 + b"\r\n\r\n"
    in_body = headers + b"Content-Length: 1000\r\n\r\n" + b"{" * 1000
    give_up_s = TIMEOUT_S + 8  # bounds the test if the server never cuts them off

    async def flood() -> tuple[list[tuple[float, bytes]], list[float]]:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        clients = [loop.create_task(_slow_client(server.port, in_headers, give_up_s=give_up_s))
                   for _ in range(100)]
        # A body can only be slow once its headers are in: send those at once.
        clients += [loop.create_task(_slow_client(server.port, in_body, give_up_s=give_up_s,
                                                  at_once=in_body.index(b"\r\n\r\n") + 4))
                    for _ in range(100)]
        health: list[float] = []  # when each answer came, from the flood's start
        async with httpx.AsyncClient(timeout=give_up_s) as client:
            for _ in range(3):
                await asyncio.sleep(0.3)
                answer = await client.get(f"http://{kit.LOOPBACK}:{server.port}/health")
                assert answer.status_code == 200
                health.append(time.monotonic() - start)
        return list(await asyncio.gather(*clients)), health

    ended, health = asyncio.run(flood())
    assert len(ended) == 200
    # /health did not wait for the slow clients: it answered before any was cut off.
    assert max(health) < min(took for took, _ in ended), (health, min(ended)[0])
    for took, answer in ended:
        # Cut off by the server once the deadline passed, not by the test giving up.
        assert TIMEOUT_S - 0.5 <= took < give_up_s, (took, answer[:80])  # at its deadline
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert "did not send a whole request" in server.output()
    # A request that takes longer than the deadline but keeps coming at a working rate
    # (1 MB at about 200 kB/s) is not taken for a slow client.
    body = kit.github_push(sha, branch="wip")
    body["head_commit"]["message"] = "y" * (900 << 10)
    raw = json.dumps(body).encode()

    async def steady() -> httpx.Response:
        async def chunks() -> Any:
            for start in range(0, len(raw), 20_000):
                yield raw[start:start + 20_000]
                await asyncio.sleep(0.1)

        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(
                f"http://{kit.LOOPBACK}:{server.port}/hooks/github", content=chunks(),
                headers={**kit.signed("github", raw, event="push"),
                         "Content-Length": str(len(raw))})

    began = time.monotonic()
    answer = asyncio.run(steady())
    assert time.monotonic() - began > TIMEOUT_S
    assert answer.status_code == 200 and "wip" in answer.json()["ignored"], answer.text


# -- 4. a reused delivery id -----------------------------------------------------------------


def test_a_reused_delivery_id_with_another_body_is_refused(served: dict[str, Any]):
    server, home, sha = served["server"], served["home"], served["sha"]
    first = kit.about_repo(kit.github_pr(sha, number=41), VALID)
    other = kit.about_repo(kit.github_pr(sha, number=42), VALID)
    assert server.post("github", first, event="pull_request", delivery="reused-1").json() == {
        "delivery": "reused-1", "accepted": True, "duplicate": False}
    # A redelivery (the same body byte for byte) stays an idempotent 202.
    again = server.post("github", first, event="pull_request", delivery="reused-1")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    refused = server.post("github", other, event="pull_request", delivery="reused-1")
    assert refused.status_code == 409, refused.text
    reason = refused.json()["error"]
    assert "reused-1" in reason and "another body" in reason and "\n" not in reason
    (row,) = _deliveries(home, "delivery_id = 'reused-1'")
    assert row["pr"] == 41 and len(row["body_sha256"]) == 64
    assert ("delivery reused-1 (github pull_request, Codertocat/Hello-World, pull request 42"
            in server.output() and ": refused (409): " in server.output())

    # At once: ten bodies under one new id; one is stored, nine are refused.
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{kit.LOOPBACK}:{server.port}",
                                     timeout=30) as client:
            bodies = [json.dumps(kit.about_repo(kit.github_pr(sha, number=50 + i), VALID))
                      .encode() for i in range(10)]
            return await asyncio.gather(*(
                client.post("/hooks/github", content=body,
                            headers=kit.signed("github", body, event="pull_request",
                                               delivery="reused-2"))
                for body in bodies))

    codes = sorted(a.status_code for a in asyncio.run(burst()))
    assert codes == [202] + [409] * 9
    assert len(_deliveries(home, "delivery_id = 'reused-2'")) == 1


# -- 5. a changed clone_url ------------------------------------------------------------------


@pytest.fixture
def two_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("CI_RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return (make_repo(tmp_path / "old", {"README": "old\n"}),
            make_repo(tmp_path / "new", {"README": "new\n"}))


def test_a_changed_clone_url_makes_the_mirror_afresh(two_sources: tuple[Path, Path],
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture):
    old, new = two_sources
    only_old = git(old, "rev-parse", "HEAD")
    only_new = git(new, "rev-parse", "HEAD")
    mirror = ensure_mirror(mirror_path("github", "octo/moved"))
    fetch(mirror, str(old), only_old, into="refs/ci-runner/heads/main")
    running = tmp_path / "wt-running"
    fork(mirror, only_old, running)  # a run still going from the old URL
    recorded = (mirror.root / "ci-runner-clone-url").read_text()
    assert recorded.strip() == hashlib.sha256(str(old).encode()).hexdigest()
    config = (mirror.root / "config").read_bytes()
    assert not reset_foreign_config(mirror.root)  # the record is no foreign setting

    with caplog.at_level(logging.WARNING, logger="ci_runner.workspace"):
        fetch(mirror, str(new), only_new, into="refs/ci-runner/heads/main")
    changed = [r for r in caplog.records if "clone_url" in r.getMessage()]
    assert len(changed) == 1 and str(new) in changed[0].getMessage()
    assert has_commit(mirror, only_new)
    # Nothing of the old URL is served for the new one: the commit is gone, and fetching
    # it from the new URL (which never had it) fails instead of finding it in the mirror.
    assert not has_commit(mirror, only_old)
    with pytest.raises(WorkspaceError, match="could not fetch"):
        fetch(mirror, str(new), only_old, into="refs/ci-runner/heads/other")
    # The run still going keeps its files (not git) and is removed as usual; new runs fork.
    assert (running / "README").read_text() == "old\n"
    remove(mirror, running)
    assert not running.exists()
    fresh = tmp_path / "wt-new"
    fork(mirror, only_new, fresh)
    assert (fresh / "README").read_text() == "new\n"
    remove(mirror, fresh)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ci_runner.workspace"):
        fetch(mirror, str(new), only_new, into="refs/ci-runner/heads/main")
    assert not caplog.records  # the same URL: nothing made afresh, nothing logged
    # The fresh mirror's config is what ci-runner writes, the same as before.
    assert (mirror.root / "config").read_bytes() == config
    left = [p.name for p in mirror.root.parent.iterdir()]
    assert left == ["moved.git"]  # no fresh or retired copy left behind
    # A record that is not a plain file is trusted no more than another URL's.
    record = mirror.root / "ci-runner-clone-url"
    record.unlink()
    record.symlink_to(tmp_path / "elsewhere")
    assert follow_clone_url(mirror.root, str(new))
    assert not record.is_symlink() and not has_commit(mirror, only_new)


def test_a_server_started_with_a_new_clone_url_fetches_only_from_it(tmp_path: Path):
    old = make_repo(tmp_path / "old", {".ci/pipeline.py": PIPELINE})
    new = make_repo(tmp_path / "new", {".ci/pipeline.py": PIPELINE + "\n# moved\n"})
    only_old, only_new = git(old, "rev-parse", "HEAD"), git(new, "rev-parse", "HEAD")
    home = tmp_path / "home"
    for clone_url, sha, delivery in ((old, only_old, "before-move"),
                                     (new, only_new, "after-move")):
        config = kit.write_config(tmp_path / "ci-runner.yml",
                                  [kit.repo_entry("github", VALID, clone_url)])
        server = kit.Server(config, home)
        try:
            server.start()
            answer = server.post("github", kit.github_push(sha), event="push", delivery=delivery)
            assert answer.status_code == 202, answer.text
            kit.wait_for(lambda d=delivery: [r for r in kit.runs(home)
                                             if r["meta"].get("delivery") == d
                                             and r["status"] == "complete"],
                         timeout=60, what=f"the run of {delivery}")
            if delivery == "after-move":
                # A push of the old URL's commit: the new URL does not have it.
                stale = server.post("github", kit.github_push(only_old), event="push",
                                    delivery="old-commit-after-move")
                assert stale.status_code == 202
                kit.wait_for(lambda s=server: f"could not fetch {only_old[:12]}" in s.output(),
                             timeout=30, what="the old commit's fetch to fail")
        finally:
            server.stop()
            server.close()
    assert server.output().count("the clone_url of the mirror") == 1
    assert not [r for r in kit.runs(home) if r["meta"].get("delivery") == "old-commit-after-move"]


# -- 6. /health when the database cannot be written ------------------------------------------


@pytest.fixture
def health_server(tmp_path: Path) -> Iterator[kit.Server]:
    source = make_repo(tmp_path / "source", {".ci/pipeline.py": PIPELINE})
    config = kit.write_config(tmp_path / "ci-runner.yml",
                              [kit.repo_entry("github", VALID, source, branches=["main"])])
    server = kit.Server(config, tmp_path / "home")
    try:
        yield server.start()
    finally:
        server.stop()
        server.close()


def _health(server: kit.Server) -> httpx.Response:
    return server.http.get("/health", timeout=10)


def test_health_is_degraded_while_another_writer_holds_the_database(
        health_server: kit.Server):
    """Held by a writer that does not let go (BEGIN EXCLUSIVE from the test): degraded,
    within the probe's 2 s wait; ok again once it lets go."""
    server = health_server
    assert _health(server).json()["status"] == "ok"
    holder = sqlite3.connect(server.home / "ci-runner.db", timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        answer = kit.wait_for(lambda: (a := _health(server)).status_code == 503 and a,
                              timeout=10, what="/health to say degraded")
        assert time.monotonic() - began < 6
        assert answer.json()["status"] == "degraded"
        assert "locked" in answer.json()["reason"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    kit.wait_for(lambda: _health(server).status_code == 200, timeout=10,
                 what="/health to be ok again")


def test_health_is_degraded_while_the_database_cannot_be_written(
        health_server: kit.Server, tmp_path: Path):
    """The server may write no byte past the start of a file (RLIMIT_FSIZE, set on its
    process from outside; what a full disk does to a write): /health says degraded with
    the reason and deliveries get 503, not 2xx; with the limit lifted, both recover.

    Why this and not a read-only file: as root, permissions do not stop a write, and
    `chattr +i` needs a file system that has it; a lowered RLIMIT_FSIZE fails every
    write that would extend the WAL, as a full disk does, for the server alone."""
    server = health_server
    assert server.proc is not None
    sha = git(tmp_path / "source", "rev-parse", "HEAD")
    assert _health(server).status_code == 200
    pid = server.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        answer = kit.wait_for(lambda: (a := _health(server)).status_code == 503 and a,
                              timeout=10, what="/health to say degraded")
        assert answer.json()["status"] == "degraded"
        assert "cannot be written" in answer.json()["reason"]
        refused = server.post("github", kit.github_push(sha, branch="main"), event="push",
                              delivery="full-1")
        assert refused.status_code == 503, refused.text
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    kit.wait_for(lambda: _health(server).status_code == 200, timeout=10,
                 what="/health to be ok again")
    again = server.post("github", kit.github_push(sha, branch="main"), event="push",
                        delivery="full-1")
    assert again.status_code == 202 and again.json()["duplicate"] is False
    assert len(kit.rows(server.home, "SELECT id FROM deliveries")) == 1
