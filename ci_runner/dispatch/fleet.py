"""Workers on many hosts sharing one PostgreSQL database.

``FleetWorker`` is `ci-runner worker` when the database is PostgreSQL: it claims runs
with ``store.claims.claim`` (SKIP LOCKED, each repo's concurrency held by slot rows),
hands each to a `ci-runner resume` process of its own, and sleeps on ``LISTEN`` until
a run may have become claimable (with a slow poll for timers falling due).

A host drives a run in its own ``CI_RUNNER_HOME``: ``localized`` points the run's
worktree there and, for a run that came from a webhook, its repository at this host's
own mirror of the repo's clone URL, fetching the run's sha into it when missing.
What stays on the host: mirrors, worktrees, the artifact store, the step cache's
files; what any host sees: everything in the database, step logs included.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ci_runner import paths
from ci_runner.dispatch.worker import Worker


def localize(conn: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's metadata for driving it on this host (``localized``); when it changed,
    stored too, so the run's pipeline process, ``show`` and a later takeover all see
    where it is driven now."""
    from ci_runner.dispatch.envelope import unwrap_params, wrap_params
    from ci_runner.store import journal as j

    metadata, params = unwrap_params(json.loads(row["payload"]))
    local = localized(metadata)
    if local != metadata:
        j.set_payload(conn, str(row["id"]), wrap_params(local, params))
    return local


def localized(metadata: dict[str, Any]) -> dict[str, Any]:
    """The run's metadata for driving it on this host: unchanged for a run created here;
    for one created on another host (its worktree is not under this home), its
    worktree under this home and, when it names a clone URL, this host's mirror."""
    run_id = str(metadata.get("run_id") or "")
    workspace = Path(str(metadata.get("workspace") or ""))
    ours = paths.worktrees().resolve()
    if not run_id or workspace.resolve().is_relative_to(ours):
        return metadata
    local = {**metadata, "workspace": str(ours / run_id)}
    url, forge, name = metadata.get("clone_url"), metadata.get("forge"), metadata.get("repo_name")
    if isinstance(url, str) and isinstance(forge, str) and isinstance(name, str):
        local["repo"] = str(_mirror_with(forge, name, url, metadata))
    return local


def _mirror_with(forge: str, name: str, url: str, metadata: dict[str, Any]) -> Path:
    """This host's mirror of the repo, holding the run's sha (fetched when missing)."""
    from ci_runner.workspace.mirror import ensure_mirror, fetch, has_commit, mirror_path

    sha = str(metadata["sha"])
    mirror = ensure_mirror(mirror_path(forge, name))
    if not has_commit(mirror, sha):
        ref = str(metadata.get("ref") or "")
        fetch(mirror, url, sha, into=f"refs/ci-runner/runs/{metadata['run_id']}",
              source=ref if ref.startswith("refs/") else None)
    return mirror.root


class FleetWorker(Worker):
    """`ci-runner worker` on PostgreSQL: claims instead of a scan of the database."""

    def __init__(self, *, concurrency: int, poll_s: float, url: str) -> None:
        super().__init__(concurrency=concurrency, poll_s=poll_s)
        self.url = url

    def serve(self, *, once: bool = False) -> None:
        from ci_runner.engine.leases import LEASE_TTL_S, owner_id
        from ci_runner.store import connect
        from ci_runner.store.claims import CHANNEL, claim
        from ci_runner.store.pg import open_raw, shown

        signal.signal(signal.SIGTERM, self._stop)
        print(f"worker {os.getpid()}: driving up to {self.concurrency} runs from"
              f" {shown(self.url)}", flush=True)
        conn = connect(self.url)
        listener = open_raw(self.url)
        listener.execute(f"LISTEN {CHANNEL}")
        owner = owner_id()
        try:
            while not self.stopping:
                self._reap_finished()
                free = self.concurrency - len(self.running)
                taken = claim(conn, owner=owner, ttl_s=LEASE_TTL_S, limit=free) if free else []
                for got in taken:
                    self._hand_over(got.run_id, owner)
                if once and not self.running and not taken:
                    return
                if not taken or len(self.running) >= self.concurrency:
                    self._wait(listener, 0.05 if once else self.poll_s)
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
            conn.close()
        self._shutdown()

    def _wait(self, listener: Any, timeout_s: float) -> None:
        """Until a notification, a driver of ours exits, or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([listener.fileno()], [], [], min(left, 0.25))
                if ready:
                    # Drain every pending notification: one claim pass answers them all.
                    for _ in listener.notifies(timeout=0):
                        pass
                    return
            if any(proc.poll() is not None for proc in self.running.values()):
                return

    def _hand_over(self, run_id: str, owner: str) -> None:
        from ci_runner.store.claims import HANDOVER_ENV

        # The driver takes the lease over from us (our claim); our SIGINT at shutdown
        # hands the run back for the next worker.
        self._start(run_id, {HANDOVER_ENV: owner})
