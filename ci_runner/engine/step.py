"""The ``step`` object a workflow's ``run(event, step)`` receives: memoised steps, retries,
durable sleeps and events, in Cloudflare Workflows' vocabulary.

It runs where the workflow code runs (normally the per-run child process) and
owns no database handle: every durable decision is a request to the driver
through a ``Host`` (a pipe to the driver, or a direct call when embedded).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import re
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from ci_runner.engine import policy
from ci_runner.engine.policy import RetryPolicy, seconds
from ci_runner.errors import (
    Cancelled,
    CIRunnerError,
    EventTimeout,
    NonRetryableError,
    Rejected,
    StepFailed,
    StepTimeout,
    UsageError,
    from_record,
    note_site,
    to_record,
)

APPROVAL_EVENT = policy.APPROVAL_EVENT
# Why step.parallel cancels a branch (fail-fast); the branch's step is recorded with it.
_SIBLING_FAILED = "a step beside it in step.parallel failed"
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class Host(Protocol):
    """How a Step talks to its driver: a request with an answer, or a one-way notice."""

    def request(self, op: str, **args: Any) -> dict[str, Any]: ...

    def notify(self, op: str, **args: Any) -> None: ...


@dataclass(frozen=True)
class WorkflowEvent:
    """What ``run`` receives as ``event``: the instance's payload and identity."""

    payload: Any
    timestamp: float
    instance_id: str


@dataclass
class Hibernation:
    """Why and until when a run parks itself with no process."""

    status: str  # "waiting" (timer) or "waiting_for_event"
    wake_at: float | None
    waiting_for: list[dict[str, Any]] = field(default_factory=list)


class _Hibernate(BaseException):
    pass


class _Watching(Protocol):
    def _watch(self, name: object, coro: Coroutine[Any, Any, Any],
               site: tuple[str, int, str]) -> Any: ...


_F = TypeVar("_F", bound=Callable[..., Coroutine[Any, Any, Any]])


def watched(method: _F) -> _F:
    """For a step method (``async def run(self, name, ...)``): its calls are watched,
    so that one never awaited (``step.run("x", ...)`` without ``await``) fails the run
    naming the step, instead of the step being silently skipped."""

    @functools.wraps(method)
    def call(self: _Watching, /, *args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1)  # the line to fix, should it never be awaited
        site = (caller.f_code.co_filename, caller.f_lineno, caller.f_code.co_name)
        name = args[0] if args else kwargs.get("name")
        return self._watch(name, method(self, *args, **kwargs), site)

    return cast(_F, call)


class _Call(Coroutine[Any, Any, Any]):
    """One step call's coroutine, as asyncio takes any coroutine (``await``,
    ``gather``, ``create_task``, ``wait_for``, ``step.parallel``), that tells its Step
    when it is dropped without ever being awaited or scheduled."""

    __slots__ = ("__name__", "__weakref__", "_coro", "_on_drop", "name", "site", "started")

    def __init__(self, coro: Coroutine[Any, Any, Any], name: str, site: tuple[str, int, str],
                 on_drop: Callable[[str, tuple[str, int, str]], None]) -> None:
        self.__name__ = f"{getattr(coro, '__qualname__', 'step')}({name!r})"  # task reprs
        self._coro = coro
        self._on_drop = on_drop
        self.name = name
        self.site = site
        self.started = False

    @property
    def running(self) -> bool:
        """Begun and not ended (inside a task no one awaits, say)."""
        return self.started and inspect.getcoroutinestate(self._coro) != inspect.CORO_CLOSED

    def send(self, value: Any) -> Any:
        self.started = True
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self.started = True  # cancelled before it began: scheduled, not forgotten
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self.started = True
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        self.started = True
        return self._coro.__await__()

    def __del__(self) -> None:
        if not self.started:
            self._coro.close()  # Python's warning would name our method; the Step's names the step
            self._on_drop(self.name, self.site)


class Step:
    """Durable steps. Step results are keyed by (name, occurrence): the same name
    called twice in a loop is two steps, replayed in the same order."""

    def __init__(
        self, host: Host, *, inline_sleep_max_s: float = policy.INLINE_SLEEP_MAX_S,
        recorded: Iterable[Sequence[Any]] | None = None,
    ) -> None:
        """``recorded``: the (name, occurrence) of every step the journal held when this
        run (re)started. Given, a step not among them starts without waiting for its
        begin to be written: the driver writes it alongside, or together with the
        step's result (one commit per short step instead of two)."""
        self._host = host
        self._inline_sleep_max_s = inline_sleep_max_s
        self._recorded = None if recorded is None else {(str(n), int(o)) for n, o in recorded}
        self._pause_requested = False
        self._occurrences: dict[str, int] = {}
        self._lock = threading.Lock()
        self._active = 0
        self._waits: list[tuple[Hibernation, asyncio.Future[None]]] = []
        self._main: asyncio.Task[Any] | None = None
        self.hibernation: Hibernation | None = None
        # Step calls not awaited yet, and those dropped without ever being awaited.
        self._calls: weakref.WeakSet[_Call] = weakref.WeakSet()
        self._dropped: list[tuple[str, tuple[str, int, str]]] = []

    # -- the author's API ------------------------------------------------------

    @watched
    async def do(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        retries: RetryPolicy | dict[str, Any] | int | None = None,
        timeout: float | str | None = None,
    ) -> Any:
        """Run ``fn`` (sync or async) once; its JSON result is replayed ever after."""
        occurrence = self.occurrence(name)

        async def body(_attempt: int, _previous: dict[str, Any] | None) -> Any:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result

        return await self.attempts(
            name, occurrence, "do", body,
            policy=RetryPolicy.parse(retries), timeout_s=_timeout(timeout),
        )

    @watched
    async def sleep(self, name: str, duration: float | str) -> None:
        """Sleep durably: the wake time is committed before sleeping."""
        await self._sleep_until(name, time.time() + seconds(duration, what="sleep duration"))

    @watched
    async def sleep_until(self, name: str, when: datetime | float) -> None:
        wake_at = when.timestamp() if isinstance(when, datetime) else float(when)
        await self._sleep_until(name, wake_at)

    @watched
    async def wait_for_event(
        self,
        name: str,
        event_type: str,
        *,
        timeout: float | str = policy.DEFAULT_EVENT_TIMEOUT_S,
        describe: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for an event sent to this instance; ``{type, payload, timestamp}``.

        An event sent before the run gets here is kept and delivered now. Raises
        ``EventTimeout`` (catchable) when none comes in time.
        """
        valid_event_type(event_type)
        occurrence = self.occurrence(name)
        deadline = time.time() + seconds(timeout, what="event timeout")
        while True:
            answer = self._host.request(
                "wait_event", name=name, occurrence=occurrence, event_type=event_type,
                deadline=deadline,
            )
            if answer["state"] == "complete":
                result: dict[str, Any] = answer["result"]
                return result
            if answer["state"] == "failed":
                raise from_record(answer["error"])
            deadline = float(answer["deadline"])
            if time.time() >= deadline:
                error = EventTimeout(
                    f"no {event_type!r} event arrived for step {name!r} in time",
                    event_type=event_type,
                )
                self._host.request(
                    "fail", name=name, occurrence=occurrence, error=to_record(error), final=True
                )
                raise error
            try:
                await self._park(Hibernation(
                    "waiting_for_event", deadline,
                    [{"step": _label(name, occurrence), "event_type": event_type,
                      "deadline": deadline, **(describe or {})}],
                ))
            except asyncio.CancelledError as exc:
                self._cancelled(name, occurrence, exc)
                raise

    @watched
    async def wait_for_approval(
        self,
        name: str,
        *,
        timeout: float | str = policy.DEFAULT_EVENT_TIMEOUT_S,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Wait for a human: returns ``{approved_by, comment, at}``; a rejection raises
        ``Rejected`` (the run fails unless the pipeline catches it)."""
        event = await self.wait_for_event(
            name, APPROVAL_EVENT, timeout=timeout,
            describe={"approval": True, "message": message},
        )
        decision = event.get("payload") or {}
        by, comment = decision.get("by", "unknown"), decision.get("comment")
        if decision.get("decision") == "reject":
            because = f": {comment}" if comment else ""
            raise Rejected(f"step {name!r} was rejected by {by}{because}", by=by,
                           comment=comment)
        return {"approved_by": by, "comment": comment, "at": event.get("timestamp")}

    async def parallel(self, *aws: Awaitable[Any], fail_fast: bool = True) -> list[Any]:
        """Run steps at once: ``await step.parallel(step.run(...), step.run(...))``;
        returns their results in order.

        When one fails, the others are cancelled at once (their processes stopped, their
        steps ``cancelled``); with ``fail_fast=False`` they run to their own end instead.
        Either way the parallel then raises the failure that came first: the others
        are each recorded on their own step (``failed``, in the view and ``show``).
        """
        tasks = [asyncio.ensure_future(aw) for aw in aws]
        first: BaseException | None = None
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in (t for t in tasks if t in done):  # in call order, when tied
                    failure = None if task.cancelled() else task.exception()
                    if failure is None:
                        continue
                    if not isinstance(failure, Exception):  # the run stops: so does all
                        raise failure
                    first = first or failure
                if first is not None and fail_fast and pending:
                    for task in pending:
                        task.cancel(_SIBLING_FAILED)
                    await asyncio.wait(pending)
                    break
        finally:
            for task in tasks:  # hibernating or stopping: no branch outlives the group
                if not task.done():
                    task.cancel()
        if first is not None:
            raise first
        return [task.result() for task in tasks]

    @property
    def host(self) -> Host:
        """The driver connection, for extensions that add step kinds."""
        return self._host

    # -- building blocks for extensions (the CI layer's step.run uses these) ----

    def next_occurrence(self, name: str) -> int:
        """The occurrence the next call of ``name`` will claim (nothing is claimed)."""
        with self._lock:
            return self._occurrences.get(name, 0) + 1

    def occurrence(self, name: str) -> int:
        """Claim the next occurrence of ``name`` (in call order, so replays line up)."""
        if self._dropped:  # no step begins after one was skipped by a missing await
            raise self._not_awaited()
        if not isinstance(name, str) or not name or len(name) > 200:
            raise UsageError(
                f"a step name must be a non-empty string of at most 200 chars: {name!r}"
            )
        with self._lock:
            n = self._occurrences.get(name, 0) + 1
            self._occurrences[name] = n
        return n

    async def attempts(
        self,
        name: str,
        occurrence: int,
        kind: str,
        body: Callable[[int, dict[str, Any] | None], Awaitable[Any]],
        *,
        policy: RetryPolicy,
        timeout_s: float,
        detail: dict[str, Any] | None = None,
        on_failure: Callable[[BaseException], dict[str, Any] | None] | None = None,
    ) -> Any:
        """Replay the step's recorded outcome, or run ``body(attempt, previous)`` under the
        policy; ``previous`` is the detail an earlier, interrupted attempt recorded.

        ``on_failure`` may return detail to store with a failed attempt (exit code...).
        """
        while True:
            begin = {"name": name, "occurrence": occurrence, "kind": kind, "detail": detail,
                     "timeout_s": timeout_s, "max_attempts": policy.max_attempts}
            if self._may_begin_ahead(name, occurrence):
                self._host.notify("begin", **begin, at=time.time())
                answer: dict[str, Any] = {"state": "run", "attempt": 1, "detail": detail}
            else:
                answer = self._ask("begin", **begin)
            state = answer["state"]
            if state in ("complete", "skipped"):
                return answer["result"]
            if state == "pause":
                await self._park(Hibernation(
                    "paused", None, [{"step": _label(name, occurrence), "paused": True}]
                ))
            if state == "failed":
                raise from_record(answer["error"])
            attempt = int(answer["attempt"])
            self._active += 1
            try:
                result = await asyncio.wait_for(body(attempt, answer.get("detail")), timeout_s)
                _check_json(name, result)
            except asyncio.CancelledError as exc:
                self._cancelled(name, occurrence, exc)
                raise
            except (Cancelled, _Hibernate):
                raise
            except Exception as exc:
                error: BaseException = exc
                if isinstance(exc, asyncio.TimeoutError):
                    error = StepTimeout(
                        f"step {_label(name, occurrence)} timed out after {timeout_s:g}s",
                        timeout_s=timeout_s,
                    )
            else:
                self._ask("complete", name=name, occurrence=occurrence, result=result)
                return result
            finally:
                self._active -= 1
                self._check_parked()
            # A configuration mistake (a missing secret, a bad option) will not fix itself.
            final = (isinstance(error, (NonRetryableError, UsageError))
                     or attempt >= policy.max_attempts)
            delay = 0.0 if final else policy.delay_before(attempt + 1)
            record = to_record(error)
            extra = on_failure(error) if on_failure else None
            self._ask(
                "fail", name=name, occurrence=occurrence, error=record, final=final,
                retry_in=delay, detail=extra,
            )
            if final:
                failure = from_record(record)
                if not isinstance(failure, (StepFailed, UsageError)):
                    failure = StepFailed(record["message"], **record["fields"])
                raise failure from error
            await asyncio.sleep(delay)

    # -- step calls never awaited ------------------------------------------------

    def _watch(self, name: object, coro: Coroutine[Any, Any, Any],
               site: tuple[str, int, str]) -> _Call:
        call = _Call(coro, str(name), site, self._dropped_call)
        self._calls.add(call)
        return call

    def _dropped_call(self, name: str, site: tuple[str, int, str]) -> None:
        """A step call went away never awaited (from a finalizer: in any thread)."""
        if self.hibernation is not None:
            return  # dropped as the run parks itself: the replay will make it again
        self._dropped.append((name, site))  # atomic: no lock a finalizer could deadlock on
        # An "error" filter must not raise in a finalizer: the run fails on its own.
        with contextlib.suppress(Exception):
            warnings.warn_explicit(f"step {name!r} was never awaited (missing await?)",
                                   RuntimeWarning, site[0], site[1])

    def check_awaited(self) -> None:
        """Raise, naming them, if a step was called and never awaited, or still runs
        (in a task or gather no one awaited) now that ``run()`` returned."""
        if self._dropped or any(not call.started for call in list(self._calls)):
            raise self._not_awaited()
        running = [(call.name, call.site) for call in list(self._calls) if call.running]
        if running:
            raise _unawaited(running, "still running when run() returned (missing await on"
                                      " {it}, or on the asyncio.gather or step.parallel"
                                      " holding {it}?)")

    def _not_awaited(self) -> UsageError:
        forgotten = [*self._dropped,
                     *((c.name, c.site) for c in list(self._calls) if not c.started)]
        return _unawaited(forgotten, "never awaited (missing await?)")

    def _cancelled(self, name: str, occurrence: int, exc: asyncio.CancelledError) -> None:
        """A step's task was cancelled while it ran or waited: record it cancelled (a
        fail-fast parallel, or the author's own ``wait_for``), unless the whole run is
        hibernating, which stops every branch and cancels no step."""
        if self.hibernation is not None:
            return
        why = str(exc.args[0]) if exc.args and exc.args[0] else "its task was cancelled"
        self._host.notify("cancelled", name=name, occurrence=occurrence, why=why)

    def _may_begin_ahead(self, name: str, occurrence: int) -> bool:
        """Whether this attempt is the step's first ever, with no pause requested."""
        if self._recorded is None or self._pause_requested:
            return False
        key = (name, occurrence)
        if key in self._recorded:
            return False
        self._recorded.add(key)  # a retry of it asks, to learn its attempt number
        return True

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        answer = self._host.request(op, **args)
        if answer.get("pause"):  # the driver saw a pause request: ask before each begin
            self._pause_requested = True
        return answer

    # -- hibernation -------------------------------------------------------------

    async def _sleep_until(self, name: str, wake_at: float) -> None:
        occurrence = self.occurrence(name)
        answer = self._host.request("sleep", name=name, occurrence=occurrence, wake_at=wake_at)
        if answer["state"] == "complete":
            return
        wake_at = float(answer["wake_at"])
        remaining = wake_at - time.time()
        try:
            if remaining > self._inline_sleep_max_s:
                await self._park(Hibernation(
                    "waiting", wake_at,
                    [{"step": _label(name, occurrence), "sleep_until": wake_at}],
                ))
            self._active += 1
            try:
                if remaining > 0:
                    await asyncio.sleep(remaining)
            finally:
                self._active -= 1
        except asyncio.CancelledError as exc:
            self._cancelled(name, occurrence, exc)
            raise
        self._host.request("complete", name=name, occurrence=occurrence, result=None)

    async def _park(self, why: Hibernation) -> None:
        """Block this branch; when no branch has work left, the whole run hibernates."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits.append((why, future))
        asyncio.get_running_loop().call_soon(self._check_parked)
        try:
            await future  # never resolved: the run is cancelled into hibernation
        except asyncio.CancelledError:
            if self.hibernation is None:  # this branch alone was cancelled: it waits no more
                self._waits.remove((why, future))
            raise

    def _check_parked(self) -> None:
        if not self._waits or self._active or self._main is None:
            return
        loop = asyncio.get_running_loop()

        def decide() -> None:
            # Re-check after the loop ran what was ready: a sibling may just be starting.
            if not self._waits or self._active or self._main is None or self.hibernation:
                return
            whys = [w for w, _ in self._waits]
            deadlines = [w.wake_at for w in whys if w.wake_at is not None]
            statuses = {w.status for w in whys}
            status = "waiting"
            for candidate in ("waiting_for_event", "paused"):  # later ones take precedence
                if candidate in statuses:
                    status = candidate
            self.hibernation = Hibernation(
                status, min(deadlines) if deadlines else None,
                [item for w in whys for item in w.waiting_for],
            )
            self._main.cancel()

        loop.call_soon(lambda: loop.call_soon(decide))

    async def run_main(self, coro: Awaitable[Any]) -> Any:
        """Run the workflow's ``run()``; returns its output or raises ``_Hibernate``."""
        self._main = asyncio.ensure_future(coro)
        try:
            output = await self._main
        except asyncio.CancelledError:
            if self.hibernation is not None:
                raise _Hibernate() from None
            raise
        self.check_awaited()  # a step left behind would otherwise pass for complete
        return output


def valid_event_type(event_type: str) -> str:
    """Cloudflare's rule: 1-100 letters, digits, '_' or '-'."""
    if not isinstance(event_type, str) or not _EVENT_TYPE.match(event_type):
        raise UsageError(f"event type {event_type!r} must be 1-100 letters, digits, '_' or '-'")
    return event_type


def _timeout(value: float | str | None) -> float:
    return policy.DEFAULT_TIMEOUT_S if value is None else seconds(value, what="timeout")


def _check_json(name: str, result: Any) -> None:
    try:
        text = json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise NonRetryableError(
            f"step {name!r} returned a {type(result).__name__}, which is not JSON-serialisable;"
            " return plain data (dict, list, str, number, bool, None)"
        ) from exc
    check_size(name, text)


def check_size(name: str, text: str) -> None:
    """A step's result is limited to ``policy.MAX_RESULT_BYTES`` of JSON."""
    if len(text) > policy.MAX_RESULT_BYTES:  # chars <= bytes: exact enough, and cheap
        raise NonRetryableError(
            f"step {name!r} returned {len(text) / (1 << 20):.1f} MiB of JSON; a step's result"
            f" is limited to {policy.MAX_RESULT_BYTES >> 20} MiB: write big data to a file"
            " (save it as an artifact) and return its path"
        )


def _unawaited(calls: list[tuple[str, tuple[str, int, str]]], what: str) -> UsageError:
    """The error for step calls that were skipped for want of an ``await``; where the
    first was made is its origin (the line to fix, not where it was found out)."""
    names = list(dict.fromkeys(name for name, _ in calls))
    which = (f"step {names[0]!r} was" if len(names) == 1
             else f"steps {', '.join(map(repr, names))} were")
    error = UsageError(f"{which} {what.format(it='it' if len(names) == 1 else 'them')}",
                       steps=names)
    note_site(error, [_frame(calls[0][1])])
    return error


def _frame(site: tuple[str, int, str]) -> dict[str, Any]:
    import linecache

    file, line, function = site
    return {"file": file, "line": line, "function": function,
            "code": linecache.getline(file, line).strip()[:240]}


def _label(name: str, occurrence: int) -> str:
    return name if occurrence == 1 else f"{name}#{occurrence}"


__all__ = ["CIRunnerError", "Hibernation", "Host", "Step", "WorkflowEvent"]
