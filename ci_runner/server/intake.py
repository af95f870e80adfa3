"""Taking a delivery in: authenticate the raw body, parse it, decide whether it starts a
run, and commit it durably before the forge gets its 2xx.

Commits are grouped: one writer thread takes every delivery waiting for it into one
``BEGIN IMMEDIATE`` transaction (one fsync), so acceptance keeps up with a burst of
hooks on a slow disk without giving up the guarantee that a 2xx means stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ci_runner.server.config import Config, RepoConfig
from ci_runner.server.forges import Delivery, HookRejected, authenticate, decide, parse
from ci_runner.store import deliveries as store

log = logging.getLogger("ci_runner.server")

_BATCH_MAX = 512
_INLINE_MAX = 256 * 1024
_Item = tuple[dict[str, Any], "Future[bool]"]


class Intake:
    """Receives deliveries for the HTTP layer; ``on_accept`` is called after each commit
    that stored something new (the dispatcher's wake-up)."""

    def __init__(self, config: Config, db_path: Path, on_accept: Callable[[], None]) -> None:
        self.config = config
        self.db_path = db_path
        self.on_accept = on_accept
        self.accepting = True
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._commit_loop, name="ci-runner-intake",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking deliveries; those already queued are committed first."""
        self.accepting = False
        self._queue.put(None)
        self._thread.join()

    async def receive(self, forge: str, headers: Mapping[str, str],
                      body: bytes) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON answer for one delivery; raises ``HookRejected``."""
        if not self.accepting:
            raise HookRejected(503, "the server is shutting down: the forge will redeliver")
        if len(body) > _INLINE_MAX:  # hashing and parsing megabytes: not on the event loop
            delivery, repo, reason = await asyncio.to_thread(self.check, forge, headers, body)
        else:
            delivery, repo, reason = self.check(forge, headers, body)
        if reason is not None:
            return 200, {"delivery": delivery.delivery_id, "ignored": reason}
        new = await asyncio.wrap_future(self.submit(_record(delivery, repo.name)))
        return 202, {"delivery": delivery.delivery_id, "accepted": True, "duplicate": not new}

    def check(self, forge: str, headers: Mapping[str, str],
              body: bytes) -> tuple[Delivery, RepoConfig, str | None]:
        """Authenticate, parse and decide: the delivery, its repo, and why it starts
        nothing (None when it starts a run)."""
        # Authentication comes first: nothing of an unsigned body is even parsed.
        signed_by = authenticate(forge, headers, body, self.config.repos_of(forge))
        delivery = parse(forge, headers, body)
        repo = next((r for r in signed_by if r.name.lower() == delivery.repo.lower()), None)
        if repo is None:
            if self.config.repo(forge, delivery.repo) is None:
                raise HookRejected(403, f"{delivery.repo} on {forge} is not in the server's"
                                        " config: add it under repos")
            raise HookRejected(403, f"the signature is not made with the secret configured for"
                                    f" {delivery.repo} on {forge}")
        return delivery, repo, decide(delivery, repo)

    def submit(self, record: dict[str, Any]) -> Future[bool]:
        """Queue a delivery row for the next group commit; resolves to True when new."""
        future: Future[bool] = Future()
        self._queue.put((record, future))
        return future

    def _commit_loop(self) -> None:
        conn = store.intake_connection(self.db_path)
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: Any, batch: list[_Item]) -> None:
        try:
            flags = store.accept(conn, [record for record, _ in batch])
        except Exception as exc:
            log.exception("could not store %d deliveries", len(batch))
            failure = HookRejected(503, f"the delivery could not be stored ({type(exc).__name__})"
                                        ": the forge will redeliver")
            for _, future in batch:
                future.set_exception(failure)
            return
        for (_, future), flag in zip(batch, flags, strict=True):
            future.set_result(flag)
        if any(flags):
            self.on_accept()


def _record(delivery: Delivery, repo_name: str) -> dict[str, Any]:
    return {
        "forge": delivery.forge, "delivery_id": delivery.delivery_id, "repo": repo_name,
        "event": delivery.kind, "action": delivery.action, "sha": delivery.sha,
        "ref": delivery.ref, "branch": delivery.branch, "tag": delivery.tag, "pr": delivery.pr,
        "is_fork": int(delivery.is_fork), "sender": delivery.sender, "lane": delivery.lane,
        "source_ref": delivery.source_ref,
    }
