"""A step's output on its way out, the same for every executor: decoded as UTF-8,
masked (secrets split across writes included), handed to the sink, and its tail kept
for the step's result."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from ci_runner.executors.base import OutputSink
from ci_runner.executors.masking import Masker

TAIL_LINES = 20
TAIL_CHARS = 4000


class MaskedOutput:
    def __init__(
        self, masker: Masker, sink: OutputSink, *, on_sink_error: Callable[[], None] | None = None
    ) -> None:
        self._masker = masker
        self._sink = sink
        self._on_sink_error = on_sink_error
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""
        self.sink_error: BaseException | None = None

    def feed(self, data: bytes) -> None:
        self._emit(self._masker.feed(self._decoder.decode(data)))

    def write(self, text: str) -> None:
        self._emit(self._masker.feed(text))

    def close(self) -> None:
        rest = self._masker.feed(self._decoder.decode(b"", final=True))
        self._emit(rest + self._masker.flush())

    def tail(self) -> str:
        """The last 20 lines (at most 4000 characters), already masked."""
        lines = self._tail.splitlines()[-TAIL_LINES:]
        return "\n".join(lines)[-TAIL_CHARS:]

    def _emit(self, text: str) -> None:
        if not text or self.sink_error is not None:
            return
        # One spare character: the tail's last line break is dropped by tail().
        keep = TAIL_CHARS + 1
        self._tail = text[-keep:] if len(text) >= keep else (self._tail + text)[-keep:]
        try:
            self._sink(text)
        except BaseException as exc:
            # Raised from a loop callback it would only be logged; the executor re-raises it.
            self.sink_error = exc
            if self._on_sink_error is not None:
                self._on_sink_error()
