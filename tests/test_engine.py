"""The durable engine on each store (a real SQLite file, a real PostgreSQL database): replay,
retries, events, sleeps, leases, crashes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ci_runner.engine.driver import Engine
from ci_runner.errors import InvalidState, LeaseLost
from ci_runner.store import journal as j
from tests import workflows as wf
from tests.conftest import ROOT
from tests.procs import alive

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def engine(db_target: str):
    e = Engine(db_target)
    yield e
    e.close()


@pytest.fixture
def led(tmp_path: Path) -> Path:
    return tmp_path / "ledger.txt"


def steps(engine: Engine, iid: str) -> dict[str, sqlite3.Row]:
    return {r["name"]: r for r in j.steps_of(engine.conn, iid)}


def drive(engine: Engine, iid: str) -> str:
    return engine.drive(iid, env=ENV, cwd=ROOT)


@pytest.mark.parametrize("in_process", [True, False])
def test_completed_steps_replay_without_running_again(engine: Engine, led: Path,
                                                      in_process: bool) -> None:
    iid = engine.create(wf.Sequence, {"ledger": str(led), "steps": 3})
    kw = {"workflow": wf.Sequence} if in_process else {"env": ENV, "cwd": ROOT}
    assert engine.drive(iid, **kw) == "complete"
    assert json.loads(engine.get(iid)["output"]) == [0, 1, 4]
    # Force the instance back to running, as after a crash, and replay it.
    engine.conn.execute("UPDATE instances SET status = 'queued' WHERE id = ?", (iid,))
    assert engine.drive(iid, **kw) == "complete"
    assert wf.ledger(led) == ["s0", "s1", "s2"]
    assert all(r["attempts"] == 1 for r in steps(engine, iid).values())


def test_retries_count_attempts_then_succeed(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Flaky, {"ledger": str(led), "fail_times": 2})
    assert engine.drive(iid, workflow=wf.Flaky) == "complete"
    row = steps(engine, iid)["flaky"]
    assert (row["status"], row["attempts"]) == ("complete", 3)
    assert wf.ledger(led) == ["flaky"] * 3


def test_non_retryable_error_fails_at_once(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Fatal, {"ledger": str(led)})
    assert engine.drive(iid, workflow=wf.Fatal) == "errored"
    row = steps(engine, iid)["fatal"]
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert json.loads(engine.get(iid)["error"])["type"] == "NonRetryableError"


def test_failed_step_replays_its_error_without_running(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.CatchFailure, {"ledger": str(led)})
    assert engine.drive(iid, workflow=wf.CatchFailure) == "waiting_for_event"
    engine.send_event(iid, "go", {})
    assert engine.drive(iid, workflow=wf.CatchFailure) == "complete"
    assert json.loads(engine.get(iid)["output"]) == "StepFailed:bad value"
    assert wf.ledger(led) == ["boom"]


def test_event_sent_before_the_wait_is_delivered(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Waiter, {"ledger": str(led)})
    engine.send_event(iid, "approval", {"by": "alice"})
    assert drive(engine, iid) == "complete"
    assert json.loads(engine.get(iid)["output"]) == {"by": "alice"}


def test_wait_for_event_hibernates_and_resumes_once(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Waiter, {"ledger": str(led)})
    assert drive(engine, iid) == "waiting_for_event"
    row = engine.get(iid)
    assert row["owner"] is None and row["wake_at"] is not None
    assert json.loads(row["waiting_for"])[0]["event_type"] == "approval"
    assert drive(engine, iid) == "waiting_for_event"  # woken early: still waiting
    engine.send_event(iid, "approval", {"ok": True})
    assert drive(engine, iid) == "complete"
    assert wf.ledger(led) == ["before", "after"]
    events = engine.conn.execute("SELECT consumed_by FROM events").fetchall()
    assert [e[0] for e in events] == ["approval"]


def test_long_sleep_hibernates_with_its_wake_time(db_target: str, led: Path) -> None:
    with Engine(db_target, inline_sleep_max_s=0.5) as engine:
        iid = engine.create(wf.LongSleep, {"ledger": str(led), "nap": 1.5})
        before = time.time()
        assert engine.drive(iid, workflow=wf.LongSleep) == "waiting"
        wake_at = engine.get(iid)["wake_at"]
        assert before + 1.0 < wake_at < time.time() + 1.6
        assert engine.drive(iid, workflow=wf.LongSleep) == "waiting"  # woken too early
        # Woken later: the remaining sleep is short, so it is slept inline.
        time.sleep(max(0.0, wake_at - 0.3 - time.time()))
        assert engine.drive(iid, workflow=wf.LongSleep) == "complete"
        assert time.time() >= wake_at
        assert wf.ledger(led) == ["before", "after"]


def test_parallel_steps_and_repeated_names(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Parallel, {"ledger": str(led)})
    assert engine.drive(iid, workflow=wf.Parallel) == "complete"
    assert json.loads(engine.get(iid)["output"]) == [0, 1, 2, 3, 1, 2]
    names = sorted((r["name"], r["occurrence"]) for r in j.steps_of(engine.conn, iid))
    assert names == [("item", 1), ("item", 2), ("item", 3), ("item", 4), ("x", 1), ("y", 1)]


def test_steps_begun_ahead_are_journaled_in_the_order_they_began(
    engine: Engine, led: Path
) -> None:
    """The pipeline process does not wait for a new step's begin to be written; the
    driver writes it later or with the result. Steps finishing in reverse order must
    still be journaled (sequence numbers) in the order they began, each attempted once."""
    iid = engine.create(wf.Staggered, {"ledger": str(led)})
    assert drive(engine, iid) == "complete"
    assert wf.ledger(led) == ["z2", "z1", "z0"]
    rows = j.steps_of(engine.conn, iid)  # ordered by seq
    assert [r["name"] for r in rows] == ["z0", "z1", "z2", "last"]
    assert all(r["status"] == "complete" and r["attempts"] == 1 for r in rows)
    assert all(r["started_at"] <= r["finished_at"] for r in rows)
    # z0 ran 0.3 s: its recorded duration is its own, from when it began.
    assert steps(engine, iid)["z0"]["duration_s"] >= 0.29


def test_pause_of_a_live_run_stops_before_its_next_step(engine: Engine, led: Path) -> None:
    """A pause asked for while a step runs takes effect at the next step boundary, even
    though new steps normally begin without asking the driver."""
    iid = engine.create(wf.Gated, {"ledger": str(led)})
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ci_runner.engine.driver import Engine; "
         "print(Engine(sys.argv[1]).drive(sys.argv[2]))", str(engine.db_path), iid],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 30
    while wf.ledger(led) != ["held"]:
        assert time.time() < deadline and driver.poll() is None
        time.sleep(0.02)
    j.request_pause(engine.conn, iid)
    Path(str(led) + ".release").touch()
    out, _ = driver.communicate(timeout=30)
    assert out.strip() == "paused"
    assert wf.ledger(led) == ["held"]
    assert [r["name"] for r in j.steps_of(engine.conn, iid)] == ["hold"]

    j.unpause(engine.conn, iid)
    assert drive(engine, iid) == "complete"
    assert wf.ledger(led) == ["held", "next", "last"]


def test_plain_def_run_with_parallel(engine: Engine) -> None:
    iid = engine.create(wf.SyncRun, {})
    assert drive(engine, iid) == "complete"
    assert json.loads(engine.get(iid)["output"]) == 6


def test_changed_code_is_a_nondeterminism_error(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Sequence, {"ledger": str(led), "steps": 1})
    assert engine.drive(iid, workflow=wf.Sequence) == "complete"
    engine.conn.execute("UPDATE instances SET status = 'queued' WHERE id = ?", (iid,))
    assert engine.drive(iid, workflow=wf.Changed) == "errored"
    error = json.loads(engine.get(iid)["error"])
    assert error["type"] == "NondeterminismError"
    assert "recorded as a do step" in error["message"]


def test_non_json_result_fails_the_step_clearly(engine: Engine) -> None:
    iid = engine.create(wf.NotJson, {})
    assert engine.drive(iid, workflow=wf.NotJson) == "errored"
    assert "not JSON-serialisable" in json.loads(engine.get(iid)["error"])["message"]


def test_pipeline_process_crash_leaves_the_engine_unharmed(engine: Engine, led: Path) -> None:
    iid = engine.create(wf.Crash, {})
    assert drive(engine, iid) == "errored"
    error = json.loads(engine.get(iid)["error"])
    assert error["type"] == "PipelineCrashed" and "code 7" in error["message"]
    assert steps(engine, iid)["die"]["status"] == "failed"
    other = engine.create(wf.Sequence, {"ledger": str(led), "steps": 2})
    assert drive(engine, other) == "complete"


def test_a_replaced_driver_can_no_longer_commit(engine: Engine, tmp_path: Path) -> None:
    iid = engine.create(wf.Sequence, {"ledger": str(tmp_path / "l"), "steps": 1})
    epoch = j.acquire_lease(engine.conn, iid, owner=engine.owner, ttl_s=60, owner_dead=False)
    stale = j.Journal(engine.conn, iid, epoch)
    with pytest.raises(InvalidState, match="not taken over while its owner is alive"):
        j.acquire_lease(engine.conn, iid, owner="b:2:2", ttl_s=60, owner_dead=False)
    j.acquire_lease(engine.conn, iid, owner="b:2:2", ttl_s=60, owner_dead=True)
    with pytest.raises(LeaseLost):
        stale.begin("s0", 1, "do")
    assert j.steps_of(engine.conn, iid) == []


def test_killed_driver_resumes_from_last_committed_step(engine: Engine, led: Path) -> None:
    """SIGKILL the driving process mid-step; its child dies with it; a new driver resumes."""
    iid = engine.create(wf.Sequence, {"ledger": str(led), "steps": 4, "hang_at": 2})
    code = ("import sys; from ci_runner.engine.driver import Engine; "
            "Engine(sys.argv[1]).drive(sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(engine.db_path), iid],
                            env=ENV, cwd=ROOT)
    deadline = time.time() + 30
    while wf.ledger(led) != ["s0", "s1", "s2"]:
        assert time.time() < deadline, wf.ledger(led)
        time.sleep(0.02)
    # A first attempt starts before its begin is written (deferred.py): killed in that
    # moment, it would not be counted. Wait for the journal to have it.
    while "s2" not in steps(engine, iid) or steps(engine, iid)["s2"]["status"] != "running":
        assert time.time() < deadline, steps(engine, iid)
        time.sleep(0.02)
    children = _children(proc.pid)
    assert children, "the pipeline runs in a child process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_gone(children)
    Path(str(led) + ".release").touch()
    assert drive(engine, iid) == "complete"
    assert wf.ledger(led) == ["s0", "s1", "s2", "s2", "s3"]
    rows = steps(engine, iid)
    assert rows["s2"]["attempts"] == 2
    assert [rows[f"s{i}"]["attempts"] for i in (0, 1, 3)] == [1, 1, 1]
    if not str(engine.db_path).startswith("postgresql://"):
        assert engine.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _wait_gone(pids: list[int]) -> None:
    deadline = time.time() + 10
    for pid in pids:
        while alive(pid):
            assert time.time() < deadline, f"child {pid} outlived its driver"
            time.sleep(0.02)
