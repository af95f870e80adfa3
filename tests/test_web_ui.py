"""`ci-runner ui`: the web view of this machine's runs, on 127.0.0.1, with no sign-in.
The real command in a subprocess, a run started by the real CLI, and HTTP as a browser
sends it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import serverkit as kit
from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV
from tests.test_approvals import GATED, ledger


@pytest.fixture
def ui(home: Path, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Starts `ci-runner ui` on a free port (once asked); its base URL."""
    started: list[subprocess.Popen[bytes]] = []
    port = kit.free_port()

    def start() -> str:
        env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
               "PYTHONPATH": str(ROOT), "LEDGER": str(tmp_path / "ledger")}
        out = (tmp_path / "ui.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "ci_runner", "ui", "--port", str(port)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        out.close()
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "ui.log").read_text())
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        kit.wait_for(up, timeout=30, what="ci-runner ui to answer")
        return url

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _waiting_run(cli, repo_with, tmp_path: Path) -> str:
    first = cli("run", cwd=repo_with(GATED), env={"LEDGER": str(tmp_path / "ledger")})
    assert first.code == 3, first.err
    return str(cli("pending", "--json").json()[0]["run_id"])


def test_the_ui_shows_local_runs_and_approves_without_a_sign_in(cli, repo_with, ui,
                                                                 tmp_path: Path):
    run_id = _waiting_run(cli, repo_with, tmp_path)
    url = ui()
    with httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as browser:
        listing = browser.get("/runs")
        assert listing.status_code == 200
        assert run_id in listing.text and "waiting for approval" in listing.text
        assert "Sign out" not in listing.text and "/deliveries" not in listing.text
        page = browser.get(f"/runs/{run_id}")
        assert page.status_code == 200 and 'class="approve"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        evil = browser.post(f"/runs/{run_id}/approve", data={"csrf": csrf.group(1)},
                            headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        done = browser.post(f"/runs/{run_id}/approve",
                            data={"csrf": csrf.group(1), "comment": "from the ui"})
        assert done.status_code == 303
    # The ui starts a driver of its own, as `approve --detach` does.
    record = kit.wait_for(lambda: (r := cli("show", run_id, "--json").json())["status"]
                          == "complete" and r, timeout=60, what="the approved run to finish")
    assert record["approvals"][0]["comment"] == "from the ui"
    assert ledger(tmp_path / "ledger") == ["build", "deploy"]


def test_the_ui_answers_only_to_a_loopback_address(home: Path, ui):
    url = ui()
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert browser.get("/runs", headers={"Host": "localhost"}).status_code == 200
        # A page elsewhere whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
        rebound = browser.get("/runs", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 421 and "127.0.0.1 only" in rebound.text


def test_a_port_in_use_or_out_of_range_is_a_clear_error(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("ui", "--port", str(port), timeout=30)
    assert busy.code == 2 and f"port {port} on 127.0.0.1 is in use" in busy.err
    assert "Traceback" not in busy.err
    wrong = cli("ui", "--port", "70000", timeout=30)
    assert wrong.code == 2 and "--port must be between 0 and 65535" in wrong.err


def test_the_cli_starts_without_the_web_views_libraries():
    code = ("import sys, ci_runner.cli.app; print(' '.join(m for m in ('jinja2', 'fastapi',"
            " 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == ""


REPEATED = """
from ci_runner import Pipeline

print("from the pipeline itself", flush=True)

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("again", ["echo", "first time"])
        await step.run("again", ["echo", "second time"])
"""


def test_each_log_is_its_own_steps_a_repeated_one_and_the_pipelines(cli, repo_with, ui):
    done = cli("run", "--json", cwd=repo_with(REPEATED))
    assert done.code == 0, done.err
    run_id = done.json()["run_id"]
    url = ui()
    with httpx.Client(base_url=url, timeout=30) as browser:
        first = browser.get(f"/runs/{run_id}", params={"step": "again"}).text
        second = browser.get(f"/runs/{run_id}", params={"step": "again#2"}).text
        own = browser.get(f"/runs/{run_id}", params={"step": "pipeline"}).text
        assert "first time" in first and "second time" not in first
        assert "second time" in second and "first time" not in second
        assert "from the pipeline itself" in own
        raw = browser.get(f"/runs/{run_id}/log/again%232")
        assert raw.status_code == 200 and "second time" in raw.text
        assert browser.get(f"/runs/{run_id}/log/nope").status_code == 404
