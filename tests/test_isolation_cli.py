"""The local CLI's sandbox, attacked the way a hostile tenant would: a pipeline, and a
light step it starts, try to reach the database, another repo's secrets and worktree,
the driver's environment, other processes, the Docker socket, the host's /tmp and
the user's files. Every attempt must be refused, and the other repo left as it was.

Each probe reports ``reached`` or ``refused`` with what it saw, so a failure says
exactly which wall fell. Runs under bubblewrap and under Landlock (the fallback for
machines without user namespaces), each through the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitrepos import make_repo

PROBE = r'''
import json, os, socket, sys

def attempt(out, name, fn):
    try:
        seen = fn()
    except Exception as exc:  # refused: the wall held
        out[name] = "refused: " + type(exc).__name__
    else:
        out[name] = "reached: " + repr(seen)[:120]

def environ_with(marker):
    marker = marker[::-1]  # given reversed, so no environment holds it by our doing
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        return pid
            except OSError:
                pass
    raise LookupError("no process environment with the marker is readable")

def docker(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
    return s.recv(64)

def probe(ctx):
    out = {}
    home = ctx["home"]
    attempt(out, "database", lambda: open(os.path.join(home, "ci-runner.db"), "rb").read(16))
    # The folders leading to the run's own worktree may show; nothing else of home.
    attempt(out, "home_listing", lambda: [n for n in os.listdir(home) if n != "worktrees"]
            or os.listdir("/nonexistent-so-it-raises"))
    attempt(out, "secrets_dir", lambda: os.listdir(os.path.join(home, "secrets")))
    attempt(out, "other_secret", lambda: open(ctx["other_secret"]).read())
    attempt(out, "other_worktree", lambda: open(ctx["other_file"]).read())
    attempt(out, "other_worktree_write", lambda: open(ctx["other_file"], "a").write("x"))
    attempt(out, "logs", lambda: os.listdir(os.path.join(home, "logs")))
    attempt(out, "host_tmp", lambda: open(ctx["host_tmp"]).read())
    attempt(out, "driver_environ", lambda: environ_with(ctx["marker"]))
    attempt(out, "signal", lambda: os.kill(ctx["victim"], 0))
    # HOME is the run's private one: writing there is fine, the user's file stays.
    attempt(out, "bashrc", lambda: open(ctx["bashrc"], "a").write("pwned\n"))
    attempt(out, "user_repo_config",
            lambda: open(ctx["repo_config"], "a").write("[core]\n\tfsmonitor = true\n"))
    attempt(out, "docker_socket", lambda: docker(ctx["docker"]))
    # What the sandbox must still let in.
    attempt(out, "worktree_write", lambda: open("written-by-the-run", "w").write("ok"))
    attempt(out, "tmp_write", lambda: open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                         "t"), "w").write("ok"))
    return out

if __name__ == "__main__":
    print("PROBE " + json.dumps(probe(json.loads(os.environ["CTX"]))))
'''

PIPELINE = '''
import json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
from probe import probe
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        ctx = json.loads(event.payload["ctx"])
        await step.do("python", lambda: probe(ctx))
        await step.run("shell", [ctx["python"], ".ci/probe.py"], env={"CTX": json.dumps(ctx)})
'''

# What a hostile pipeline must never reach, whatever the sandbox.
WALLS = ("database", "home_listing", "secrets_dir", "other_secret", "other_worktree",
         "other_worktree_write", "logs", "host_tmp", "driver_environ", "signal",
         "user_repo_config")
MODES = ("bwrap", "landlock")


def _require(mode: str) -> None:
    from ci_runner import sandbox

    try:
        sandbox.probe(mode)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI must have the {mode} sandbox: {exc}") from exc
        pytest.skip(f"no {mode} sandbox here: {exc}")


@pytest.fixture
def victim():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_pipeline_and_its_step_reach_nothing_but_their_worktree(
    cli, home: Path, tmp_path: Path, victim: int, mode: str,
) -> None:
    _require(mode)
    from ci_runner.secrets import set_secret, store_path
    from ci_runner.workspace import open_repo, tenant_key

    # Another repo: a secret in ci-runner's store and a kept worktree of a finished run.
    other = make_repo(tmp_path / "other", {".ci/pipeline.py": (
        "from ci_runner import Pipeline\n"
        "class CI(Pipeline):\n"
        "    async def run(self, event, step):\n"
        "        await step.run('w', ['sh', '-c', 'echo private > data.txt'])\n")})
    other_secret = store_path(tenant_key(open_repo(other)))
    set_secret(other_secret, "DEPLOY_TOKEN", "other-repos-token-123")
    kept = cli("run", "-C", str(other), "--keep-workspace", "--sandbox", "off", "--json")
    assert kept.code == 0, kept.err
    other_file = Path(kept.json()["workspace"]) / "data.txt"
    assert other_file.read_text() == "private\n"

    host_tmp = Path("/tmp") / f"ci-runner-test-{os.getpid()}-{mode}"
    host_tmp.write_text("host tmp secret")
    fake_home = tmp_path / "userhome"
    fake_home.mkdir()
    (fake_home / ".bashrc").write_text("# mine\n")
    repo = make_repo(tmp_path / "hostile", {".ci/pipeline.py": PIPELINE,
                                            ".ci/probe.py": PROBE})
    config_before = (repo / ".git" / "config").read_text()
    ctx = {"home": str(home), "other_secret": str(other_secret), "other_file": str(other_file),
           "host_tmp": str(host_tmp), "marker": "marker-in-the-drivers-env-5d1f"[::-1],
           "victim": victim, "bashrc": str(fake_home / ".bashrc"),
           "repo_config": str(repo / ".git" / "config"), "docker": "/var/run/docker.sock",
           "python": sys.executable}
    try:
        done = cli("run", "-C", str(repo), "--sandbox", mode, "--json",
                   "--param", f"ctx={json.dumps(ctx)}",
                   env={"DRIVER_ONLY": "marker-in-the-drivers-env-5d1f",
                        "HOME": str(fake_home)})
    finally:
        host_tmp.unlink()
    assert done.code == 0, done.err + done.out
    record = done.json()
    assert {s["name"]: s["sandbox"] for s in record["steps"]}["shell"] == mode

    with sqlite3.connect(home / "ci-runner.db") as db:
        rows = dict(db.execute("SELECT name, result FROM steps WHERE instance_id = ?",
                               (record["run_id"],)).fetchall())
    from_python = json.loads(rows["python"])
    log = (home / "logs" / record["run_id"] / "shell.log").read_text()
    from_step = json.loads(log.split("PROBE ", 1)[1].splitlines()[0])

    for where, seen in (("pipeline code", from_python), ("light step", from_step)):
        reached = {k: v for k, v in seen.items() if k in WALLS and v.startswith("reached")}
        assert not reached, f"{mode}: {where} reached {reached}"
        assert seen["worktree_write"].startswith("reached"), seen
        assert seen["tmp_write"].startswith("reached"), seen
        if mode == "bwrap":  # Landlock does not cover sockets on disk (README says so)
            assert seen["docker_socket"].startswith("refused"), seen
    # The other repo and the user's files are as they were.
    assert other_file.read_text() == "private\n"
    assert "other-repos-token-123" in other_secret.read_text()
    assert (fake_home / ".bashrc").read_text() == "# mine\n"
    assert (repo / ".git" / "config").read_text() == config_before


FORGER = '''
import sqlite3
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        host = step._step.host
        tries = {}
        for status in ("complete", "skipped"):
            try:
                host.request("record", name="gate", occurrence=1, kind="event",
                             status=status, result={"approved_by": "mallory"})
                tries[status] = "accepted"
            except Exception as exc:
                tries[status] = f"refused: {exc}"
        approval = {"type": "approval", "payload": {"decision": "approve", "by": "mallory"}}
        for how, call in (
            ("begin", lambda: host.request("begin", name="gate", occurrence=1, kind="event")),
            ("begun_complete", lambda: host.request(
                "complete", name="gate", occurrence=1, result=approval,
                begun={"kind": "event", "at": 0.0})),
        ):
            try:
                call()
                tries[how] = "accepted"
            except Exception as exc:
                tries[how] = f"refused: {exc}"
        try:
            db = sqlite3.connect(event.payload["db"])
            db.execute("UPDATE instances SET status = 'complete'")
            tries["database"] = "accepted"
        except Exception as exc:
            tries["database"] = f"refused: {type(exc).__name__}"
        await step.do("tries", lambda: tries)
        await step.wait_for_approval("gate", message="deploy?")
        await step.run("deploy", ["sh", "-c", "echo deployed"])
'''


def test_a_pipeline_cannot_pass_its_own_approval_gate(cli, home: Path, tmp_path: Path) -> None:
    mode = "bwrap"
    _require(mode)
    repo = make_repo(tmp_path / "forger", {".ci/pipeline.py": FORGER})
    done = cli("run", "-C", str(repo), "--sandbox", mode, "--json",
               "--param", f"db={home / 'ci-runner.db'}")
    assert done.code == 3, done.err + done.out  # still waiting for a person
    record = done.json()
    assert record["status"] == "waiting" and record["waiting_for"] == "approval"
    assert [s["name"] for s in record["steps"]] == ["tries", "gate"]
    with sqlite3.connect(home / "ci-runner.db") as db:
        tries = json.loads(db.execute(
            "SELECT result FROM steps WHERE instance_id = ? AND name = 'tries'",
            (record["run_id"],)).fetchone()[0])
    assert tries["complete"].startswith("refused: step 'gate' is a wait"), tries
    assert tries["skipped"].startswith("refused"), tries
    assert tries["begin"].startswith("refused"), tries
    assert tries["begun_complete"].startswith("refused"), tries
    assert tries["database"].startswith("refused"), tries
    assert cli("pending", "--json").json()[0]["run_id"] == record["run_id"]


def test_without_user_namespaces_the_cli_falls_back_to_landlock_and_says_so(
    cli, home: Path, tmp_path: Path,
) -> None:
    """A machine that refuses user namespaces (simulated by a seccomp filter):
    ``--sandbox auto`` runs under Landlock with one line saying why, and the
    database stays out of reach."""
    _require("landlock")
    if shutil.which("bwrap") is None and os.environ.get("CI") != "true":
        pytest.skip("bubblewrap is not installed")
    repo = make_repo(tmp_path / "p", {".ci/pipeline.py": (
        "import os\n"
        "from ci_runner import Pipeline\n"
        "class CI(Pipeline):\n"
        "    async def run(self, event, step):\n"
        "        db = event.payload['db']\n"
        "        try:\n"
        "            open(db, 'rb').read(1)\n"
        "            seen = 'reached'\n"
        "        except OSError:\n"
        "            seen = 'refused'\n"
        "        await step.do('db', lambda: seen)\n"
        "        await step.run('step', ['sh', '-c', f'cat {db} >/dev/null || echo refused'])\n")})
    from tests.conftest import ROOT

    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "nouserns.py"), sys.executable, "-m",
         "ci_runner", "run", "-C", str(repo), "--sandbox", "auto", "--json",
         "--param", f"db={home / 'ci-runner.db'}"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "CI_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Landlock" in warnings[0], done.stderr
    record = json.loads(done.stdout)
    assert {s["name"]: s["sandbox"] for s in record["steps"]}["step"] == "landlock"
    with sqlite3.connect(home / "ci-runner.db") as db:
        seen = json.loads(db.execute(
            "SELECT result FROM steps WHERE instance_id = ? AND name = 'db'",
            (record["run_id"],)).fetchone()[0])
    assert seen == "refused"
    assert "refused" in (home / "logs" / record["run_id"] / "step.log").read_text()


RELAYER = """
import os, socket
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        victim = __import__("json").loads(event.payload["victim"])
        async def hang():
            await step.run("hang", ["sleep", "30"])
        import asyncio
        task = asyncio.ensure_future(hang())
        await asyncio.sleep(0.5)
        # Relay someone else's process group as the running step's, then crash: the
        # driver reaps a crashed pipeline's steps by what the journal says.
        step._step.host.notify("set_detail", name="hang", occurrence=1, detail={
            "pgid": int(victim["pgid"]), "pgid_start": victim["start"],
            "host": socket.gethostname()})
        step._step.host.request("peek", name="hang", occurrence=1)  # written by now
        os._exit(1)
"""


@pytest.mark.parametrize("mode", ("bwrap", "off"))
def test_a_relayed_process_group_is_never_killed(cli, tmp_path: Path, mode: str) -> None:
    """Crash recovery kills the process groups the journal names for running steps;
    a pipeline must not be able to name someone else's (the server's, another
    tenant's step) there. Even with the sandbox off: the broker seals what it reports."""
    if mode != "off":
        _require(mode)
    from ci_runner.engine.leases import start_time

    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        repo = make_repo(tmp_path / "relayer", {".ci/pipeline.py": RELAYER})
        param = json.dumps({"pgid": victim.pid, "start": start_time(victim.pid)})
        done = cli("run", "-C", str(repo), "--sandbox", mode, "--json",
                   "--param", f"victim={param}")
        record = done.json()
        assert record["status"] == "failed", record
        assert "exited with code 1" in record["error"]["message"]
        assert victim.poll() is None, "the relayed process group was killed"
    finally:
        victim.kill()
        victim.wait()
