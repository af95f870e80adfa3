"""The PostgreSQL store on a real server: choosing it (--db, CI_RUNNER_DB, serve's db:),
its one-line refusals, claims that hold each repo's concurrency exactly under
concurrent workers, takeovers fenced by the epoch, logs readable from any home, and
psycopg kept out of the CLI's start-up."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ci_runner.errors import LeaseLost, UsageError
from ci_runner.store import claims, connect
from ci_runner.store import journal as j
from tests.conftest import ROOT, Result

PIPELINE = """
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("hello", ["echo", "hello from the first host"])
        return await step.do("sum", lambda: 1 + 1)
"""


def test_a_run_on_one_host_shows_its_log_on_another(
        repo_with: Callable[..., Path], cli: Callable[..., Result], pg_url: str,
        tmp_path: Path) -> None:
    repo = repo_with(PIPELINE)
    ran = cli("--db", pg_url, "run", "--json", cwd=repo)
    assert ran.code == 0, ran.err
    run_id = ran.json()["run_id"]
    other = {"CI_RUNNER_HOME": str(tmp_path / "other-host"), "CI_RUNNER_DB": pg_url}
    logs = cli("logs", run_id, "hello", env=other)
    assert logs.code == 0, logs.err
    assert "hello from the first host" in logs.out
    listed = cli("runs", "--all", env=other)
    assert run_id in listed.out and "complete" in listed.out
    # Nothing of it is in the first home's SQLite file: the database was PostgreSQL.
    assert not (tmp_path / "home" / "ci-runner.db").exists()


@pytest.mark.parametrize(("db", "says"), [
    ("postgresql://nobody@/nothing?host=/nonexistent", "cannot reach the database at"),
    ("postgresql://nobody@127.0.0.1:1/nothing", "cannot reach the database at"),
    ("postgresql://x@[broken", "bad database URL"),
    ("mysql://x@y/z", "mysql:// is not a database ci-runner opens"),
])
def test_a_database_that_cannot_be_used_is_one_line(cli: Callable[..., Result], db: str,
                                                    says: str) -> None:
    for args, env in ((("--db", db, "runs", "--all"), {}),
                      (("runs", "--all"), {"CI_RUNNER_DB": db})):
        result = cli(*args, env=env, timeout=60)
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], result.err
        assert "Traceback" not in result.err


def test_serve_config_takes_a_database_url(tmp_path: Path) -> None:
    from ci_runner.server.config import parse_config

    repo = {"name": "o/r", "forge": "github", "clone_url": str(tmp_path),
            "webhook_secret": "s"}
    url = "postgresql://ci@db.example/ci"
    config = parse_config({"server": {"db": url}, "repos": [repo]}, path=tmp_path / "c.yml",
                          environ={})
    assert config.server.db == url
    with pytest.raises(UsageError, match=r"server\.db.*postgresql://"):
        parse_config({"server": {"db": "mysql://x/y"}, "repos": [repo]},
                     path=tmp_path / "c.yml", environ={})


def test_the_cli_never_imports_psycopg_unless_the_database_is_postgresql(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI_RUNNER_HOME": str(tmp_path)}
    env.pop("CI_RUNNER_DB", None)
    for args in (["--help"], ["runs", "--all"]):
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ci_runner", *args],
                             env=env, capture_output=True, text=True, timeout=60,
                             check=False, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        imported = [line for line in out.stderr.splitlines() if "import time:" in line]
        assert imported, "importtime printed nothing"
        assert not [line for line in imported if "psycopg" in line], args


def _queue(conn: Any, tenant: str, count: int) -> list[str]:
    ids = [f"{tenant}-{i:03d}" for i in range(count)]
    for run_id in ids:
        j.create_instance(conn, instance_id=run_id, tenant=tenant, workflow="w:W", payload={})
    return ids


def test_concurrent_claims_never_exceed_a_repos_slots(pg_url: str) -> None:
    """Eight workers claim at the same instant, round after round, while runs end at
    random: a repo with one slot never has two runs going, one with two never three;
    one without slots is not held back; every run is taken exactly once."""
    setup = connect(pg_url)
    claims.set_limits(setup, {"one": 1, "two": 2})
    queued = {*_queue(setup, "one", 12), *_queue(setup, "two", 12), *_queue(setup, "free", 6)}
    workers = [connect(pg_url) for _ in range(8)]
    barrier = threading.Barrier(len(workers))
    limits = {"one": 1, "two": 2, "free": 6}
    running: dict[str, claims.Claim] = {}
    taken_ever: list[str] = []
    rng = random.Random(7)
    for _round in range(200):
        if len(taken_ever) == len(queued):
            break
        got: list[claims.Claim] = []
        lock = threading.Lock()

        def claim_now(conn: Any, index: int, got: list[claims.Claim],
                      lock: threading.Lock) -> None:
            barrier.wait()
            mine = claims.claim(conn, owner=f"host{index}:1:1", ttl_s=60, limit=2)
            with lock:
                got.extend(mine)

        threads = [threading.Thread(target=claim_now, args=(c, i, got, lock))
                   for i, c in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for c in got:
            assert c.run_id not in running, c
            running[c.run_id] = c
            taken_ever.append(c.run_id)
        for tenant, limit in limits.items():
            going = [c for c in running.values() if c.tenant == tenant]
            assert len(going) <= limit, (tenant, going)
        # Some runs end; their slots free up for the next round.
        for c in list(running.values()):
            if rng.random() < 0.5:
                j.Journal(setup, c.run_id, c.epoch).finish("complete", output=None)
                del running[c.run_id]
    assert sorted(taken_ever) == sorted(queued)  # each run claimed once, none left
    for conn in (setup, *workers):
        conn.close()


def test_an_expired_claim_is_taken_over_and_its_holder_fenced(pg_url: str) -> None:
    conn = connect(pg_url)
    claims.set_limits(conn, {"t": 1})
    run_id, _waiting = _queue(conn, "t", 2)  # the second waits for the first one's slot
    (first,) = claims.claim(conn, owner="dead:1:1", ttl_s=60, limit=2)
    assert first.run_id == run_id
    assert claims.claim(conn, owner="other:1:1", ttl_s=60, limit=2) == []
    # The holder goes silent: its lease runs out on the database's clock.
    conn.execute("UPDATE instances SET lease_expires_at = ? WHERE id = ?",
                 (j.clock(conn) - 1, run_id))
    (second,) = claims.claim(conn, owner="other:1:1", ttl_s=60, limit=2)
    assert second.run_id == run_id and second.epoch == first.epoch + 1
    with pytest.raises(LeaseLost):
        j.Journal(conn, run_id, first.epoch).begin("s", 1, "do")
    conn.close()


def test_prune_forgets_a_runs_logs_in_the_database(
        repo_with: Callable[..., Path], cli: Callable[..., Result], pg_url: str) -> None:
    repo = repo_with(PIPELINE)
    run_id = cli("--db", pg_url, "run", "--json", cwd=repo).json()["run_id"]
    conn = connect(pg_url)
    assert conn.execute("SELECT count(*) FROM step_logs WHERE instance_id = ?",
                        (run_id,)).fetchone()[0] > 0
    conn.execute("UPDATE instances SET updated_at = updated_at - 86400 * 10")
    pruned = cli("--db", pg_url, "prune", "--older-than", "1 day")
    assert pruned.code == 0, pruned.err
    assert conn.execute("SELECT count(*) FROM step_logs WHERE instance_id = ?",
                        (run_id,)).fetchone()[0] == 0
    conn.close()


def test_a_connection_the_server_dropped_is_opened_again_between_transactions(
        pg_url: str) -> None:
    import psycopg

    from ci_runner.store.db import immediate, storage_failure

    conn = connect(pg_url)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # The next statement notices the dead connection, fails, and the one after it (no
    # transaction under way) gets a new one; a transaction is never silently resumed.
    with pytest.raises(psycopg.OperationalError) as lost:
        conn.execute("SELECT 1")
    assert storage_failure(lost.value)
    with immediate(conn):
        assert conn.execute("SELECT ?", (7,)).fetchone()[0] == 7
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    conn.close()


def test_the_web_views_log_tail_reads_a_fleets_logs_from_the_database(
        pg_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log another host wrote (nothing of it on this disk) tails as it grows."""
    from ci_runner import paths
    from ci_runner.server import live
    from ci_runner.store import steplogs

    monkeypatch.setenv("CI_RUNNER_DB", pg_url)
    conn = connect(pg_url)
    path = paths.step_log("run-1", "test", 1)
    assert live.log_size(path) is None
    steplogs.append(conn, "run-1", path.name, b"\x1b[32mok\x1b[0m 1\n")
    tail = live.LogTail(path)
    assert tail.grown()
    first = tail.read()
    assert first is not None and "ok" in first[0] and "<span" in first[0]
    assert not tail.grown() and tail.read() is None
    steplogs.append(conn, "run-1", path.name, b"ok 2\n")
    second = tail.read(final=True)
    assert second is not None and "ok 2" in second[0]
    assert not path.exists()
    conn.close()
