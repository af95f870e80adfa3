"""A run that never ends is stopped: `--timeout` (the server's `run_timeout`) or the
pipeline's own `timeout` ends it as failed, its processes with it; a wait for an
approval does not count against it. Bounded: every timeout here is a second or two."""

from __future__ import annotations

import time
from pathlib import Path

from tests.gitrepos import make_repo

HANGS = '''
import asyncio
from ci_runner import Pipeline

class CI(Pipeline):
    timeout = __TIMEOUT__

    async def run(self, event, step):
        await step.run("first", ["true"])
        if event.payload.get("where") == "python":
            while True:  # run() never returns, and no step runs
                await asyncio.sleep(0.05)
        await step.run("hang", ["sleep", "30"], timeout="5 minutes")
'''


def _pipeline(timeout: str) -> str:
    return HANGS.replace("__TIMEOUT__", timeout)


def _sleepers() -> int:
    found = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == b"sleep\x0030\x00":
                found += 1
        except OSError:
            pass
    return found


def test_timeout_flag_stops_a_run_that_never_ends(cli, tmp_path):
    repo = make_repo(tmp_path / "p", {".ci/pipeline.py": _pipeline("None")})
    for where in ("python", "step"):
        t0 = time.monotonic()
        done = cli("run", "-C", str(repo), "--json", "--timeout", "1.5",
                   "--param", f"where={where}", timeout=60)
        assert done.code == 1, done.out + done.err
        record = done.json()
        assert record["status"] == "failed"
        assert record["error"]["type"] == "RunTimeout"
        assert "timed out after 1.5s" in record["error"]["message"]
        assert time.monotonic() - t0 < 30  # not the 5-minute step timeout, nor forever
    deadline = time.monotonic() + 10
    while _sleepers():
        assert time.monotonic() < deadline, "the timed-out run's step outlived it"
        time.sleep(0.05)


def test_a_pipelines_own_timeout_can_only_shorten_the_runs(cli, tmp_path):
    repo = make_repo(tmp_path / "p", {".ci/pipeline.py": _pipeline("'1 second'")})
    done = cli("run", "-C", str(repo), "--json", "--timeout", "1 hour", timeout=60)
    assert done.json()["error"]["message"].startswith("the run timed out after 1s")
    longer = make_repo(tmp_path / "q", {".ci/pipeline.py": _pipeline("'1 hour'")})
    done = cli("run", "-C", str(longer), "--json", "--timeout", "1", timeout=60)
    assert done.json()["error"]["message"].startswith("the run timed out after 1s")
