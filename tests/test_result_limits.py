"""A step's result is bounded (1 MiB of JSON), whoever sends it, and listings never load
step results: a run's size cannot make `runs` or `/api/runs` expensive."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.gitrepos import make_repo

BIG = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        how = event.payload["how"]
        if how == "step":
            await step.do("big", lambda: "x" * (2 << 20))
        elif how == "pipe":  # past the Step, straight to the driver
            step._step.host.request("complete", name="big", occurrence=1,
                                    result="x" * (2 << 20), begun={"kind": "do", "at": 0.0})
        elif how == "flood":  # one message far past anything a pipeline sends
            step._step.host.notify("output", name="x", occurrence=1, text="y" * (20 << 20))
            await step.do("after", lambda: 1)
        else:  # results just under the limit, for the listing
            for i in range(8):
                await step.do(f"r{i}", lambda: "z" * (900 << 10))
'''


def test_a_step_result_over_the_limit_fails_the_step_naming_the_limit(cli, home, tmp_path):
    repo = make_repo(tmp_path / "big", {".ci/pipeline.py": BIG})
    for how, expected in (("step", "is limited to 1 MiB"), ("pipe", "is limited to 1 MiB"),
                          ("flood", "sent a message over 8 MiB")):
        done = cli("run", "-C", str(repo), "--json", "--param", f"how={how}")
        assert done.code in (1, 2), done.out
        record = done.json()
        assert record["status"] == "failed"
        assert expected in record["error"]["message"], record["error"]
    with sqlite3.connect(home / "ci-runner.db") as db:
        (largest,) = db.execute("SELECT max(length(result)) FROM steps").fetchone()
    assert (largest or 0) < 1 << 20  # nothing over the limit was stored


def _listing_peak_kib(home: Path) -> int:
    """Peak RSS of one `ci-runner runs --json`, measured by a parent of its own."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True,"
             " stdout=subprocess.DEVNULL); print(resource.getrusage("
             "resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "ci_runner", "runs", "--all",
         "--json"],
        env={**os.environ, "CI_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True, timeout=60)
    return int(done.stdout.strip())


def test_listing_runs_does_not_load_step_results(cli, home, tmp_path):
    repo = make_repo(tmp_path / "big", {".ci/pipeline.py": BIG})
    assert cli("run", "-C", str(repo), "--param", "how=none").code in (0, 1)
    small = _listing_peak_kib(home)
    done = cli("run", "-C", str(repo), "--json", "--param", "how=list")
    assert done.code == 0
    # A result from before the limit existed: 64 MiB in one row.
    with sqlite3.connect(home / "ci-runner.db") as db:
        db.execute("UPDATE steps SET result = ? WHERE instance_id = ? AND name = 'r0'",
                   (json.dumps("z" * (64 << 20)), done.json()["run_id"]))
    listed = cli("runs", "--json").json()
    assert len(listed) == 2 and all(s["status"] == "complete" for s in listed[0]["steps"])
    grown = _listing_peak_kib(home) - small
    assert grown < 16 * 1024, f"listing runs with a 64 MiB result took {grown} KiB more"
    assert json.dumps(listed).count("zzzz") == 0
