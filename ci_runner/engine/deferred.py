"""Journal writes the driver may put off while its pipe holds more for it.

Two kinds, both sent by the pipeline process without waiting for an answer:

- a *begun-ahead* first attempt: a step the journal has never seen, started by the
  pipeline process at once (``Step.attempts``). Its begin marker is written when the
  pipe runs dry, or, for a step that finishes first (a short command), in the same
  durable transaction as its result: one commit per step instead of two.
- a step's *detail* (its process group), merged into the step's commit the same way.

Order is kept: before anything else touches the journal, every begin still held is
written, oldest first, so steps get their sequence numbers in the order they began.
"""

from __future__ import annotations

from typing import Any

from ci_runner.engine.service import StepService

Key = tuple[Any, Any]  # (step name, occurrence)


class Deferred:
    """Begins and details held back by one driver for one run."""

    def __init__(self, service: StepService) -> None:
        self._service = service
        self._begins: dict[Key, dict[str, Any]] = {}  # insertion order = begin order
        self._details: dict[Key, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._begins or self._details)

    def begin(self, args: dict[str, Any]) -> None:
        """A first attempt the pipeline process started without waiting."""
        self._begins[(args["name"], args["occurrence"])] = args
        self._service.begun_ahead(args)

    def detail(self, key: Key, detail: dict[str, Any]) -> None:
        self._details[key] = {**self._details.get(key, {}), **detail}

    def details(self) -> list[dict[str, Any]]:
        """Details not written yet (their process groups are not in the journal)."""
        return list(self._details.values())

    def settle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Make the journal ready for request ``op``; returns its arguments, with what
        was held for its own step merged in (``complete`` of a begun-ahead step gets
        ``begun``: its begin and result are then committed together)."""
        key = (args.get("name"), args.get("occurrence"))
        if op not in ("complete", "fail") or key not in self._begins:
            self.write_begins()
            if op in ("complete", "fail") and key in self._details:
                args = {**args, "detail": {**self._details.pop(key),
                                           **(args.get("detail") or {})}}
            return args
        for older in list(self._begins):  # what began before it comes first
            if older == key:
                break
            self._write_begin(older)
        if op == "fail":  # rare: the begin, then the failure, as for any attempt
            self._write_begin(key)
            return args
        begun = self._begins.pop(key)
        detail = {**self._held_detail(key, begun), **(args.get("detail") or {})}
        return {**args, "detail": detail or None, "begun": begun}

    def write_begins(self) -> None:
        for key in list(self._begins):
            self._write_begin(key)

    def flush(self) -> None:
        """Write everything held (the pipe ran dry, or the pipeline process is gone)."""
        self.write_begins()
        for (name, occurrence), detail in list(self._details.items()):
            self._service.handle("set_detail", {"name": name, "occurrence": occurrence,
                                                "detail": detail})
            del self._details[(name, occurrence)]

    def _write_begin(self, key: Key) -> None:
        begun = self._begins.pop(key)
        self._service.write_ahead(begun, self._held_detail(key, begun) or None)

    def _held_detail(self, key: Key, begun: dict[str, Any]) -> dict[str, Any]:
        """The begin's own detail with what arrived for the step since (taken)."""
        return {**(begun.get("detail") or {}), **self._details.pop(key, {})}
