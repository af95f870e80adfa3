"""Keeps secret values out of step output, however the output happens to be chunked.

A command's output arrives in arbitrary pieces, so a secret can straddle two reads.
``Masker.feed`` holds back only the tail that could still grow into a secret (never
more than the longest pattern less one character), and the masked stream always
equals ``mask`` of the whole text. Every character that any secret occurrence
covers is masked: overlapping occurrences merge into one ``MASK`` (adjacent ones
do not), so no part of an overlapping secret shows.

What counts as a secret, as GitHub Actions' runner does it: each value, each line
of a multi-line value, and the forms a tool prints them in: base64 (standard and
URL-safe, at each of the three alignments a value can have inside a longer base64
stream), percent-encoded and JSON-escaped.

The work is linear in the output's size, whatever its line lengths: a chunk is
searched for each pattern with ``str.find`` (C speed, no per-character Python), and
only a chunk where one occurs is taken apart. A regex alternation of every pattern
(what this used before) was 5 times slower with two secrets' forms and 20 times
with a PEM key's, whose lines and their forms make some 200 patterns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK = "***"

# Tools print a multi-line secret (a PEM key, say) line by line, so its lines are
# secrets too; very short lines ("-", "}") would mask half the log and reveal nothing.
_MIN_LINE = 4
# The same for encoded forms: the base64 of "ab" is in every other base64 blob.
_MIN_ENCODED = 4
# How many leading characters of a pattern are searched for when finding where the
# held-back tail begins; shorter tails are looked up in a set.
_HEAD = 16


def encoded_forms(value: str) -> set[str]:
    """The forms other than ``value`` itself that a tool may print it in.

    Base64 packs 3 bytes into 4 characters, so inside a longer stream (``user:token``
    encoded whole) a value starts at one of three byte offsets and encodes
    differently at each. For each offset this keeps only the characters made of the
    value's bits alone: the first one or two characters share bits with what comes
    before, the last one with what comes after. The value encoded by itself (padded
    or not) is a form too, so its last character goes as well.
    """
    if len(value) < _MIN_ENCODED:
        return set()
    import base64
    import json
    import re
    from urllib.parse import quote, quote_plus

    # A value from the environment may hold undecodable bytes (surrogateescape).
    raw = value.encode("utf-8", "surrogateescape")
    percent = {quote(raw, safe=""), quote(raw), quote_plus(raw)}
    forms = {
        *percent,
        # Some encoders write the hex digits in lower case (%2f): RFC 3986 allows both.
        *(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), p) for p in percent),
        json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        alone = encode(raw).decode("ascii")  # the value encoded by itself, as is most common
        forms.update((alone, alone.rstrip("=")))
        for offset in range(3):
            first = -(-8 * offset // 6)  # the characters holding a bit of what precedes
            stop = 8 * (offset + len(raw)) // 6  # the last made only of the value's bits
            forms.add(encode(b"\0" * offset + raw).decode("ascii")[first:stop])
    forms.discard(value)
    return {form for form in forms if len(form) >= _MIN_ENCODED}


def _patterns(secrets: Iterable[str]) -> set[str]:
    values: set[str] = set()
    for value in secrets:
        if not value:
            continue
        values.add(value)
        lines = value.splitlines()
        if lines != [value]:
            values.update(line for line in lines if len(line) >= _MIN_LINE)
    patterns = set(values)
    for value in values:
        patterns |= encoded_forms(value)
    return patterns


class Masker:
    """Replaces secret values with ``MASK``, in one string or in a stream of chunks."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [s for s in secrets if s]
        self._build()
        self._pending = ""
        # How many leading characters of _pending lie inside a MASK already emitted.
        self._covered = 0

    def add(self, values: Iterable[str]) -> None:
        """Mask ``values`` too, from here on in the stream (a workflow's ``::add-mask::``);
        what was emitted already stays as it was."""
        new = [v for v in values if v and v not in self._secrets]
        if new:
            self._secrets += new
            self._build()

    def _build(self) -> None:
        self._patterns = tuple(sorted(_patterns(self._secrets), key=lambda p: (-len(p), p)))
        self._longest = len(self._patterns[0]) if self._patterns else 0
        # Whether a chunk holds any pattern at all is answered by the patterns that
        # contain no other one: where a longer pattern occurs, one of these does too.
        probes: list[str] = []
        for pattern in sorted(self._patterns, key=len):
            if not any(probe in pattern for probe in probes):
                probes.append(pattern)
        self._probes = tuple(probes)
        # A held-back tail of fewer than _HEAD characters is found by lookup; a
        # longer one starts where some pattern's first _HEAD characters occur.
        self._short_prefixes = {
            p[:size] for p in self._patterns for size in range(1, min(len(p), _HEAD))
        }
        heads: dict[str, list[str]] = {}
        for pattern in self._patterns:
            if len(pattern) > _HEAD:
                heads.setdefault(pattern[:_HEAD], []).append(pattern)
        self._heads = heads

    @property
    def longest(self) -> int:
        """The length of the longest pattern (a value, a line of one, an encoded form)."""
        return self._longest

    @property
    def held(self) -> int:
        """How many characters ``feed`` holds back: fewer than ``longest``."""
        return len(self._pending)

    def feed(self, text: str) -> str:
        """Take the next chunk of a stream; return the masked text that is safe to emit now."""
        if not self._patterns:
            return text
        buffer = self._pending + text if self._pending else text
        hold = self._hold_point(buffer)
        out, self._covered = self._scan(buffer, self._covered, hold)
        self._pending = buffer[hold:]
        return out

    def flush(self) -> str:
        """End the stream: return whatever ``feed`` held back, masked."""
        if not self._patterns:
            return ""
        out, _ = self._scan(self._pending, self._covered, len(self._pending))
        self._pending = ""
        self._covered = 0
        return out

    def mask(self, text: str) -> str:
        """Mask one whole string (an error message, an output tail); the stream is untouched."""
        if not self._patterns:
            return text
        return self._scan(text, 0, len(text))[0]

    def _hold_point(self, text: str) -> int:
        """Where the longest tail of ``text`` that is a proper prefix of a pattern begins.

        Only the last ``longest - 1`` characters can hold one, so the work per call is
        bounded by the patterns, never by the stream.
        """
        size = len(text)
        low = max(0, size - self._longest + 1)
        best = size
        # Tails of _HEAD characters or more: they begin with some pattern's head.
        for head, patterns in self._heads.items():
            start = text.find(head, low, size)
            while 0 <= start < best:
                tail = text[start:]
                if any(len(p) > len(tail) and p.startswith(tail) for p in patterns):
                    best = start
                    break
                start = text.find(head, start + 1, size)
        if best < size:
            return best
        for length in range(min(_HEAD - 1, size - low), 0, -1):
            if text[size - length:] in self._short_prefixes:
                return size - length
        return size

    def _scan(self, text: str, covered: int, end: int) -> tuple[str, int]:
        """Mask ``text[:end]``, given that its first ``covered`` characters are masked already.

        Occurrences starting before ``end`` are final (``end`` is at most the hold
        point) even when they reach past it; returns the output and how far past
        ``end`` the last mask reaches, which the next call receives as ``covered``.
        """
        spans: list[tuple[int, int]] = []
        if any(probe in text for probe in self._probes):
            for pattern in self._patterns:
                size = len(pattern)
                start = text.find(pattern)
                while 0 <= start < end:
                    spans.append((start, start + size))
                    start = text.find(pattern, start + 1)
            spans.sort()
        pieces: list[str] = []
        masked_to = covered
        for start, stop in spans:
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
