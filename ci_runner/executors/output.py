"""A step's output on its way out, the same for every executor: decoded as UTF-8,
masked (secrets split across writes included), handed to the sink, and its tail kept
for the step's result.

Everything here is linear in the output's size and bounded in memory, however long
its lines: a step may print 500 MB without a newline. The sink gets pieces of at
most ``SINK_CHUNK`` characters, the tail keeps a few thousand characters, and the
masker holds back less than its longest pattern.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from ci_runner.executors.base import OutputSink
from ci_runner.executors.masking import Masker

TAIL_LINES = 20
TAIL_CHARS = 4000
# The most the sink receives in one call: what a pipe read gives at most, so the log
# file, the pipeline process and the live view never handle one giant string.
SINK_CHUNK = 64 * 1024
# One spare character: the tail's last line break is dropped by tail().
_KEEP = TAIL_CHARS + 1


ADD_MASK = "::add-mask::"


class MaskCommands:
    """Takes GitHub's ``::add-mask::VALUE`` lines out of a stream, before masking:
    the value is masked from then on and the line itself never shows. Other text
    passes at once; only a line that may still become such a command is held."""

    def __init__(self, masker: Masker, on_mask: Callable[[str], None]) -> None:
        self._masker = masker
        self._on_mask = on_mask
        self._line = ""  # the current line, held while it may be a command
        self._at_start = True

    def feed(self, text: str) -> str:
        out: list[str] = []
        for piece in text.splitlines(keepends=True):
            if not self._at_start:
                out.append(piece)
                self._at_start = piece.endswith("\n")
                continue
            line = self._line + piece
            ended = line.endswith("\n")
            if line.startswith(ADD_MASK):
                if ended:
                    self._mask(line[len(ADD_MASK):].rstrip("\r\n"))
                    self._line = ""
                else:
                    self._line = line
                continue
            if not ended and ADD_MASK.startswith(line):
                self._line = line  # may still become the command
                continue
            self._line = ""
            out.append(line)
            self._at_start = ended
        return "".join(out)

    def flush(self) -> str:
        line, self._line = self._line, ""
        if line.startswith(ADD_MASK):
            self._mask(line[len(ADD_MASK):].rstrip("\r"))
            return ""
        return line

    def _mask(self, value: str) -> None:
        value = value.strip()
        if value:
            self._masker.add([value])
            self._on_mask(value)


class MaskedOutput:
    def __init__(
        self, masker: Masker, sink: OutputSink, *, on_sink_error: Callable[[], None] | None = None,
        on_mask: Callable[[str], None] | None = None,
    ) -> None:
        """``on_mask``: take ``::add-mask::`` lines out (``MaskCommands``), and tell it
        each value."""
        self._commands = MaskCommands(masker, on_mask) if on_mask is not None else None
        self._masker = masker
        self._sink = sink
        self._on_sink_error = on_sink_error
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The end of the output, as the pieces it came in: joining them on every write
        # would copy the whole tail per write (quadratic in tiny writes), so they are
        # joined only when they add up to twice what is kept.
        self._tail_pieces: list[str] = []
        self._tail_size = 0
        self.sink_error: BaseException | None = None

    def feed(self, data: bytes) -> None:
        self.write(self._decoder.decode(data))

    def write(self, text: str) -> None:
        if self._commands is not None:
            text = self._commands.feed(text)
        self._emit(self._masker.feed(text))

    def close(self) -> None:
        rest = self._decoder.decode(b"", final=True)
        if self._commands is not None:
            rest = self._commands.feed(rest) + self._commands.flush()
        self._emit(self._masker.feed(rest) + self._masker.flush())

    def tail(self) -> str:
        """The last 20 lines (at most 4000 characters), already masked."""
        kept = "".join(self._tail_pieces)[-_KEEP:]
        lines = kept.splitlines()[-TAIL_LINES:]
        return "\n".join(lines)[-TAIL_CHARS:]

    def _emit(self, text: str) -> None:
        if not text or self.sink_error is not None:
            return
        self._keep_tail(text)
        try:
            for start in range(0, len(text), SINK_CHUNK):
                self._sink(text[start:start + SINK_CHUNK] if len(text) > SINK_CHUNK else text)
        except BaseException as exc:
            # Raised from a loop callback it would only be logged; the executor re-raises it.
            self.sink_error = exc
            if self._on_sink_error is not None:
                self._on_sink_error()

    def _keep_tail(self, text: str) -> None:
        if len(text) >= _KEEP:
            self._tail_pieces = [text[-_KEEP:]]
            self._tail_size = _KEEP
            return
        self._tail_pieces.append(text)
        self._tail_size += len(text)
        if self._tail_size > 2 * _KEEP:
            kept = "".join(self._tail_pieces)[-_KEEP:]
            self._tail_pieces = [kept]
            self._tail_size = len(kept)
