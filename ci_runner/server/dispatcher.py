"""Turning accepted deliveries into runs, and driving runs within the concurrency limits.

One background thread, in a loop woken by each accepted delivery and approval:

1. each waiting delivery: fetch its sha from the repo's configured clone URL into the
   tenant's bare mirror and store the queued run (``start_run``; its worktree is forked
   by its driver, so queued runs hold none), then cancel the runs it supersedes (same
   branch or pull request, per repo);
2. every run that needs a driver (new, woken by a timer or an approval, or orphaned
   by a dead process) gets one, while the repo and the server are under their limits.

Each run is driven by its own ``ci-runner resume RUN_ID`` process, as the worker
does, rather than by a thread with its own Engine: its environment is built for it
(the repo's secrets only through its secrets file, never the server's environment),
it puts the run's pipeline and steps in their sandbox, a run that crashes
or leaks memory takes nothing else down, and a server killed with SIGKILL leaves its
runs going (their drivers hold the leases), with nothing to reconstruct.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_runner import paths
from ci_runner.dispatch.confine import PASS_ENV
from ci_runner.dispatch.envelope import unwrap_params
from ci_runner.errors import CIRunnerError, InvalidState, PipelineNotFound, UsageError, to_record
from ci_runner.server.config import Config, RepoConfig
from ci_runner.server.forges import valid_ref_name
from ci_runner.store import deliveries as store

if TYPE_CHECKING:
    from sqlite3 import Row

    from ci_runner.dispatch.runs import RunRequest
    from ci_runner.engine.driver import Engine
    from ci_runner.workspace import RepoInfo

log = logging.getLogger("ci_runner.server")

RETRY_DELAYS_S = (2.0, 10.0, 60.0, 300.0)
MIN_TICK_S = 0.05  # a failed fetch is tried again this often
# What a pipeline process may see of the server's environment; the rest (webhook
# secrets, API tokens, every repo's granted secrets) stays in the server.
_PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
               "VIRTUAL_ENV", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH",
               "DOCKER_TLS_VERIFY", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "SSL_CERT_FILE",
               "SSL_CERT_DIR", "CI_RUNNER_IMAGE_PREFIX")
_PASSED_PREFIXES = ("LC_", "PYTHON")


@dataclass(frozen=True)
class _RunInfo:
    tenant: str
    untrusted: bool


def driver_outcome(run_id: str, code: int) -> str:
    """What became of a run whose driver process exited, for the server's log, in the
    words `ci-runner show` uses ("failed: step 'test': ...", "waiting for approval")."""
    from ci_runner.statuses import phrase, waiting_for
    from ci_runner.store import connect
    from ci_runner.store import journal as j

    try:
        conn = connect(paths.database())
        try:
            row = j.get_instance(conn, run_id)
        finally:
            conn.close()
    except Exception:  # a log line must not take the loop down
        return f"is no longer driven (its driver exited with code {code})"
    status = str(row["status"])
    said = phrase(status, waiting_for=waiting_for(status, j.loads(row["waiting_for"])))
    if status in ("waiting", "waiting_for_event"):
        return f"{said}: it holds no process until then"
    if status == "queued":
        return "handed back, queued for the next driver"
    if status == "running":  # its driver died under it: the next pass takes it over
        return f"lost its driver (exit code {code}); the next pass drives it again"
    error = j.loads(row["error"])
    message = str(error.get("message") or "") if isinstance(error, dict) else ""
    if status == "errored" and message:
        return f"{said}: {message.splitlines()[0]}"
    return said


def driver_environment(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the processes that drive runs: an allowlist, not a denylist."""
    keep = set(_PASSED_ENV) | set(config.server.pass_env)
    env = {k: v for k, v in environ.items() if k in keep or k.startswith(_PASSED_PREFIXES)}
    for name in config.secret_values:  # granted secrets reach steps only via their file
        if name not in config.server.pass_env:
            env.pop(name, None)
    env["CI_RUNNER_HOME"] = str(paths.home())
    env[paths.DB_ENV] = str(paths.database())  # a fleet's database, from the config too
    # Which of these a sandboxed pipeline process still gets (see dispatch.confine).
    env[PASS_ENV] = ",".join(config.server.pass_env)
    # The server's SIGINT at shutdown hands a run back for its next start.
    env["CI_RUNNER_ON_INTERRUPT"] = "requeue"
    return env


def fork_refusal() -> str | None:
    """Why runs of fork pull requests cannot be sandboxed here (they need bubblewrap),
    or None when they can: one line naming the cause and the fix."""
    from ci_runner.sandbox import probe

    try:
        probe("bwrap")
    except CIRunnerError as exc:
        return exc.message
    return None


def write_secrets_files(config: Config) -> dict[tuple[str, str], Path]:
    """Each repo's granted secrets in a file of its own (0600, in a 0700 folder), as
    ``secrets_file`` of its runs: values never go in the stored envelope."""
    import yaml

    folder = paths.home() / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = {}
    for repo in config.repos:
        if not repo.secrets:
            continue
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in repo.name)
        path = folder / f"webhook-{repo.forge}-{slug}.yaml"
        text = yaml.safe_dump({n: config.secret_values[n] for n in repo.secrets},
                              default_flow_style=False, allow_unicode=False, width=2**31 - 1)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        tmp.chmod(0o600)
        tmp.replace(path)
        files[repo.key] = path
    return files


class Dispatcher:
    def __init__(
        self,
        config: Config,
        *,
        driver_env: Mapping[str, str],
        secrets_files: Mapping[tuple[str, str], Path],
        sandbox: str | None = None,
        refuse_forks: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        drive: bool = True,
    ) -> None:
        """``sandbox``: the mode every run gets (auto, bwrap, landlock, off; a fork's
        run always gets bubblewrap); ``refuse_forks``: why fork pull requests cannot
        run here (no bubblewrap), when that is so: they then start no run."""
        from ci_runner.workspace.mirror import mirror_path

        self.config = config
        self.driver_env = dict(driver_env)
        self.secrets_files = dict(secrets_files)
        self.sandbox = sandbox
        self.refuse_forks = refuse_forks
        self.on_change = on_change
        self.drive = drive  # False (`serve --no-workers`): workers elsewhere drive the runs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._info: dict[str, _RunInfo] = {}
        self._retry_at: dict[int, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ci-runner-dispatcher",
                                        daemon=True)
        # A repo's runs are known by their tenant: the key of its mirror.
        self.by_tenant = {"local:" + str(mirror_path(r.forge, r.name).resolve()): r
                          for r in config.repos}

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, grace_s: float) -> None:
        """Start nothing more; let running drivers finish for ``grace_s``, then interrupt
        them: each releases its run, which the next start picks up where it stopped."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + grace_s
        # A fetch from a slow forge may hold the loop: it is not waited for past the grace
        # period (its delivery stays accepted, or its run queued, for the next start).
        self._thread.join(timeout=max(grace_s, 1.0))
        while self.running and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for proc in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for run_id, proc in self.running.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("the driver of %s did not stop; killing it", run_id)
                proc.kill()
                proc.wait()
        self.running.clear()

    # -- the loop ----------------------------------------------------------------

    def _loop(self) -> None:
        from ci_runner.dispatch.runs import reap_orphan
        from ci_runner.engine.driver import Engine

        # A zero lease: start_run's claim lapses at once, so the run's own driver (a
        # `ci-runner resume` process) can take it.
        engine = Engine(paths.database(), lease_ttl_s=0.0, reap_orphan=reap_orphan)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self.tick(engine)
                except Exception:
                    log.exception("the dispatcher loop failed; trying again")
                self._wake.wait(self.config.server.poll_s)
                # A burst of deliveries wakes us hundreds of times a second: take them in
                # batches instead, so the intake (same process, same GIL) keeps the CPU.
                self._stop.wait(max(0.0, began + MIN_TICK_S - time.monotonic()))
                self._wake.clear()
        finally:
            engine.close()

    # While a backlog of deliveries is turned into runs (a fetch and a store each, tens of
    # ms), finished drivers are reaped and runs started at least this often: intake
    # must not starve the runs already waiting for a slot.
    DRIVE_EVERY_S = 0.05

    def tick(self, engine: Engine) -> None:
        self.start_deliveries(engine)
        self._drive(engine)

    def _drive(self, engine: Engine) -> None:
        if self._stop.is_set() or not self.drive:  # from here on, stop() owns the drivers
            return
        self._reap()
        self._schedule(engine)

    # -- deliveries -> runs ----------------------------------------------------------

    def start_deliveries(self, engine: Engine) -> int:
        """Start a run for each waiting delivery; returns how many were started."""
        started = 0
        waiting = store.waiting(engine.conn)
        if not waiting:
            return 0
        for forge, name in {(r["forge"], r["repo"]) for r in waiting}:
            found = self.config.repo(forge, name)
            if found is None:
                continue
            for kind, on in (("branch", found.supersede_branches),
                             ("pr", found.supersede_pull_requests)):
                if on and store.supersede_waiting(engine.conn, forge, name, kind):
                    waiting = []  # some were skipped: read again
        driven = time.monotonic()
        for row in waiting or store.waiting(engine.conn):
            if self._stop.is_set():
                break
            if time.monotonic() - driven >= self.DRIVE_EVERY_S:
                self._drive(engine)
                driven = time.monotonic()
            if self._retry_at.get(row["id"], 0.0) > time.monotonic():
                continue
            repo = self.config.repo(row["forge"], row["repo"])
            if repo is None:
                store.set_state(engine.conn, row["id"], "failed", to_record(UsageError(
                    f"{row['repo']} on {row['forge']} is no longer in the config")))
                continue
            if self._supersedes(repo, row) and store.newer_in_lane(engine.conn, row):
                store.set_state(engine.conn, row["id"], "superseded")
                continue
            if self._start_one(engine, repo, row):
                started += 1
        return started

    def _start_one(self, engine: Engine, repo: RepoConfig, row: Row) -> bool:
        from ci_runner.dispatch.runs import start_run
        from ci_runner.engine.driver import new_instance_id

        if row["is_fork"] and self.refuse_forks is not None:
            # Refused before the fork's code is even fetched.
            error = UsageError(f"pull requests from forks are refused here: {self.refuse_forks}")
            log.warning("delivery %s of %s starts no run: %s", row["delivery_id"], repo.name,
                        error.message)
            store.set_state(engine.conn, row["id"], "failed", to_record(error))
            return False
        run_id = store.claim_run_id(engine.conn, row["id"], new_instance_id())
        if not store.instance_exists(engine.conn, run_id):
            try:
                mirror = self._fetch(repo, row)
                if row["attempts"]:  # an earlier attempt may have forked, then died
                    from ci_runner.workspace import remove

                    remove(mirror, paths.worktrees() / run_id)
                start_run(engine, self._request(repo, row, mirror.root), run_id=run_id)
            except (PipelineNotFound, UsageError) as exc:
                log.warning("delivery %s of %s starts no run: %s", row["delivery_id"],
                            repo.name, exc)
                store.set_state(engine.conn, row["id"], "failed", to_record(exc))
                return False
            except Exception as exc:
                attempts = int(row["attempts"]) + 1
                if attempts > len(RETRY_DELAYS_S):
                    log.warning("delivery %s of %s failed for good: %s", row["delivery_id"],
                                repo.name, exc)
                    store.set_state(engine.conn, row["id"], "failed", to_record(exc))
                else:
                    log.warning("delivery %s of %s: %s (trying again)", row["delivery_id"],
                                repo.name, exc)
                    self._retry_at[row["id"]] = time.monotonic() + RETRY_DELAYS_S[attempts - 1]
                return False
        store.set_state(engine.conn, row["id"], "started")
        self._retry_at.pop(row["id"], None)
        log.info("delivery %s of %s: run %s at %s", row["delivery_id"], repo.name, run_id,
                 row["sha"][:12])
        if self._supersedes(repo, row):
            self._cancel_older(engine, row)
        self.on_change()
        return True

    def _fetch(self, repo: RepoConfig, row: Row) -> RepoInfo:
        from ci_runner.workspace.mirror import ensure_mirror, fetch, mirror_path

        kind, _, name = str(row["lane"]).partition(":")
        folder = {"branch": "heads", "tag": "tags", "pr": "pull"}.get(kind)
        # The names were checked when the delivery was taken in; check again before git.
        if folder is None or not valid_ref_name(name):
            raise UsageError(f"delivery {row['delivery_id']} names no valid ref ({kind})")
        source = row["source_ref"]
        if source is not None and not valid_ref_name(source):
            raise UsageError(f"delivery {row['delivery_id']} names no valid source ref")
        mirror = ensure_mirror(mirror_path(repo.forge, repo.name))
        fetch(mirror, repo.clone_url, row["sha"], into=f"refs/ci-runner/{folder}/{name}",
              source=source)
        return mirror

    def _request(self, repo: RepoConfig, row: Row, mirror: Path) -> RunRequest:
        from ci_runner.dispatch.runs import RunRequest
        from ci_runner.server.gate import GATE_LOADER

        untrusted = bool(row["is_fork"])
        params = {"forge": repo.forge, "event": row["event"], "action": row["action"],
                  "repo": repo.name, "branch": row["branch"], "tag": row["tag"], "pr": row["pr"],
                  "fork": untrusted, "sender": row["sender"], "delivery": row["delivery_id"]}
        extra: dict[str, Any] = {
            "forge": repo.forge, "delivery": row["delivery_id"], "repo_name": repo.name,
            "ref": row["ref"], "event": row["event"], "pr": row["pr"], "branch": row["branch"],
            "sender": row["sender"], "untrusted": untrusted,
        }
        if isinstance(paths.database(), str):  # shared: a worker on another host fetches it
            extra["clone_url"] = repo.clone_url
        if untrusted:
            # No secrets file (not even the tenant's store) and the gate loader.
            extra |= {"loader": GATE_LOADER, "secrets_file": None,
                      "needs_approval": repo.fork_prs == "approve"}
        return RunRequest(
            repo_path=mirror, rev=row["sha"], params=params, pipeline=repo.pipeline,
            trigger="webhook", secrets_file=None if untrusted else self.secrets_files.get(
                repo.key), extra=extra, sandbox=self.sandbox,
            timeout_s=self.config.server.run_timeout_s,
        )

    def _supersedes(self, repo: RepoConfig, row: Row) -> bool:
        if row["pr"] is not None:
            return repo.supersede_pull_requests
        return repo.supersede_branches

    def _cancel_older(self, engine: Engine, row: Row) -> None:
        from ci_runner.dispatch.control import cancel

        for old in store.older_live_runs(engine.conn, row):
            try:
                cancel(engine, old)
                log.info("run %s superseded by delivery %s: cancelled", old, row["delivery_id"])
            except (InvalidState, CIRunnerError) as exc:
                log.info("could not cancel superseded run %s: %s", old, exc)

    # -- driving -----------------------------------------------------------------------

    def _schedule(self, engine: Engine) -> None:
        from ci_runner.dispatch.control import needs_driver

        if self._stop.is_set():
            return
        wanted = [r for r in needs_driver(engine) if r not in self.running]
        if not wanted:
            return
        busy = self._busy(engine)
        per_tenant = Counter(busy.values())
        for run_id in wanted:
            if len(busy) >= self.config.server.workers:
                break
            info = self._run_info(engine, run_id)
            repo = self.by_tenant.get(info.tenant)
            if repo is not None and per_tenant[info.tenant] >= repo.concurrency:
                continue  # stays queued in the database until a slot frees
            self._spawn(run_id, info)
            busy[run_id] = info.tenant
            per_tenant[info.tenant] += 1

    def _busy(self, engine: Engine) -> dict[str, str]:
        """Runs being driven now, by our drivers or by live processes of others."""
        from ci_runner.engine import leases
        from ci_runner.store.db import now

        t = now()
        busy = {
            str(row["id"]): str(row["tenant"]) for row in store.running(engine.conn)
            if (row["lease_expires_at"] or 0) > t and leases.owner_alive(row["owner"])
        }
        for run_id in self.running:
            busy[run_id] = self._run_info(engine, run_id).tenant
        return busy

    def _run_info(self, engine: Engine, run_id: str) -> _RunInfo:
        import json

        info = self._info.get(run_id)
        if info is None:
            row = engine.get(run_id)
            try:
                metadata, _ = unwrap_params(json.loads(row["payload"]))
            except CIRunnerError:
                metadata = {}
            info = _RunInfo(str(row["tenant"]), bool(metadata.get("untrusted")))
            self._info[run_id] = info
        return info

    def _spawn(self, run_id: str, info: _RunInfo) -> None:
        # The run's own sandbox (its pipeline process and steps) is made by its driver.
        argv = [sys.executable, "-m", "ci_runner", "resume", run_id]
        log_dir = paths.run_logs(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "driver.log").open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.driver_env, start_new_session=True,
            )
        self.running[run_id] = proc
        # Its slot is free the moment it exits: the loop is woken to reap it and start
        # the next run, rather than at its next poll (a second, by default, per run).
        threading.Thread(target=self._wake_on_exit, args=(proc,), daemon=True,
                         name=f"ci-runner-driver-{run_id}").start()
        log.info("driving run %s", run_id)
        self.on_change()

    def _wake_on_exit(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(Exception):
            proc.wait()
        self._wake.set()

    def _reap(self) -> None:
        for run_id, proc in list(self.running.items()):
            code = proc.poll()
            if code is not None:
                del self.running[run_id]
                self._info.pop(run_id, None)
                log.info("run %s %s", run_id, driver_outcome(run_id, code))
                self.on_change()
