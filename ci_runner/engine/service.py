"""The driver's side of a running workflow: answers the Step's requests by writing the
journal, and tells an observer (the live view) what happened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ci_runner.errors import UsageError
from ci_runner.store.journal import Journal

Observer = Callable[[dict[str, Any]], None]


class Rules(Protocol):
    """What the embedding application decides about a run's requests (the engine
    itself knows no tenants' trust levels or step selections)."""

    def cache_scopes(self, instance: Mapping[str, Any]) -> tuple[str, list[str]]:
        """Where the instance's cache entries are written, and where looked up (in order)."""
        ...

    def may_skip(
        self, instance: Mapping[str, Any], name: str, kind: str, *, after_skipped_wait: bool
    ) -> bool:
        """Whether a wait (or sleep) may be recorded as skipped: left out by the run's
        selection, or coming after a wait that was."""
        ...


class Redactor(Protocol):
    """Masks what the driver stores and shows (secrets the application knows of)."""

    def __bool__(self) -> bool: ...

    def value(self, value: Any) -> Any:
        """``value`` with every string in it masked."""
        ...

    def check_name(self, name: str) -> None:
        """Raise when a step's name holds something that must not be stored."""
        ...


# Requests whose arguments are stored or shown: masked before anything else sees them.
_REDACTED = frozenset({"complete", "record", "fail", "output", "notice", "cache_put",
                       "set_detail", "outcome", "cancelled"})


class DefaultRules:
    """Caches per tenant; a wait may never be recorded as skipped."""

    def cache_scopes(self, instance: Mapping[str, Any]) -> tuple[str, list[str]]:
        tenant = str(instance["tenant"])
        return tenant, [tenant]

    def may_skip(
        self, instance: Mapping[str, Any], name: str, kind: str, *, after_skipped_wait: bool
    ) -> bool:
        return False


def _quiet(_event: dict[str, Any]) -> None:
    return None


class StepService:
    """Handles one instance's requests while its driver holds the lease."""

    def __init__(
        self,
        journal: Journal,
        observer: Observer | None = None,
        *,
        heartbeat: Callable[[], None] | None = None,
        rules: Rules | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.journal = journal
        self._observer = observer or _quiet
        self._heartbeat = heartbeat
        self._rules: Rules = rules or DefaultRules()
        self.redactor = redactor
        self._instance: Mapping[str, Any] | None = None
        # When this drive ends the run (monotonic clock), and the timeout that says so.
        self.deadline: float | None = None
        self.timeout_s: float | None = None

    def observe(self, event: dict[str, Any]) -> None:
        """Tell the observer; a broken one (stdout closed, a bug in a view) is dropped
        rather than allowed to fail the run it only watches."""
        try:
            self._observer(event)
        except Exception:
            self._observer = _quiet

    def idle(self) -> None:
        """The pipeline process has sent nothing more for now: an observer that buffers
        what it shows (``flush()``) lets it out."""
        flush = getattr(self._observer, "flush", None)
        if flush is None:
            return
        try:
            flush()
        except Exception:
            self._observer = _quiet

    def redact(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """``args`` of request ``op`` as they may be stored and shown."""
        if not self.redactor:
            return args
        assert self.redactor is not None
        if isinstance(args.get("name"), str):
            self.redactor.check_name(args["name"])
        if op in _REDACTED:
            masked: dict[str, Any] = self.redactor.value(args)
            return masked
        return args

    def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._heartbeat is not None:
            self._heartbeat()
        if op in ("complete", "record", "cache_put") and "result" in args:
            # Checked here too: the pipeline process may not have asked its Step.
            from ci_runner.engine.step import check_size

            check_size(str(args.get("name") or args.get("step")), json.dumps(args["result"]))
        args = self.redact(op, args)
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ValueError(f"unknown request {op!r}")
        result: dict[str, Any] = handler(**args)
        return result

    def check_begin(self, args: Mapping[str, Any]) -> None:
        """A wait is begun by ``wait_event`` (its outcome comes from an event, never
        from the workflow's process), so no ``begin`` may name one; nor may a step's
        name hold a secret."""
        if self.redactor and isinstance(args.get("name"), str):
            self.redactor.check_name(args["name"])
        if args.get("kind") == "event":
            raise UsageError(f"step {args.get('name')!r}: a wait is not begun with 'begin';"
                             " its outcome comes from approve, reject or send-event")

    def op_begin(
        self, *, name: str, occurrence: int, kind: str, detail: dict[str, Any] | None = None,
        timeout_s: float | None = None, max_attempts: int = 1,
    ) -> dict[str, Any]:
        self.check_begin({"name": name, "kind": kind})
        answer = self.journal.begin(name, occurrence, kind, detail)
        base = {"type": "step", "name": name, "occurrence": occurrence, "kind": kind}
        if answer["state"] == "pause":
            pass  # the run parks itself; the instance's status says paused
        elif answer["state"] == "run":
            self.observe({**base, "status": "running", "attempt": answer["attempt"],
                          "max_attempts": max_attempts, "detail": answer["detail"],
                          "timeout_s": timeout_s, "started_at": time.time()})
        else:
            self.observe({**base, "status": answer["state"], "replayed": True,
                          "attempts": answer["attempts"], "duration_s": answer["duration_s"],
                          "result": answer["result"], "error": answer["error"],
                          "detail": answer["detail"]})
        return answer

    def begun_ahead(self, args: dict[str, Any]) -> None:
        """A first attempt the pipeline process started without waiting for its begin
        to be written (``Step.attempts``): shown now, written by ``write_ahead`` or
        together with its result (``complete`` with ``begun``)."""
        self.observe({"type": "step", "name": args["name"], "occurrence": args["occurrence"],
                      "kind": args["kind"], "status": "running", "attempt": 1,
                      "max_attempts": args.get("max_attempts", 1), "detail": args.get("detail"),
                      "timeout_s": args.get("timeout_s"), "started_at": args["at"]})

    def write_ahead(self, args: dict[str, Any], detail: dict[str, Any] | None) -> None:
        """Write the begin of a step begun ahead, which is running already."""
        self.journal.begin(args["name"], args["occurrence"], args["kind"], detail,
                           at=args["at"], started=True)

    def op_complete(
        self, *, name: str, occurrence: int, result: Any, detail: dict[str, Any] | None = None,
        begun: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if begun is not None:
            self.check_begin({**begun, "name": name})
            duration = self.journal.begin_and_complete(
                name, occurrence, begun["kind"], result, started_at=begun["at"], detail=detail)
        else:
            duration = self.journal.complete(name, occurrence, result, detail=detail)
        self.observe({"type": "step", "name": name, "occurrence": occurrence,
                      "status": "complete", "duration_s": duration, "result": result,
                      "detail": detail})
        return {}

    def limit_time(self, seconds: float | None) -> None:
        """End the run if this drive lasts longer than ``seconds`` (the tighter of the
        limits given wins: a pipeline may shorten its run's timeout, never lengthen it)."""
        if seconds is None or seconds <= 0:
            return
        deadline = time.monotonic() + float(seconds)
        if self.deadline is None or deadline < self.deadline:
            self.deadline, self.timeout_s = deadline, float(seconds)

    def op_run_timeout(self, *, seconds: float) -> dict[str, Any]:
        self.limit_time(seconds)
        return {}

    def op_peek(self, *, name: str, occurrence: int) -> dict[str, Any]:
        return self.journal.peek(name, occurrence) or {"state": None}

    def op_record(
        self, *, name: str, occurrence: int, kind: str, status: str, result: Any,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # A wait's outcome comes from `approve`, `reject` or `send-event`, a sleep's from
        # the clock: never from the pipeline process. Only a selection may skip one.
        if kind in ("event", "sleep", "wait") and (
                status != "skipped" or not self._rules.may_skip(
                    self._row(), name, kind, after_skipped_wait=self._skipped_wait())):
            raise UsageError(f"step {name!r} is a wait: its outcome cannot be recorded by"
                             " the pipeline")
        if status not in ("complete", "skipped"):
            raise UsageError(f"a step can be recorded complete or skipped, not {status!r}")
        answer = self.journal.record(name, occurrence, kind, status=status, result=result,
                                     detail=detail)
        shown = "cached" if (detail or {}).get("cached") and status == "complete" else status
        self.observe({"type": "step", "name": name, "occurrence": occurrence, "kind": kind,
                      "status": shown if answer["recorded"] else answer["state"],
                      "replayed": not answer["recorded"], "duration_s": 0.0,
                      "result": answer["result"], "detail": detail})
        return answer

    def op_cache_get(self, *, key: str, step: str) -> dict[str, Any]:
        """Look ``key`` up where this instance may read; a hit's artifacts are recorded
        for this instance's ``step`` here, from the cache entry (never from the child)."""
        from ci_runner.store import memo

        _, scopes = self._rules.cache_scopes(self._row())
        for scope in scopes:
            hit = memo.cache_get(self.journal.conn, scope, str(key))
            if hit is not None:
                if hit["artifacts"]:
                    memo.add_artifacts(self.journal.conn, self.journal.instance_id, step,
                                       hit["artifacts"])
                return {"hit": hit}
        return {"hit": None}

    def op_cache_put(
        self, *, key: str, result: Any, step: str, with_artifacts: bool = False
    ) -> dict[str, Any]:
        """Write where this instance may write; the entry's artifacts are the ones
        recorded for ``step`` of this instance (by the broker), not the child's word."""
        from ci_runner.store import memo

        scope, _ = self._rules.cache_scopes(self._row())
        kept = [{"path": r["path"], "sha256": r["sha256"], "size": r["size"]}
                for r in memo.artifacts_of(self.journal.conn, self.journal.instance_id)
                if r["step"] == step] if with_artifacts else []
        memo.cache_put(self.journal.conn, scope, str(key), result=result,
                       artifacts=kept, run_id=self.journal.instance_id, step=step)
        return {}

    def _skipped_wait(self) -> bool:
        return self.journal.conn.execute(
            "SELECT 1 FROM steps WHERE instance_id = ? AND kind = 'event'"
            " AND status = 'skipped' LIMIT 1", (self.journal.instance_id,)
        ).fetchone() is not None

    def _row(self) -> Mapping[str, Any]:
        if self._instance is None:
            row = self.journal.conn.execute(
                "SELECT * FROM instances WHERE id = ?", (self.journal.instance_id,)
            ).fetchone()
            self._instance = dict(row)
        return self._instance

    def op_fail(
        self, *, name: str, occurrence: int, error: dict[str, Any], final: bool,
        retry_in: float = 0.0, detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.journal.fail_attempt(name, occurrence, error, final=final, detail=detail)
        self.observe({"type": "step", "name": name, "occurrence": occurrence,
                      "status": "failed" if final else "retrying", "error": error,
                      "retry_in": retry_in, "detail": detail})
        return {}

    def op_set_detail(
        self, *, name: str, occurrence: int, detail: dict[str, Any]
    ) -> dict[str, Any]:
        self.journal.set_detail(name, occurrence, detail)
        return {}

    def op_sleep(self, *, name: str, occurrence: int, wake_at: float) -> dict[str, Any]:
        answer = self.journal.sleep(name, occurrence, wake_at)
        if answer["state"] == "sleeping":
            self.observe({"type": "step", "name": name, "occurrence": occurrence,
                          "kind": "sleep", "status": "sleeping", "wake_at": answer["wake_at"]})
        return answer

    def op_wait_event(
        self, *, name: str, occurrence: int, event_type: str, deadline: float
    ) -> dict[str, Any]:
        answer = self.journal.wait_event(name, occurrence, event_type, deadline)
        status = {"complete": "complete", "failed": "failed"}.get(answer["state"], "waiting")
        error = answer.get("error")
        rejection = _rejection(event_type, answer.get("result"))
        if status == "complete" and rejection is not None:
            # The wait got its answer (the journal keeps it complete), and it was no.
            status, error = "rejected", {"type": "Rejected", "message": rejection,
                                         "fields": {}}
        self.observe({"type": "step", "name": name, "occurrence": occurrence, "kind": "event",
                      "status": status, "event_type": event_type,
                      "deadline": answer.get("deadline"), "result": answer.get("result"),
                      "error": error})
        return answer

    def op_cancelled(self, *, name: str, occurrence: int, why: str) -> dict[str, Any]:
        """A step the workflow stopped waiting for (a sibling in ``step.parallel``
        failed): it ends cancelled now, not 'running' until the run ends."""
        error = {"type": "Cancelled", "message": f"cancelled: {why}", "fields": {}}
        if self.journal.cancel_step(name, occurrence, error):
            self.observe({"type": "step", "name": name, "occurrence": occurrence,
                          "status": "cancelled", "error": error})
        return {}

    def op_output(self, *, name: str, occurrence: int, text: str) -> dict[str, Any]:
        self.observe({"type": "output", "name": name, "occurrence": occurrence, "text": text})
        return {}

    def op_notice(self, **event: Any) -> dict[str, Any]:
        """Free-form news for the observer from an extension (e.g. 'cached')."""
        self.observe(event)
        return {}


def _rejection(event_type: str, result: Any) -> str | None:
    """'rejected by NAME: comment' when ``result`` is an approval gate's rejection."""
    from ci_runner.engine.policy import APPROVAL_EVENT

    if event_type != APPROVAL_EVENT or not isinstance(result, dict):
        return None
    decision = result.get("payload")
    if not isinstance(decision, dict) or decision.get("decision") != "reject":
        return None
    comment = f": {decision['comment']}" if decision.get("comment") else ""
    return f"rejected by {decision.get('by', 'unknown')}{comment}"
