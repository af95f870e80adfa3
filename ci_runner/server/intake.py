"""Taking a delivery in: authenticate the raw body, parse it, decide whether it starts a
run, and commit it durably before the forge gets its 2xx.

Commits are grouped: one writer thread takes every delivery waiting for it into one
``BEGIN IMMEDIATE`` transaction (one fsync), so acceptance keeps up with a burst of
hooks on a slow disk without giving up the guarantee that a 2xx means stored.

A group shares its fate, so one delivery must not sink the others: values the
database cannot hold are refused (400) while parsing, and should a group commit fail
anyway for anything but a lock held too long, its deliveries are committed again one
by one, so only the one at fault is refused. A delivery id reused with another body
is refused (409) and logged, never silently taken for a redelivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import sqlite3
import threading
import time
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
_Item = tuple[dict[str, Any], "Future[store.Outcome]"]


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
        # When a commit last failed for want of storage (None: never, or fixed since):
        # /health then probes the database again at once.
        self.failed_at: float | None = None

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
            digest = await asyncio.to_thread(_sha256, body) if reason is None else ""
        else:
            delivery, repo, reason = self.check(forge, headers, body)
            digest = _sha256(body)
        if reason is not None:
            return 200, {"delivery": delivery.delivery_id, "ignored": reason}
        record = _record(delivery, repo.name, digest)
        outcome = await asyncio.wrap_future(self.submit(record))
        if outcome == "conflict":
            log.warning("delivery %s of %s on %s refused: its id was taken before by a"
                        " delivery with another body", delivery.delivery_id, repo.name, forge)
            raise HookRejected(409, f"delivery id {delivery.delivery_id} was already taken by"
                                    " a delivery with another body: nothing stored; a"
                                    " redelivery must repeat the body byte for byte")
        return 202, {"delivery": delivery.delivery_id, "accepted": True,
                     "duplicate": outcome == "duplicate"}

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

    def submit(self, record: dict[str, Any]) -> Future[store.Outcome]:
        """Queue a delivery row for the next group commit; resolves to its outcome
        (``new``, ``duplicate`` or ``conflict``) or raises ``HookRejected``."""
        future: Future[store.Outcome] = Future()
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

    def _commit(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        try:
            outcomes = store.accept(conn, [record for record, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or store.is_busy(exc):
                self._refuse(batch, exc)
                return
            # Whatever one row did wrong must not fail the others: each on its own.
            log.warning("a group commit of %d deliveries failed (%s: %s); committing them"
                        " one by one", len(batch), type(exc).__name__, exc)
            for item in batch:
                self._commit(conn, [item])
            return
        self.failed_at = None
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            future.set_result(outcome)
        if "new" in outcomes:
            self.on_accept()

    def _refuse(self, batch: list[_Item], exc: Exception) -> None:
        if _storage_failure(exc):
            log.error("could not store %d deliveries: %s: %s", len(batch),
                      type(exc).__name__, exc)
            self.failed_at = time.monotonic()
            failure = HookRejected(503, f"the delivery could not be stored ({type(exc).__name__}"
                                        f": {exc}): the forge will redeliver")
        else:  # the row itself: a value that slipped past parsing
            (record, _), = batch
            log.warning("delivery %s of %s refused: it holds a value the database cannot"
                        " store (%s: %s)", record["delivery_id"], record["repo"],
                        type(exc).__name__, exc)
            failure = HookRejected(400, "the delivery holds a value that cannot be stored"
                                        f" ({type(exc).__name__}): nothing stored")
        for _, future in batch:
            future.set_exception(failure)


def _storage_failure(exc: Exception) -> bool:
    """Whether the database failed (locked, full, unwritable), not the row."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.DataError)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _record(delivery: Delivery, repo_name: str, body_sha256: str) -> dict[str, Any]:
    return {
        "forge": delivery.forge, "delivery_id": delivery.delivery_id, "repo": repo_name,
        "event": delivery.kind, "action": delivery.action, "sha": delivery.sha,
        "ref": delivery.ref, "branch": delivery.branch, "tag": delivery.tag, "pr": delivery.pr,
        "is_fork": int(delivery.is_fork), "sender": delivery.sender, "lane": delivery.lane,
        "source_ref": delivery.source_ref, "body_sha256": body_sha256,
    }
