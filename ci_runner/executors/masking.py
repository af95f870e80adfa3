"""Keeps secret values out of step output, however the output happens to be chunked.

A command's output arrives in arbitrary pieces, so a secret can straddle two reads.
``Masker.feed`` holds back only the tail that could still grow into a secret, and
the masked stream always equals ``mask`` of the whole text. Every character that
any secret occurrence covers is masked: overlapping occurrences merge into one
``MASK`` (adjacent ones do not), so no part of an overlapping secret shows.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK = "***"

# Tools print a multi-line secret (a PEM key, say) line by line, so its lines are
# secrets too; very short lines ("-", "}") would mask half the log and reveal nothing.
_MIN_LINE = 4


class Masker:
    """Replaces secret values with ``MASK``, in one string or in a stream of chunks."""

    def __init__(self, secrets: Iterable[str]) -> None:
        patterns: set[str] = set()
        for value in secrets:
            if not value:
                continue
            patterns.add(value)
            lines = value.splitlines()
            if lines != [value]:
                patterns.update(line for line in lines if len(line) >= _MIN_LINE)
        # Longest first, so at each position the regex reports the longest secret
        # starting there; the lookahead makes it report every position, overlaps included.
        self._patterns = tuple(sorted(patterns, key=lambda p: (-len(p), p)))
        self._regex = (
            re.compile("(?=(" + "|".join(map(re.escape, self._patterns)) + "))")
            if self._patterns
            else None
        )
        self._first_chars = frozenset(p[0] for p in self._patterns)
        self._longest = len(self._patterns[0]) if self._patterns else 0
        self._pending = ""
        # How many leading characters of _pending lie inside a MASK already emitted.
        self._covered = 0

    def feed(self, text: str) -> str:
        """Take the next chunk of a stream; return the masked text that is safe to emit now."""
        if self._regex is None:
            return text
        buffer = self._pending + text
        hold = self._hold_point(buffer)
        out, self._covered = self._scan(buffer, self._covered, hold)
        self._pending = buffer[hold:]
        return out

    def flush(self) -> str:
        """End the stream: return whatever ``feed`` held back, masked."""
        if self._regex is None:
            return ""
        out, _ = self._scan(self._pending, self._covered, len(self._pending))
        self._pending = ""
        self._covered = 0
        return out

    def mask(self, text: str) -> str:
        """Mask one whole string (an error message, an output tail); the stream is untouched."""
        if self._regex is None:
            return text
        return self._scan(text, 0, len(text))[0]

    def _hold_point(self, text: str) -> int:
        """Where the longest tail of ``text`` that is a proper prefix of a secret begins."""
        size = len(text)
        for start in range(max(0, size - self._longest + 1), size):
            if text[start] not in self._first_chars:
                continue
            tail = text[start:]
            for pattern in self._patterns:
                if len(pattern) <= len(tail):
                    break  # sorted longest first: no longer pattern is left
                if pattern.startswith(tail):
                    return start
        return size

    def _scan(self, text: str, covered: int, end: int) -> tuple[str, int]:
        """Mask ``text[:end]``, given that its first ``covered`` characters are masked already.

        Occurrences starting before ``end`` are final (``end`` is at most the hold
        point) even when they reach past it; returns the output and how far past
        ``end`` the last mask reaches, which the next call receives as ``covered``.
        """
        assert self._regex is not None
        pieces: list[str] = []
        masked_to = covered
        for match in self._regex.finditer(text):
            start = match.start()
            if start >= end:
                break
            stop = match.end(1)
            if start < masked_to:
                masked_to = max(masked_to, stop)
                continue
            pieces.append(text[masked_to:start])
            pieces.append(MASK)
            masked_to = stop
        if masked_to < end:
            pieces.append(text[masked_to:end])
            return "".join(pieces), 0
        return "".join(pieces), masked_to - end
