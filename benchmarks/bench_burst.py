"""A burst of webhook deliveries on one machine, driven to the end (issue 13).

A real `ci-runner serve` (W workers, the repo's concurrency W, no superseding) gets
2,000 signed GitHub push deliveries as fast as 16 keep-alive connections send them.
Its clone URL is a real local repository (200 files, a pipeline of one light step
that sleeps `--work` seconds), so every delivery becomes a run that is fetched into the
mirror, stored, driven and completed: unlike `bench_webhooks.py`'s goal rows, whose
clone URL never answers.

Ours: from the first delivery sent to the last run completed (the drain), against the
workers' capacity, W x the drain: how much of it went into driving runs (the sum over
runs of lease taken -> finished, from the journal). Goal: >= 80 %. What is lost is the
dispatcher's (turning deliveries into runs, starting drivers) and each driver's own
start-up (a `ci-runner resume` process: Python and ci-runner's imports, the worktree's
fork) before it takes the run's lease.

Also: the most git worktrees the mirror held at once (sampled every 20 ms from git's
own admin folder, `<mirror>/worktrees/`), which must stay at most W (only runs being
driven hold one), and the runs' latency from delivery to completion.

`--quick` sends 200 deliveries instead of 2,000 (about a tenth of the time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml
from _common import PY, ROOT, Row, make_repo, ms, print_table, verdict
from bench_webhooks import free_port, saturate, wait_up

FIXTURE = ROOT / "tests" / "fixtures" / "webhooks" / "github-push-new-branch.json"
SECRET = "bench-secret"
REPO_NAME = "Codertocat/Hello-World"  # the fixture's repository
GOAL_SHARE = 0.80

PIPELINE = '''\
from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        await step.run("work", ["sleep", "{work}"])
'''


def body_and_signature(sha: str) -> tuple[bytes, str]:
    data = json.loads(FIXTURE.read_text())
    data["after"] = sha
    data["ref"] = "refs/heads/main"
    data["head_commit"]["id"] = sha
    raw = json.dumps(data).encode()
    return raw, "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()


class Sampler(threading.Thread):
    """Every 20 ms: the worktrees git lists in the mirror, and the server's driver
    processes alive (its children running `ci-runner resume RUN`, from each of its
    threads' `/proc/PID/task/TID/children`), a driver's life running from the first
    sample that shows it to the last; every 0.5 s, how many runs have ended."""

    def __init__(self, home: Path, admin: Path, server: int) -> None:
        super().__init__(daemon=True)
        self.db = home / "ci-runner.db"
        self.admin = admin
        self.server = server
        self.most = 0
        self.done = 0
        self.live: dict[int, list[float]] = {}  # driver pid -> [first, last] seen
        self.lifetimes: list[float] = []
        self.stop = threading.Event()

    def children(self) -> set[int]:
        found: set[int] = set()
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{self.server}/task"):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in Path(task.path, "children").read_text().split())
        return found

    def drivers(self) -> None:
        now = time.time()
        kids = self.children()
        for pid in [p for p in self.live if p not in kids]:  # exited (and reaped)
            first, last = self.live.pop(pid)
            self.lifetimes.append(last - first)
        for pid in kids:
            if pid in self.live:
                self.live[pid][1] = now
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"\0resume\0" in cmdline:  # else a git command, or not exec'd yet
                self.live[pid] = [now, now]

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=5)
        self.lifetimes += [last - first for first, last in self.live.values()]
        self.live.clear()

    def run(self) -> None:
        last_count = 0.0
        while not self.stop.is_set():
            with contextlib.suppress(OSError):  # no worktree yet: git makes the folder
                self.most = max(self.most, sum(1 for _ in self.admin.iterdir()))
            self.drivers()
            if time.monotonic() - last_count > 0.5 and self.db.exists():
                last_count = time.monotonic()
                with sqlite3.connect(self.db, timeout=30) as db:
                    self.done = db.execute("SELECT count(*) FROM instances WHERE status IN"
                                           " ('complete', 'errored', 'terminated')"
                                           ).fetchone()[0]
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 deliveries, not 2,000")
    parser.add_argument("--deliveries", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=float, default=0.2,
                        help="seconds each run's one step sleeps")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for the runs to complete")
    args = parser.parse_args()
    count = args.deliveries or (200 if args.quick else 2000)
    workers = args.workers
    with tempfile.TemporaryDirectory(prefix="ci-runner-bench-") as tmp:
        root = Path(tmp)
        files = {".ci/pipeline.py": PIPELINE.format(work=args.work)}
        files |= {f"src/f{i}.py": f"X = {i}\n" for i in range(200)}
        source, sha = make_repo(root / "source", files)
        home = root / "home"
        config = root / "serve.yml"
        config.write_text(yaml.safe_dump({
            "server": {"workers": workers},
            "repos": [{"name": REPO_NAME, "forge": "github", "clone_url": str(source),
                       "webhook_secret": SECRET, "branches": ["main"],
                       "concurrency": workers,
                       "supersede": {"branches": False, "pull_requests": False}}],
        }))
        os.environ["CI_RUNNER_HOME"] = str(home)
        from ci_runner.workspace.mirror import mirror_path

        admin = mirror_path("github", REPO_NAME) / "worktrees"
        port = free_port()
        env = {**os.environ, "CI_RUNNER_HOME": str(home), "PYTHONPATH": str(ROOT),
               "CI_RUNNER_SANDBOX": os.environ.get("CI_RUNNER_SANDBOX", "auto")}
        server = subprocess.Popen(
            [PY, "-m", "ci_runner", "serve", "--config", str(config), "--port", str(port)],
            env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        sampler = Sampler(home, admin, server.pid)
        try:
            wait_up(port, server)
            body, signature = body_and_signature(sha)
            sampler.start()
            sent_at = time.time()
            rate = asyncio.run(saturate(port, body, signature, count, "burst"))
            deadline = time.monotonic() + args.timeout
            while sampler.done < count and time.monotonic() < deadline:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited with {server.returncode}")
                time.sleep(0.2)
        finally:
            sampler.finish()
            server.terminate()
            server.wait(timeout=120)
        with sqlite3.connect(home / "ci-runner.db") as db:
            rows = db.execute("SELECT status, created_at, started_at, finished_at"
                              " FROM instances").fetchall()
            states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    complete = [r for r in rows if r[0] == "complete"]
    if not complete:
        raise SystemExit(f"no run completed ({states}; statuses"
                         f" {sorted({r[0] for r in rows})})")
    drain = max(r[3] for r in complete) - sent_at
    driving = sum(r[3] - r[2] for r in complete)
    share = driving / (workers * drain)
    lifetimes = sampler.lifetimes
    busy = sum(lifetimes) / (workers * drain)
    per_run = statistics.median(r[3] - r[2] for r in complete)
    latency = sorted(r[3] - sent_at for r in complete)
    stored = max(r[1] for r in rows) - sent_at
    print_table(
        f"burst of {count} deliveries on one machine: `ci-runner serve`, {workers} workers,"
        f" runs driven to the end",
        [
            Row("drivers' time / workers' capacity over the drain", f"{busy * 100:.1f} %",
                f"{sum(lifetimes):.1f} s of {workers} x {drain:.1f} s", "",
                f">= {GOAL_SHARE * 100:.0f} %", verdict(busy >= GOAL_SHARE)),
            Row("  of it inside the runs' leases (strict)", f"{share * 100:.1f} %",
                f"{driving:.1f} s of {workers} x {drain:.1f} s", "",
                f">= {GOAL_SHARE * 100:.0f} %", verdict(share >= GOAL_SHARE)),
            Row("runs completed (within --timeout)", f"{len(complete)} / {count}", "", "",
                f"= {count}", verdict(len(complete) == count)),
            Row("drivers seen / runs", f"{len(lifetimes)} / {count}", "", "", "", "info"),
            Row("one driver process, spawn -> exit, median",
                ms(statistics.median(lifetimes)) if lifetimes else "-", "", "", "", "info"),
            Row("most git worktrees in the mirror at once", str(sampler.most), "", "",
                f"<= {workers} (running runs)", verdict(sampler.most <= workers)),
            Row("drain: first delivery sent -> last run complete", f"{drain:.1f} s", "", "",
                "", "info"),
            Row("runs completed per second", f"{len(complete) / drain:.2f}/s", "", "", "",
                "info"),
            Row("one run's driving time (lease -> finished), median", ms(per_run),
                f"its step sleeps {ms(args.work)}", "", "", "info"),
            Row("all deliveries sent (accepted/s)", f"{rate:.0f}/s", "", "", "", "info"),
            Row("last run stored, after the first delivery", f"{stored:.1f} s", "", "", "",
                "info"),
            Row("delivery -> run complete, p50 / p99",
                f"{latency[len(latency) // 2]:.1f} s / {latency[int(len(latency) * .99)]:.1f} s",
                "", "", "", "info"),
        ],
        notes=[f"{count} deliveries of one push (one sha) to main, 16 connections; the clone"
               f" URL is a local repo of 200 files; sandbox {env['CI_RUNNER_SANDBOX']}",
               "drivers' time: each `ci-runner resume` driver process's life, sampled every"
               " 20 ms, summed (what the workers' slots were used for; the rest is the"
               " dispatcher's delay in filling a freed slot)",
               "strict: from each run's lease taken to its end, summed; its driver's own"
               " start-up (Python, imports, the worktree's fork, the sandbox) counts as lost",
               f"deliveries: {states}"],
    )


if __name__ == "__main__":
    main()
