"""The terminal against a team server, as `gh` works against GitHub: the real CLI in a
subprocess, logged in to the real `ci-runner serve` on loopback (alice approves the
repo, dave approves nothing), acting on the server's runs through its API."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import serverkit as kit
from tests.conftest import ROOT
from tests.terminal import Keys, in_terminal
from tests.webkit import TOKENS, WebServer

CLI_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("remote")
    server = WebServer(root)
    try:
        server.start()
        logins = {}
        for user in ("alice", "dave"):
            logins[user] = root / f"{user}-servers.json"
            done = ci("login", server.url, config=logins[user], stdin=TOKENS[user] + "\n",
                      home=root / "client")
            assert done.returncode == 0, done.stderr
        yield {"server": server, "url": server.url, "logins": logins, "home": root / "client"}
    finally:
        server.close()


def ci(*args: str, config: Path, home: Path, stdin: str = "",
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, with its own home (not the server's) and saved logins."""
    return subprocess.run(
        [sys.executable, "-m", "ci_runner", *args], input=stdin, capture_output=True, check=False,
        text=True, timeout=CLI_TIMEOUT_S, env=_env(config, home, env),
    )


def _env(config: Path, home: Path, more: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "CI_RUNNER_SERVER"}
    return {**base, "CI_RUNNER_CONFIG": str(config), "CI_RUNNER_HOME": str(home),
            "PYTHONPATH": str(ROOT), **(more or {})}


def as_user(team: dict[str, Any], user: str, *args: str,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return ci(*args, "--server", team["url"], config=team["logins"][user], home=team["home"],
              **kwargs)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def api_record(team: dict[str, Any], run_id: str) -> dict[str, Any]:
    answer = team["server"].server.api("GET", f"/api/runs/{run_id}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def step_status(team: dict[str, Any], run_id: str, step: str) -> str | None:
    steps = {s["name"]: s["status"] for s in api_record(team, run_id)["steps"]}
    return steps.get(step)


# -- login -----------------------------------------------------------------------------


def test_login_checks_the_token_and_keeps_it_for_the_user_only(team: dict[str, Any],
                                                               tmp_path: Path) -> None:
    url, home = team["url"], team["home"]
    config = tmp_path / "conf" / "servers.json"
    done = ci("login", url, config=config, home=home, stdin=TOKENS["alice"] + "\n")
    assert done.returncode == 0, done.stderr
    assert f"logged in to {url} as alice" in done.stdout
    assert TOKENS["alice"] not in done.stdout + done.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    assert json.loads(config.read_text())["servers"][url]["token"] == TOKENS["alice"]

    # A token the server refuses is never kept.
    other = tmp_path / "other.json"
    bad = ci("login", url, config=other, home=home, stdin="not-a-token\n")
    assert bad.returncode == 1
    assert "refused the token" in one_line(bad) and "ci-runner login" in one_line(bad)
    assert not other.exists()
    empty = ci("login", url, config=other, home=home, stdin="\n")
    assert empty.returncode == 2 and "no token given" in one_line(empty)

    # Tokens that others may read are not used.
    config.chmod(0o644)
    loose = ci("runs", "--server", url, config=config, home=home)
    assert loose.returncode == 2 and "chmod 600" in one_line(loose)
    config.chmod(0o600)

    # A token revoked since it was kept: log in again, says the one line.
    config.write_text(json.dumps({"servers": {url: {"token": "revoked"}}}))
    revoked = ci("runs", "--server", url, config=config, home=home)
    assert revoked.returncode == 1
    assert f"ci-runner login {url}" in one_line(revoked)

    out = ci("logout", config=config, home=home)
    assert out.returncode == 0 and f"logged out of {url}" in out.stdout
    assert json.loads(config.read_text())["servers"] == {}
    gone = ci("runs", "--server", url, config=config, home=home)
    assert gone.returncode == 2 and "not logged in" in one_line(gone)


def test_plain_http_to_another_host_and_a_server_that_is_down(team: dict[str, Any],
                                                             tmp_path: Path) -> None:
    config, home = tmp_path / "servers.json", team["home"]
    far = ci("login", "http://ci.example.com", config=config, home=home, stdin="t\n")
    assert far.returncode == 2
    assert "https://" in one_line(far) and "--insecure" in one_line(far)
    assert not config.exists()

    # 0.0.0.0 reaches this machine's server, but by a name that is not loopback's: the
    # token would cross a network, so only --insecure lets it, and the login keeps that.
    port = team["server"].server.port
    anywhere = f"http://0.0.0.0:{port}"
    unsafe = ci("login", anywhere, config=config, home=home, stdin=TOKENS["alice"])
    assert unsafe.returncode == 2 and "--insecure" in one_line(unsafe)
    allowed = ci("login", "--insecure", anywhere, config=config, home=home,
                 stdin=TOKENS["alice"])
    assert allowed.returncode == 0, allowed.stderr
    listed = ci("runs", "--json", "--server", anywhere, config=config, home=home)
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    config.unlink()

    down = f"http://{kit.LOOPBACK}:{kit.free_port()}"
    refused = ci("login", down, config=config, home=home, stdin="t\n")
    assert refused.returncode == 1 and "cannot reach the server" in one_line(refused)
    config.write_text(json.dumps({"servers": {down: {"token": "t"}}}))
    config.chmod(0o600)
    for args in (("runs",), ("pending",), ("show", "abc"), ("cancel", "abc")):
        done = ci(*args, config=config, home=home, env={"CI_RUNNER_SERVER": down})
        assert done.returncode == 1, args
        assert f"cannot reach the server at {down}" in one_line(done)


def test_nothing_remote_is_imported_by_local_commands() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ci_runner.cli.app"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "ci_runner.cli.remote" not in done.stderr
    assert "urllib.request" not in done.stderr


# -- runs, show, pending, approve, reject -----------------------------------------------


def test_approve_with_a_comment_records_the_logged_in_user(team: dict[str, Any]) -> None:
    server = team["server"]
    run_id = server.push()
    server.wait_status(run_id, "waiting_for_event")

    listed = as_user(team, "alice", "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert run_id in {r["run_id"] for r in json.loads(listed.stdout)}
    plain = as_user(team, "alice", "runs")
    line = next(x for x in plain.stdout.splitlines() if x.startswith(run_id))
    assert "waiting for approval" in line and "Codertocat/Hello-World" in line
    # dave sees none of the repo's runs.
    assert run_id not in as_user(team, "dave", "runs").stdout

    shown = as_user(team, "alice", "show", run_id[:12])
    assert shown.returncode == 0, shown.stderr
    assert f"run      {run_id}" in shown.stdout
    assert f"waiting for approval at step 'ship' (ship it?): ci-runner approve {run_id}" in (
        shown.stdout)
    assert json.loads(as_user(team, "alice", "show", run_id, "--json").stdout)["run_id"] == run_id

    waiting = as_user(team, "alice", "pending")
    assert waiting.returncode == 0, waiting.stderr
    assert any(x.startswith(run_id) and "step 'ship' waits for approval" in x
               for x in waiting.stdout.splitlines())
    assert run_id in {r["run_id"] for r in json.loads(
        as_user(team, "alice", "pending", "--json").stdout)}

    # A name typed in is refused; so is a user who does not approve the repo.
    typed = as_user(team, "alice", "approve", run_id, "--as", "root")
    assert typed.returncode == 2 and "--as" in one_line(typed)
    refused = as_user(team, "dave", "approve", run_id, "--comment", "me too")
    assert refused.returncode == 1
    assert "dave approves no run" in one_line(refused)
    assert server.status(run_id) == "waiting_for_event"

    approved = ci("approve", run_id, "--comment", "looks good", config=team["logins"]["alice"],
                  home=team["home"], env={"CI_RUNNER_SERVER": team["url"]})
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approved run {run_id} as alice" in approved.stdout
    assert f"run {run_id} complete" in approved.stdout
    assert "approved by alice at step 'ship'" in approved.stdout
    assert "looks good" in approved.stdout
    # The view of a local run: its steps as they change and the output that came after
    # the approval (what ran before it is not told again).
    shown = approved.stdout.splitlines()
    assert shown[1] == f"Codertocat/Hello-World @ {server.sha[:10]} (main) · run {run_id}"
    assert "▶ deploy running" in shown and "  [deploy] deployed" in shown
    assert any(x.startswith("✓ deploy complete") for x in shown)
    assert not any(x.startswith("  [build]") for x in shown)
    record = api_record(team, run_id)
    assert record["status"] == "complete"
    assert [(a["by"], a["comment"]) for a in record["approvals"]] == [("alice", "looks good")]

    logs = as_user(team, "alice", "logs", run_id, "deploy")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("--- attempt 1: sh -c 'echo deployed'")
    assert "\ndeployed\n" in logs.stdout
    every = as_user(team, "alice", "logs", run_id)
    assert "==> build <==" in every.stdout and "==> deploy <==" in every.stdout
    nope = as_user(team, "alice", "logs", run_id, "nope")
    assert nope.returncode == 2 and "has no step 'nope'" in one_line(nope)
    hidden = as_user(team, "dave", "show", run_id)
    assert hidden.returncode == 2 and f"no run {run_id!r}" in one_line(hidden)


def test_reject_fails_the_run_as_the_logged_in_user(team: dict[str, Any]) -> None:
    server = team["server"]
    run_id = server.push()
    server.wait_status(run_id, "waiting_for_event")
    rejected = as_user(team, "alice", "reject", run_id, "--comment", "not today", "--json")
    assert rejected.returncode == 1, rejected.stderr
    record = json.loads(rejected.stdout)
    assert record["status"] == "failed"
    assert [(a["decision"], a["by"]) for a in record["approvals"]] == [("reject", "alice")]
    assert server.status(run_id) == "errored"


# -- logs --follow, cancel, retry --from ------------------------------------------------


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _follow(team: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ci_runner", "logs", *args, "--follow", "--server",
         team["url"]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(team["logins"]["alice"], team["home"]))


def test_logs_follow_prints_a_running_steps_lines_as_they_come(team: dict[str, Any]) -> None:
    server = team["server"]
    run_id = server.push("live-follow")
    kit.wait_for(lambda: step_status(team, run_id, "stream") == "running", timeout=60,
                 what="the held step to run")
    with _follow(team, run_id, "stream") as proc, _follow(team, run_id) as whole:
        try:
            lines, every = _lines_of(proc), _lines_of(whole)
            assert (lines.get(timeout=60) or "").startswith("--- attempt 1: sh -c")
            assert lines.get(timeout=60) == "first line\n"
            before = []  # the whole run's, up to the held step's first line
            while not before or before[-1] != "first line\n":
                before.append(every.get(timeout=60) or "")
            # The step is still held: the next line can only come from following it.
            assert step_status(team, run_id, "stream") == "running"
            server.release("live-follow")
            assert lines.get(timeout=60) == "second line\n"
            assert (lines.get(timeout=60) or "").startswith("--- exit code 0")
            assert lines.get(timeout=60) is None
            assert proc.wait(timeout=60) == 0
            assert proc.stderr is not None and whole.stderr is not None
            assert "waiting for approval" in proc.stderr.read()

            after = []
            while (line := every.get(timeout=60)) is not None:
                after.append(line)
            assert whole.wait(timeout=60) == 0, whole.stderr.read()
            assert before[0] == "==> build <==\n" and "==> stream <==\n" in before
            assert after[0] == "second line\n", after
        finally:
            for started in (proc, whole):
                if started.poll() is None:
                    started.kill()


def test_cancel_then_retry_from_a_step(team: dict[str, Any]) -> None:
    server = team["server"]
    run_id = server.push("live-retry")
    kit.wait_for(lambda: step_status(team, run_id, "stream") == "running", timeout=60,
                 what="the held step to run")
    unnamed = as_user(team, "alice", "cancel")
    assert unnamed.returncode == 2 and "name the run to cancel" in one_line(unnamed)
    refused = as_user(team, "dave", "cancel", run_id)
    assert refused.returncode == 1 and "dave approves no run" in one_line(refused)
    cancelled = as_user(team, "alice", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"run {run_id} cancelled\n"
    assert server.status(run_id) == "terminated"

    build_log = as_user(team, "alice", "logs", run_id, "build").stdout
    missing = as_user(team, "alice", "retry", run_id, "--from", "nope")
    assert missing.returncode == 2 and "has no step 'nope'" in one_line(missing)
    server.release("live-retry")
    again = as_user(team, "alice", "retry", run_id, "--from", "stream")
    assert again.returncode == 3, again.stdout + again.stderr  # waiting, as locally
    assert "second line" in again.stdout
    assert f"run {run_id} waiting for approval" in again.stdout
    record = api_record(team, run_id)
    assert [s["name"] for s in record["steps"]] == ["build", "stream", "ship"]
    # build's result was kept: it did not run again.
    assert as_user(team, "alice", "logs", run_id, "build").stdout == build_log


# -- the API routes the terminal uses -----------------------------------------------------


def test_the_api_retries_cancels_and_filters_by_the_rules_of_decisions(
        team: dict[str, Any]) -> None:
    server = team["server"]
    api = server.server
    run_id = server.push()
    server.wait_status(run_id, "waiting_for_event")
    me = api.http.get("/api/me", headers={"Authorization": f"Bearer {TOKENS['alice']}"})
    assert me.json() == {"user": "alice"}
    assert api.api("GET", "/api/me").json() == {"user": None}
    assert api.http.get("/api/me").status_code == 401

    waiting = api.api("GET", "/api/runs", params={"status": "waiting", "limit": 500}).json()
    assert run_id in {r["run_id"] for r in waiting}
    assert all(r["status"] == "waiting" for r in waiting)
    assert api.api("GET", "/api/runs", params={"status": "nope"}).status_code == 400
    assert api.api("GET", "/api/runs", params={"branch": "no-such-branch"}).json() == []

    log = api.api("GET", f"/api/runs/{run_id}/logs/build").content
    rest = api.api("GET", f"/api/runs/{run_id}/logs/build", params={"offset": 10})
    assert rest.content == log[10:] and rest.headers["x-log-exists"] == "1"

    dave = {"Authorization": f"Bearer {TOKENS['dave']}"}
    for action in ("retry", "cancel"):
        refused = api.http.post(f"/api/runs/{run_id}/{action}", headers=dave)
        assert refused.status_code == 403, refused.text
    assert server.status(run_id) == "waiting_for_event"
    cancelled = api.api("POST", f"/api/runs/{run_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["run_id"] == run_id
    assert server.status(run_id) == "terminated"
    again = api.api("POST", f"/api/runs/{run_id}/retry", json={"from": "ship"})
    assert again.status_code == 202, again.text
    server.wait_status(run_id, "waiting_for_event")
    assert api.api("POST", f"/api/runs/{run_id}/retry", json={"from": "x"}).status_code == 409


# -- on a terminal ----------------------------------------------------------------------


def in_pty(team: dict[str, Any], config: Path, *args: str,
           answer: tuple[str, str] | None = None) -> tuple[int, str]:
    """`ci-runner ARGS` on a pseudo-terminal (stdin, stdout and stderr); ``answer``:
    (prompt, text) typed once the prompt shows."""

    def type_answer(screen: str, keys: Keys) -> bool:
        if answer is None or answer[0] not in screen:
            return answer is None
        keys.type(answer[1])
        return True

    return in_terminal(args, _env(config, team["home"]), timeout=CLI_TIMEOUT_S,
                       react=type_answer)


def test_on_a_terminal_the_token_is_asked_for_unechoed_and_approve_shows_the_live_view(
        team: dict[str, Any], tmp_path: Path) -> None:
    server, config = team["server"], tmp_path / "servers.json"
    code, screen = in_pty(team, config, "login", team["url"],
                          answer=("token: ", TOKENS["alice"] + "\n"))
    assert code == 0, screen
    assert f"logged in to {team['url']} as alice" in screen
    assert TOKENS["alice"] not in screen  # the prompt did not echo it

    run_id = server.push()
    server.wait_status(run_id, "waiting_for_event")
    code, screen = in_pty(team, config, "approve", run_id, "--server", team["url"])
    assert code == 0, screen
    assert f"approved run {run_id} as alice; the server resumes it" in screen
    assert f"run {run_id} complete" in screen and "approved by alice" in screen
    assert "deploy" in screen


def test_the_shared_token_sees_every_run_but_decides_nothing(team: dict[str, Any],
                                                             tmp_path: Path) -> None:
    server, config = team["server"], tmp_path / "servers.json"
    env = {"CI_RUNNER_SERVER": team["url"]}
    unnamed = ci("login", config=config, home=team["home"], stdin=kit.TOKEN)
    assert unnamed.returncode == 2 and "give the server" in one_line(unnamed)
    done = ci("login", config=config, home=team["home"], stdin=kit.TOKEN, env=env)
    assert done.returncode == 0, done.stderr
    assert "with the server's shared token" in done.stdout
    run_id = server.push()
    server.wait_status(run_id, "waiting_for_event")
    shown = ci("show", run_id, "--json", config=config, home=team["home"], env=env)
    assert json.loads(shown.stdout)["status"] == "waiting"
    nobody = ci("approve", run_id, config=config, home=team["home"], env=env)
    assert nobody.returncode == 2 and "your own token" in one_line(nobody)
    assert server.status(run_id) == "waiting_for_event"
