"""Webhook intake and run start-up of `ci-runner serve`.

(a) Acceptance, against a real `ci-runner serve` process: signed GitHub push deliveries
(the octokit fixture body, a new delivery id each) over keep-alive loopback
connections; a 2xx means the delivery row was committed with fsync. Two loads:
saturated (C connections sending back to back: deliveries/s), and offered at 500/s
(open loop: delivery i is due at i/500 s, its latency counted from when it was due).
The goal rows use a clone URL that does not answer, as in a forge outage: every
delivery is stored and queues, and the dispatcher, in the same process, supersedes the
older ones (all push to one branch). A reference row repeats the 500/s load with a
working clone URL, the dispatcher fetching, forking, starting, superseding and driving
runs of the newest push meanwhile. Peer: a bare FastAPI endpoint under the same
uvicorn settings that reads the body and answers 202 (no signature, no parsing, no
storage), in rounds interleaved with ours. The client shares the 2 cores with the servers.

(b) Runs started per second: the dispatcher turning K accepted deliveries (K pushes to
K branches, each a new commit) into stored runs: fetch into the tenant's bare mirror,
create the run (its worktree is forked later, by its driver). Peer: `git worktree add`
alone, per run, which the intake no longer pays.

Runs driven to the end under a burst: `bench_burst.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from _common import GIT_IDENTITY, PY, Row, git, make_repo, ms, print_table, verdict

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "webhooks" / "github-push-new-branch.json"
SECRET = "bench-secret"
CONNECTIONS = 32
DELIVERIES = 2000
ROUNDS = 3
RUNS = 40
GOAL_RATE = 500.0
GOAL_P99_S = 0.050

PEER_APP = textwrap.dedent("""
    import sys
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/hooks/github")
    async def hook(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"accepted": True}, status_code=202)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, server_header=False)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not come up")


def body_and_signature(sha: str) -> tuple[bytes, str]:
    data = json.loads(FIXTURE.read_text())
    data["after"] = sha
    data["ref"] = "refs/heads/main"
    raw = json.dumps(data).encode()
    return raw, "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()


def request(body: bytes, signature: str, delivery: str) -> bytes:
    return (f"POST /hooks/github HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nX-GitHub-Event: push\r\n"
            f"X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   data: bytes) -> bytes:
    """Send one request on a keep-alive connection; returns the status line."""
    writer.write(data)
    await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    if not status.startswith(b"HTTP/1.1 202"):
        raise SystemExit(f"a delivery was refused: {status!r}")
    return status


async def saturate(port: int, body: bytes, signature: str, n: int, tag: str) -> float:
    """Closed loop: ``n`` deliveries as fast as CONNECTIONS connections go; deliveries/s."""
    counter = iter(range(n))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                await exchange(reader, writer, request(body, signature, f"{tag}-{i}"))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return n / (time.perf_counter() - t0)


async def paced(port: int, body: bytes, signature: str, n: int, rate: float,
                tag: str) -> tuple[float, list[float]]:
    """Open loop: delivery i is due at i/rate; its latency counts from when it was due
    (so a slow answer that delays the next send is not hidden). (achieved/s, latencies)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS * 2):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05

    async def one(i: int) -> None:
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        conn = await pool.get()
        try:
            await exchange(*conn, request(body, signature, f"{tag}-{i}"))
        finally:
            pool.put_nowait(conn)
        latencies.append(loop.time() - due)

    await asyncio.gather(*(one(i) for i in range(n)))
    achieved = n / (loop.time() - t0)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return achieved, latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def start_server(root: Path, name: str, clone_url: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = root / f"{name}.yml"
    config.write_text(yaml.safe_dump({
        "server": {"workers": 1},
        "repos": [{"name": "Codertocat/Hello-World", "forge": "github",
                   "clone_url": str(clone_url), "webhook_secret": SECRET, "branches": ["main"],
                   "supersede": {"branches": True}}],
    }))
    env = {**os.environ, "CI_RUNNER_HOME": str(root / name), "PYTHONPATH": str(ROOT)}
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "ci_runner", "serve", "--config", str(config), "--port",
                             str(port)], env=env, stderr=subprocess.DEVNULL)
    wait_up(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def stored(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "ci-runner.db") as db:
        return dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))


def acceptance(root: Path) -> list[Row]:
    source, sha = make_repo(root / "source", {".ci/pipeline.py": "from ci_runner import "
                                              "Pipeline\n\nclass CI(Pipeline):\n    async def"
                                              " run(self, event, step):\n        pass\n"})
    body, signature = body_and_signature(sha)
    # The goal rows: a clone URL that does not answer (a forge outage), so deliveries are
    # stored and queue; the dispatcher supersedes the older ones in the same process.
    ours, ours_port = start_server(root, "queue", root / "unreachable")
    peer_port = free_port()
    peer = subprocess.Popen([PY, "-c", PEER_APP, str(peer_port)])
    sat: dict[str, list[float]] = {"ours": [], "peer": []}
    lat: dict[str, list[list[float]]] = {"ours": [], "peer": []}
    try:
        wait_up(peer_port, peer)
        for port in (ours_port, peer_port):  # imports, first fsyncs, connection set-up
            asyncio.run(saturate(port, body, signature, 200, "warm"))
        for r in range(ROUNDS):
            order = [("ours", ours_port), ("peer", peer_port)]
            for name, port in order if r % 2 == 0 else order[::-1]:
                sat[name].append(asyncio.run(saturate(port, body, signature, DELIVERIES,
                                                      f"{name}-sat-{r}")))
                lat[name].append(asyncio.run(paced(port, body, signature, DELIVERIES,
                                                   GOAL_RATE, f"{name}-paced-{r}"))[1])
    finally:
        stop(ours)
        stop(peer)
    queued = stored(root / "queue")
    # For reference: the same at 500/s while the dispatcher really fetches, forks, starts
    # and supersedes runs of the newest push, and drives one at a time.
    busy, busy_port = start_server(root, "busy", source)
    try:
        asyncio.run(saturate(busy_port, body, signature, 200, "warm"))
        busy_lat = asyncio.run(paced(busy_port, body, signature, DELIVERIES, GOAL_RATE,
                                     "busy"))[1]
    finally:
        stop(busy)

    def median_of(name: str, f: Callable[[list[float]], float]) -> float:
        return statistics.median(f(lats) for lats in lat[name])

    ours_sat, peer_sat = statistics.median(sat["ours"]), statistics.median(sat["peer"])
    ours_p99, peer_p99 = median_of("ours", p99), median_of("peer", p99)
    expected = 200 + ROUNDS * DELIVERIES * 2
    total = sum(queued.values())
    return [
        Row("deliveries accepted/s, saturated (stored+fsync)", f"{ours_sat:.0f}/s",
            f"{peer_sat:.0f}/s", f"{ours_sat / peer_sat:.2f}x", f">= {GOAL_RATE:.0f}/s",
            verdict(ours_sat >= GOAL_RATE)),
        Row(f"p99 acceptance latency at {GOAL_RATE:.0f}/s offered", ms(ours_p99), ms(peer_p99),
            f"{ours_p99 / peer_p99:.2f}x", f"< {ms(GOAL_P99_S)}", verdict(ours_p99 < GOAL_P99_S)),
        Row(f"p50 acceptance latency at {GOAL_RATE:.0f}/s offered",
            ms(median_of("ours", statistics.median)), ms(median_of("peer", statistics.median)),
            "", "", "info"),
        Row("delivery rows stored (of them superseded)",
            f"{total} ({queued.get('superseded', 0)})", "", "", f"= {expected}",
            "info" if total == expected else "MISS"),
        Row(f"p99 at {GOAL_RATE:.0f}/s while runs start (1 round)", ms(p99(busy_lat)), "", "",
            "", "info"),
        Row(f"p50 at {GOAL_RATE:.0f}/s while runs start (1 round)",
            ms(statistics.median(busy_lat)), "", "", "", "info"),
    ]


def runs_started(root: Path) -> list[Row]:
    os.environ["CI_RUNNER_HOME"] = str(root / "home2")
    from ci_runner.dispatch.runs import reap_orphan
    from ci_runner.engine.driver import Engine
    from ci_runner.server.config import parse_config
    from ci_runner.server.dispatcher import Dispatcher
    from ci_runner.store import deliveries as store
    from ci_runner.workspace.mirror import mirror_path

    source, _ = make_repo(root / "source2", {".ci/pipeline.py": "pass\n", **{
        f"src/f{i}.py": "x = 1\n" * 50 for i in range(200)}})
    shas = []
    for i in range(RUNS):
        git(source, "checkout", "-q", "-b", f"b{i}", "main")
        (source / f"change{i}.txt").write_text(str(i))
        git(source, "add", "-A")
        git(source, "commit", "-q", "--no-gpg-sign", "-m", f"c{i}")
        shas.append(git(source, "rev-parse", "HEAD"))
    config = parse_config({"repos": [{
        "name": "o/r", "forge": "github", "clone_url": str(source), "webhook_secret": "s",
        "branches": ["*"]}]}, path=root / "c.yml", environ={})
    engine = Engine(root / "home2" / "ci-runner.db", lease_ttl_s=0.0, reap_orphan=reap_orphan)
    store.accept(engine.conn, [{
        "forge": "github", "delivery_id": f"d{i}", "repo": "o/r", "event": "push",
        "action": "push", "sha": sha, "ref": f"refs/heads/b{i}", "branch": f"b{i}",
        "lane": f"branch:b{i}", "source_ref": f"refs/heads/b{i}", "is_fork": 0,
    } for i, sha in enumerate(shas)])
    dispatcher = Dispatcher(config, driver_env={}, secrets_files={}, sandbox=None)
    t0 = time.perf_counter()
    started = dispatcher.start_deliveries(engine)
    ours = (time.perf_counter() - t0) / max(started, 1)
    engine.close()
    mirror = mirror_path("github", "o/r")
    peer_times = []
    for i, sha in enumerate(shas):
        t = time.perf_counter()
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet",
                        str(root / "peer" / str(i)), sha], cwd=mirror, check=True,
                       env={**os.environ, **GIT_IDENTITY})
        peer_times.append(time.perf_counter() - t)
    peer = statistics.median(peer_times)
    return [
        Row("runs started/s (fetch + store)", f"{1 / ours:.1f}/s", f"{1 / peer:.1f}/s",
            f"{ours / peer:.2f}x", "", "info"),
        Row("per run started", ms(ours), ms(peer), "", "", "info"),
        Row("runs stored", str(started), "", "", f"= {RUNS}",
            "info" if started == RUNS else "MISS"),
    ]


def main() -> None:
    if not FIXTURE.is_file():
        raise SystemExit(f"needs the webhook fixtures at {FIXTURE}")
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        rows = acceptance(Path(tmp))
        rows += runs_started(Path(tmp))
    print_table(
        "webhook intake: `ci-runner serve` vs a bare FastAPI endpoint", rows,
        notes=[f"saturated: {DELIVERIES} deliveries over {CONNECTIONS} keep-alive connections;"
               f" offered: {DELIVERIES} due at {GOAL_RATE:.0f}/s over up to {CONNECTIONS * 2}"
               f" connections; medians of {ROUNDS} interleaved rounds; client and server share"
               " 2 cores",
               "goal rows: the clone URL does not answer, so deliveries queue (stored) and the"
               " dispatcher supersedes them; 'while runs start': it works",
               "peer (a): same uvicorn, reads the body and answers 202, stores nothing",
               f"(b): {RUNS} deliveries to {RUNS} branches, each a new commit; peer is"
               " `git worktree add` alone", f"python {sys.version.split()[0]}"],
    )


if __name__ == "__main__":
    main()
