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

Every delivery gets one line in the server's log saying what became of it (accepted,
a duplicate, ignored and why, refused with its HTTP status and why; the dispatcher
adds the run it started). Those that store nothing to run are also noted in the
capped ``delivery_log`` table for ``GET /api/deliveries``, by the same writer thread
without an fsync. A refused delivery is noted from its headers only: nothing of an
unauthenticated body is parsed or kept, and at most ``_NOTES_PENDING`` notes wait
for the writer (past that they are counted, not queued), so a flood of bad
signatures costs neither memory nor disk beyond the cap.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_runner.server.config import Config, RepoConfig
from ci_runner.server.forges import (
    SPECS,
    Delivery,
    HookRejected,
    authenticate,
    decide,
    header,
    parse,
)
from ci_runner.store import deliveries as store

log = logging.getLogger("ci_runner.server")

_BATCH_MAX = 512
_INLINE_MAX = 256 * 1024
_NOTES_PENDING = 4096
_Item = tuple[dict[str, Any], "Future[store.Outcome]"]


@dataclass(frozen=True)
class _Note:
    """A ``delivery_log`` row: a delivery that stored nothing to run."""

    row: dict[str, Any]


@dataclass
class _Seen:
    """What is known of a delivery so far: whether a configured secret signed it, for
    which repo, and the delivery once parsed."""

    signed: bool = False
    repo: str | None = None
    delivery: Delivery | None = None


class Intake:
    """Receives deliveries for the HTTP layer; ``on_accept`` is called after each commit
    that stored something new (the dispatcher's wake-up)."""

    def __init__(self, config: Config, db_path: Path | str, on_accept: Callable[[], None]) -> None:
        self.config = config
        self.db_path = db_path
        self.on_accept = on_accept
        self.accepting = True
        self._queue: queue.SimpleQueue[_Item | _Note | None] = queue.SimpleQueue()
        self._note_slots = threading.BoundedSemaphore(_NOTES_PENDING)
        self.notes_dropped = 0  # refusals noted in the log only: the writer was behind
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

    async def receive(self, forge: str, headers: Mapping[str, str], body: bytes, *,
                      client: str | None = None) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON answer for one delivery; raises ``HookRejected``.
        Either way the delivery's outcome is logged (and noted, unless it was stored)."""
        seen = _Seen()
        try:
            return await self._receive(forge, headers, body, seen, client)
        except HookRejected as exc:
            self.refused(forge, headers, exc, client=client, seen=seen)
            raise

    async def _receive(self, forge: str, headers: Mapping[str, str], body: bytes,
                       seen: _Seen, client: str | None) -> tuple[int, dict[str, Any]]:
        if not self.accepting:
            raise HookRejected(503, "the server is shutting down: the forge will redeliver")
        if len(body) > _INLINE_MAX:  # hashing and parsing megabytes: not on the event loop
            delivery, repo, reason = await asyncio.to_thread(self.check, forge, headers, body,
                                                             seen)
            digest = await asyncio.to_thread(_sha256, body) if reason is None else ""
        else:
            delivery, repo, reason = self.check(forge, headers, body, seen)
            digest = _sha256(body)
        if reason is not None:
            log.info("%s: ignored: %s", _about(forge, headers, seen, client), reason)
            self._note(_log_row(forge, headers, seen, client, outcome="ignored",
                                http_status=200, reason=reason))
            return 200, {"delivery": delivery.delivery_id, "ignored": reason}
        record = _record(delivery, repo.name, digest)
        outcome = await asyncio.wrap_future(self.submit(record))
        if outcome == "conflict":
            raise HookRejected(409, f"delivery id {delivery.delivery_id} was already taken by"
                                    " a delivery with another body: nothing stored; a"
                                    " redelivery must repeat the body byte for byte")
        if outcome == "duplicate":
            log.info("%s: a redelivery of a delivery already stored: no second run",
                     _about(forge, headers, seen, client))
        else:
            log.info("%s: accepted: a run will start", _about(forge, headers, seen, client))
        return 202, {"delivery": delivery.delivery_id, "accepted": True,
                     "duplicate": outcome == "duplicate"}

    def check(self, forge: str, headers: Mapping[str, str], body: bytes,
              seen: _Seen | None = None) -> tuple[Delivery, RepoConfig, str | None]:
        """Authenticate, parse and decide: the delivery, its repo, and why it starts
        nothing (None when it starts a run). ``seen`` learns what is known as it goes,
        for the log line of a delivery refused half way."""
        seen = seen or _Seen()
        # Authentication comes first: nothing of an unsigned body is even parsed.
        signed_by = authenticate(forge, headers, body, self.config.repos_of(forge))
        seen.signed = True
        if len({r.name.lower() for r in signed_by}) == 1:  # a malformed body is still theirs
            seen.repo = signed_by[0].name
        delivery = parse(forge, headers, body)
        seen.delivery = delivery
        repo = next((r for r in signed_by if r.name.lower() == delivery.repo.lower()), None)
        if repo is None:
            seen.repo = None  # signed by another repo's secret: it is not theirs to read
            if self.config.repo(forge, delivery.repo) is None:
                raise HookRejected(403, f"{delivery.repo} on {forge} is not in the server's"
                                        " config: add it under repos")
            raise HookRejected(403, f"the signature is not made with the secret configured for"
                                    f" {delivery.repo} on {forge}")
        seen.repo = repo.name
        return delivery, repo, decide(delivery, repo)

    def refused(self, forge: str, headers: Mapping[str, str], exc: HookRejected, *,
                client: str | None = None, seen: _Seen | None = None) -> None:
        """Log and note a delivery refused with ``exc`` (its HTTP status and why)."""
        seen = seen or _Seen()
        log.warning("%s: refused (%d): %s", _about(forge, headers, seen, client), exc.status,
                    exc.message)
        self._note(_log_row(forge, headers, seen, client, outcome="refused",
                            http_status=exc.status, reason=exc.message))

    def _note(self, row: dict[str, Any]) -> None:
        if not self._note_slots.acquire(blocking=False):
            self.notes_dropped += 1  # its log line says it all
            return
        self._queue.put(_Note(row))

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
                batch, notes = [], []
                item: _Item | _Note | None = first
                while item is not None:
                    if isinstance(item, _Note):
                        notes.append(item.row)
                    else:
                        batch.append(item)
                    if len(batch) + len(notes) >= _BATCH_MAX:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                if batch:
                    self._commit(conn, batch)
                if notes:
                    self._write_notes(conn, notes)
        finally:
            conn.close()

    def _write_notes(self, conn: sqlite3.Connection, notes: list[dict[str, Any]]) -> None:
        try:
            store.note(conn, notes)
        except Exception as exc:  # the log lines were written; the table can wait
            log.warning("could not note %d deliveries in the delivery log: %s: %s",
                        len(notes), type(exc).__name__, exc)
        finally:
            for _ in notes:
                self._note_slots.release()

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
    """Whether the database failed (locked, full, unwritable, unreachable), not the row."""
    from ci_runner.store.db import storage_failure

    return storage_failure(exc)


def _shown(value: str | None, limit: int = 200) -> str | None:
    """A value fit for a log line: printable (no control or bidi characters), short."""
    if value is None:
        return None
    value = "".join(c if c.isprintable() else "?" for c in value)
    return value if len(value) <= limit else value[:limit - 3] + "..."


def _about(forge: str, headers: Mapping[str, str], seen: _Seen, client: str | None) -> str:
    """``delivery ID (forge event, repo, branch main at SHA)``, from what is known:
    the headers alone for a delivery not authenticated."""
    delivery = seen.delivery
    spec = SPECS[forge]
    if delivery is None:
        ident = next((v for h in spec.delivery_headers if (v := header(headers, h))), None)
        event = header(headers, spec.event_header)
        what = [f"{forge} {_shown(event, 60)}" if event else forge]
    else:
        ident, event = delivery.delivery_id, delivery.event
        what = [f"{forge} {_shown(event, 60)}"]
    if seen.repo is not None:
        what.append(seen.repo)
    if delivery is not None:
        where = (f"pull request {delivery.pr}" if delivery.pr is not None
                 else f"tag {delivery.tag}" if delivery.tag is not None
                 else f"branch {delivery.branch}" if delivery.branch is not None else None)
        if where is not None:
            what.append(where + (f" at {delivery.sha[:12]}" if delivery.sha else ""))
    if not seen.signed and client:
        what.append(f"from {client}")
    return f"delivery {_shown(ident, 100) or '(no id)'} ({', '.join(what)})"


def _log_row(forge: str, headers: Mapping[str, str], seen: _Seen, client: str | None, *,
             outcome: str, http_status: int, reason: str) -> dict[str, Any]:
    spec = SPECS[forge]
    delivery = seen.delivery
    row: dict[str, Any] = {
        "forge": forge, "outcome": outcome, "http_status": http_status,
        "reason": _shown(reason, 500), "signed": int(seen.signed), "repo": seen.repo,
        "client": _shown(client, 100), "received_at": time.time(),
        "delivery_id": _shown(next((v for h in spec.delivery_headers
                                    if (v := header(headers, h))), None)),
        "event": _shown(header(headers, spec.event_header), 100),
    }
    if delivery is not None:
        row |= {"delivery_id": delivery.delivery_id, "event": delivery.event,
                "action": delivery.action, "sha": delivery.sha, "ref": delivery.ref,
                "branch": delivery.branch, "tag": delivery.tag, "pr": delivery.pr,
                "sender": delivery.sender}
    return row


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
