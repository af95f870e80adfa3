"""Many hosts, one PostgreSQL: `serve --no-workers` takes the webhooks in, `ci-runner worker`
processes with homes of their own (as on three machines) drive the runs, one of them
is killed with SIGKILL (its whole process group, as a machine dies) in the middle of
a step. Every run completes exactly once, only the killed in-flight step runs twice,
no repo ever has two runs going at once (concurrency: 1), and the log of a run the
dead worker drove reads from another home."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests import serverkit as kit
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV, make_repo

RUNS_PER_REPO = 20
REPOS = ("acme/one", "acme/two", "acme/three")
LEASE_TTL_S = 3
DEADLINE_S = 300

PIPELINE = """
import json, os, time
from ci_runner import Pipeline

LEDGER = os.environ["FLEET_LEDGER"]


def note(run, name, what):
    with open(LEDGER, "a") as f:
        f.write(json.dumps({"run": run, "step": name, "what": what, "at": time.time(),
                            "worker": os.environ["FLEET_WORKER"], "pid": os.getpid()}) + "\\n")


class CI(Pipeline):
    async def run(self, event, step):
        run = event.instance_id

        def timed(name, seconds):
            def body():
                note(run, name, "start")
                time.sleep(seconds)
                note(run, name, "end")
                return name
            return body

        await step.do("prepare", timed("prepare", 0.05))
        await step.run("say", ["echo", "hello from " + run])
        await step.do("work", timed("work", 0.4))
        return {"done": run}
"""


@pytest.mark.slow
def test_three_workers_share_one_postgres_and_survive_a_killed_host(
        tmp_path: Path, pg_url: str) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.touch()
    repos = {name: make_repo(tmp_path / name.replace("/", "-"), {".ci/pipeline.py": PIPELINE})
             for name in REPOS}
    shas = {name: _head(path) for name, path in repos.items()}
    config = kit.write_config(
        tmp_path / "serve.yml",
        [kit.repo_entry("github", name, path, concurrency=1, branches=["*"])
         for name, path in repos.items()], db=pg_url, sandbox="off")
    base_env = {**os.environ, **ISOLATED_GIT_ENV, "PYTHONPATH": str(ROOT),
                "CI_RUNNER_LEASE_TTL_S": str(LEASE_TTL_S), "FLEET_LEDGER": str(ledger)}
    server = kit.Server(config, tmp_path / "serve-home",
                        env={"CI_RUNNER_LEASE_TTL_S": str(LEASE_TTL_S)})
    workers: list[subprocess.Popen[bytes]] = []
    try:
        server.start("--no-workers", timeout=60)
        for i in range(3):
            home = tmp_path / f"host{i}"
            env = {**base_env, "CI_RUNNER_HOME": str(home), "FLEET_WORKER": f"w{i}"}
            db = ["--db", pg_url] if i == 2 else []
            if i != 2:
                env["CI_RUNNER_DB"] = pg_url
            out = (tmp_path / f"worker{i}.log").open("ab")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "ci_runner", *db, "worker", "--concurrency", "2",
                 "--poll", "1"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))
            out.close()
        for n in range(RUNS_PER_REPO):
            for name in REPOS:
                body = kit.about_repo(kit.github_push(shas[name], branch=f"b{n}"), name)
                assert server.post("github", body, event="push").status_code in (200, 202)

        # Kill host 0 while one of its runs is inside its "work" step.
        conn = _connect(pg_url)
        victim = _wait_in_flight(conn, ledger, "w0", time.monotonic() + 120)
        os.killpg(workers[0].pid, signal.SIGKILL)
        killed_at = time.time()
        workers[0].wait()

        kit.wait_for(lambda: _all_complete(conn, len(REPOS) * RUNS_PER_REPO),
                     timeout=DEADLINE_S, what="every run to complete")
        entries = [json.loads(line) for line in ledger.read_text().splitlines()]
        _check_exactly_once(conn, entries, killed_at)
        _check_no_overlap(conn, entries, killed_at)

        # The run the dead host was driving: its log reads from another host's home.
        logs = subprocess.run(
            [sys.executable, "-m", "ci_runner", "logs", victim, "say"], capture_output=True,
            text=True, timeout=60, check=False, env={**base_env, "CI_RUNNER_DB": pg_url,
                                                     "CI_RUNNER_HOME": str(tmp_path / "host9")})
        assert logs.returncode == 0, logs.stderr
        assert f"hello from {victim}" in logs.stdout
        # And from the API of the server in front of the fleet, which drove nothing.
        api = server.api("GET", f"/api/runs/{victim}/logs/say")
        assert api.status_code == 200 and f"hello from {victim}" in api.text, api.text
        assert api.headers["X-Log-Exists"] == "1"
        conn.close()
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.stop()
        server.close()


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True, env={**os.environ, **ISOLATED_GIT_ENV}
                          ).stdout.strip()


def _connect(url: str) -> Any:
    from ci_runner.store import connect

    return connect(url)


def _wait_in_flight(conn: Any, ledger: Path, worker: str, deadline: float) -> str:
    """The run whose "work" step ``worker`` has started and not ended."""
    while time.monotonic() < deadline:
        _all_complete(conn, -1)  # fails at once if a run failed
        open_steps: dict[tuple[str, str], dict[str, Any]] = {}
        for line in ledger.read_text().splitlines():
            entry = json.loads(line)
            key = (entry["run"], entry["step"])
            if entry["what"] == "start" and entry["worker"] == worker:
                open_steps[key] = entry
            elif entry["what"] == "end":
                open_steps.pop(key, None)
        for (run, step), _entry in open_steps.items():
            if step == "work":
                return run
        time.sleep(0.02)
    raise AssertionError(f"worker {worker} never ran a step")


def _all_complete(conn: Any, count: int) -> bool:
    rows = conn.execute("SELECT status, count(*) FROM instances GROUP BY status").fetchall()
    by_status = {str(r[0]): int(r[1]) for r in rows}
    if set(by_status) - {"complete", "queued", "running", "waiting"}:
        raise AssertionError(f"a run ended otherwise: {by_status}")
    return by_status.get("complete", 0) == count


def _check_exactly_once(conn: Any, entries: list[dict[str, Any]], killed_at: float) -> None:
    starts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, str], int] = defaultdict(int)
    for e in entries:
        if e["what"] == "start":
            starts[(e["run"], e["step"])].append(e)
        else:
            ends[(e["run"], e["step"])] += 1
    runs = [str(r[0]) for r in conn.execute("SELECT id FROM instances").fetchall()]
    assert len(runs) == len(REPOS) * RUNS_PER_REPO
    repeated = []
    for run in runs:
        for step in ("prepare", "work"):
            assert ends[(run, step)] == 1, (run, step, starts[(run, step)])
            if len(starts[(run, step)]) > 1:
                repeated.append((run, step, starts[(run, step)]))
    # Only steps the killed host was in the middle of ran again, once each.
    assert repeated, "the killed host's in-flight step ran again"
    for run, step, tries in repeated:
        assert len(tries) == 2, (run, step, tries)
        assert tries[0]["worker"] == "w0" and tries[0]["at"] < killed_at, tries
        assert tries[1]["worker"] != "w0", tries
    # Steps with more than one attempt in the journal (the light step "say" writes no
    # ledger line): only in runs the killed host was driving, one step each.
    in_flight = _in_flight_at_kill(entries, killed_at)
    attempts = conn.execute("SELECT instance_id, name FROM steps WHERE attempts > 1").fetchall()
    again = [str(r[0]) for r in attempts]
    assert set(again) <= in_flight, (again, in_flight)
    assert len(again) == len(set(again)), again


def _in_flight_at_kill(entries: list[dict[str, Any]], killed_at: float) -> set[str]:
    """Runs the killed host had begun and not finished when it died."""
    began = {e["run"] for e in entries if e["worker"] == "w0" and e["at"] < killed_at}
    finished = {e["run"] for e in entries if e["worker"] == "w0" and e["step"] == "work"
                and e["what"] == "end"}
    return began - finished


def _check_no_overlap(conn: Any, entries: list[dict[str, Any]], killed_at: float) -> None:
    """Per repo, the stretches a pipeline process spent in steps of a run never overlap
    another run's: a killed one's lasts until the kill."""
    tenant = {str(r[0]): str(r[1]) for r in conn.execute("SELECT id, tenant FROM instances")}
    spans: dict[tuple[str, int], list[float]] = {}
    runs_of: dict[tuple[str, int], str] = {}
    for e in entries:
        key = (e["run"], e["pid"])
        span = spans.setdefault(key, [e["at"], e["at"]])
        span[0], span[1] = min(span[0], e["at"]), max(span[1], e["at"])
        runs_of[key] = e["run"]
    # A pipeline process killed in the middle of a step ran until the kill.
    unfinished: dict[tuple[str, int], int] = defaultdict(int)
    for e in entries:
        unfinished[(e["run"], e["pid"])] += 1 if e["what"] == "start" else -1
    for key, count in unfinished.items():
        if count > 0:
            spans[key][1] = max(spans[key][1], killed_at)
    by_repo: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for key, (start, end) in spans.items():
        by_repo[tenant[runs_of[key]]].append((start, end, runs_of[key]))
    assert len(by_repo) == len(REPOS)
    for repo, items in by_repo.items():
        items.sort()
        for (s1, e1, r1), (s2, e2, r2) in itertools.pairwise(items):
            assert r1 == r2 or e1 <= s2, f"{repo}: {r1} [{s1}, {e1}] overlaps {r2} [{s2}, {e2}]"
