"""Step logs as HTML for the web view: terminal colours (ANSI SGR) become ``<span>``s
with classes, everything else is escaped, and the rest of the terminal's escapes
(cursor moves, titles, hyperlinks) is dropped.

``Renderer`` is fed a log in chunks as it grows: it keeps what a chunk cannot finish
(a UTF-8 character or an escape sequence cut in two) and renders the line still being
written apart from the finished ones, so that a page can show it now and replace it
as it grows; a line rewritten with carriage returns (a progress bar) shows its last
state. Colours are classes, never ``style=`` attributes, so the pages' Content
Security Policy needs no ``unsafe-inline``: the 16 colours are exact, 256-colour
and true-colour ones become the nearest of those 16.
"""

from __future__ import annotations

import codecs
import html
import re
from dataclasses import dataclass, replace

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and the other escapes (ESC,
# intermediate bytes, a final byte: charsets, keypad modes, cursor saves).
_ESCAPE = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
                     r"|\x1b[ -/]*[0-~]")
# An escape that may still be completed by the next chunk.
_OPEN_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]+)?\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # a stray ESC too
HELD_MAX = 64 * 1024  # an open line longer than this is cut to its last state

# The xterm palette of the 16 colours, for mapping 256- and true-colour ones.
_PALETTE = [(0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0), (0, 0, 238), (205, 0, 205),
            (0, 205, 205), (229, 229, 229), (127, 127, 127), (255, 0, 0), (0, 255, 0),
            (255, 255, 0), (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255)]


@dataclass(frozen=True)
class Style:
    fg: int | None = None  # 0-15, or None: the log's own colour
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    inverse: bool = False

    def classes(self) -> str:
        fg, bg = self.fg, self.bg
        names = []
        if self.inverse:
            names.append(f"fg{bg}" if bg is not None else "fg-bg")
            names.append(f"bg{fg}" if fg is not None else "bg-fg")
        else:
            if fg is not None:
                names.append(f"fg{fg}")
            if bg is not None:
                names.append(f"bg{bg}")
        names += [n for n, on in (("b", self.bold), ("d", self.dim), ("i", self.italic),
                                  ("u", self.underline)) if on]
        return " ".join(names)


PLAIN = Style()


class Renderer:
    """Turns a log's bytes, fed in order in any chunks, into HTML: the lines they
    complete, and the line still being written (shown as it is now, and sent again
    whole as it grows: a carriage return may rewrite it)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # the line not ended yet, as written (escapes and \r included)
        self.style = PLAIN  # at the start of that line

    def feed(self, data: bytes, *, final: bool = False) -> tuple[str, str]:
        """The HTML of the lines ``data`` completes (to append), and of the line still
        open (to show in place of the one shown before). ``final``: nothing follows."""
        text = self._line + self._decoder.decode(data, final=final)
        cut = len(text) if final else text.rfind("\n") + 1
        done, self._line = text[:cut], text[cut:]
        if len(self._line) > HELD_MAX:
            self._line = _last_state(self._line)
            if len(self._line) > HELD_MAX:  # one endless line: shown in pieces
                done, self._line = done + self._line + "\n", ""
        out: list[str] = []
        self._render(done, out)
        if not self._line:
            return "".join(out), ""
        start = self.style
        shown: list[str] = []
        line = _OPEN_ESCAPE.sub("", self._line)
        self._render_line(_last_state(line) if "\r" in line else line, shown)
        self.style = start  # the open line is rendered again from its start next time
        return "".join(out), "".join(shown)

    def _render(self, text: str, out: list[str]) -> None:
        if not text:
            return
        lines = text.split("\n")
        for i, line in enumerate(lines):
            self._render_line(_last_state(line) if "\r" in line else line, out)
            if i < len(lines) - 1:
                out.append("\n")

    def _render_line(self, line: str, out: list[str]) -> None:
        at = 0
        for match in _ESCAPE.finditer(line):
            self._text(line[at:match.start()], out)
            at = match.end()
            if match.group(2) == "m":
                self.style = sgr(self.style, match.group(1))
        self._text(line[at:], out)

    def _text(self, text: str, out: list[str]) -> None:
        text = _CONTROL.sub("", text)
        if not text:
            return
        classes = self.style.classes()
        escaped = html.escape(text, quote=False)
        out.append(f'<span class="{classes}">{escaped}</span>' if classes else escaped)


def render(data: bytes) -> str:
    """A whole log as HTML."""
    return Renderer().feed(data, final=True)[0]


def _last_state(line: str) -> str:
    """A line as a terminal would leave it after its carriage returns: the text after
    the last \\r (the escapes before it still apply). A \\r ending the line is CRLF."""
    line = line.rstrip("\r")
    if "\r" not in line:
        return line
    before, _, after = line.rpartition("\r")
    return _escapes_of(before) + after


def _escapes_of(text: str) -> str:
    return "".join(m.group(0) for m in _ESCAPE.finditer(text))


def sgr(style: Style, params: str) -> Style:
    """``style`` after the SGR sequence ``ESC [ params m``."""
    codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        i += 1
        if code == 0:
            style = PLAIN
        elif code == 1:
            style = replace(style, bold=True)
        elif code == 2:
            style = replace(style, dim=True)
        elif code == 3:
            style = replace(style, italic=True)
        elif code == 4:
            style = replace(style, underline=True)
        elif code == 7:
            style = replace(style, inverse=True)
        elif code == 22:
            style = replace(style, bold=False, dim=False)
        elif code == 23:
            style = replace(style, italic=False)
        elif code == 24:
            style = replace(style, underline=False)
        elif code == 27:
            style = replace(style, inverse=False)
        elif 30 <= code <= 37:
            style = replace(style, fg=code - 30)
        elif 90 <= code <= 97:
            style = replace(style, fg=code - 90 + 8)
        elif 40 <= code <= 47:
            style = replace(style, bg=code - 40)
        elif 100 <= code <= 107:
            style = replace(style, bg=code - 100 + 8)
        elif code == 39:
            style = replace(style, fg=None)
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48):
            colour, i = _extended(codes, i)
            if colour is not None:
                style = replace(style, fg=colour) if code == 38 else replace(style, bg=colour)
    return style


def _extended(codes: list[int], i: int) -> tuple[int | None, int]:
    """A 256-colour (``5;n``) or true-colour (``2;r;g;b``) argument at ``codes[i]``, as
    the nearest of the 16 colours, and the index after it."""
    if i < len(codes) and codes[i] == 5 and i + 1 < len(codes):
        return _from_256(codes[i + 1]), i + 2
    if i < len(codes) and codes[i] == 2 and i + 3 < len(codes):
        return _nearest(tuple(min(c, 255) for c in codes[i + 1:i + 4])), i + 4
    return None, len(codes)


def _from_256(n: int) -> int | None:
    if 0 <= n < 16:
        return n
    if 16 <= n < 232:
        n -= 16
        steps = (0, 95, 135, 175, 215, 255)
        return _nearest((steps[n // 36], steps[n // 6 % 6], steps[n % 6]))
    if 232 <= n < 256:
        grey = 8 + (n - 232) * 10
        return _nearest((grey, grey, grey))
    return None


def _nearest(rgb: tuple[int, ...]) -> int:
    return min(range(16), key=lambda k: sum((a - b) ** 2
                                            for a, b in zip(_PALETTE[k], rgb, strict=True)))
