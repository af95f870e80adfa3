"""The web view's logs: terminal colours become classes, everything else is escaped, and
a log fed in any chunks renders as it does whole."""

from __future__ import annotations

import html as htmllib
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.server.ansi import Renderer, render

_SPAN = re.compile(r'<span class="([^"]*)">(.*?)</span>|([^<]+)', re.S)


def styled(html: str) -> list[tuple[str, str]]:
    """What a browser shows of ``html``: each character with its classes (a span cut in
    two by a chunk boundary shows as one)."""
    shown = []
    for match in _SPAN.finditer(html):
        classes, inner, plain = match.groups()
        text = htmllib.unescape(inner if plain is None else plain)
        shown += [(classes or "", ch) for ch in text]
    assert "".join(m.group(0) for m in _SPAN.finditer(html)) == html  # nothing else in it
    return shown


def test_colours_become_classes_and_reset_ends_them():
    html = render(b"\x1b[1;31merror\x1b[0m: plain \x1b[32mgreen\x1b[39m default")
    assert html == ('<span class="fg1 b">error</span>: plain <span class="fg2">green</span>'
                    " default")


def test_markup_in_a_log_is_text():
    html = render(b"<script>alert(1)</script> & \"q\"")
    assert "<script>" not in html
    assert html == "&lt;script&gt;alert(1)&lt;/script&gt; &amp; \"q\""


def test_other_escapes_are_dropped_not_shown():
    # A window title (OSC), a hyperlink, cursor moves and a stray ESC leave no trace.
    raw = (b"\x1b]0;title\x07\x1b]8;;https://x.example\x1b\\link\x1b]8;;\x1b\\"
           b" \x1b[2K\x1b[1Gdone\x1b(B\x1b")
    assert render(raw) == "link done"


def test_bright_256_and_true_colours_map_to_the_sixteen():
    assert render(b"\x1b[91mA\x1b[0m") == '<span class="fg9">A</span>'
    assert render(b"\x1b[38;5;196mB\x1b[0m") == '<span class="fg9">B</span>'
    assert render(b"\x1b[48;2;0;0;0mC\x1b[0m") == '<span class="bg0">C</span>'
    assert render(b"\x1b[7mD\x1b[0m") == '<span class="fg-bg bg-fg">D</span>'


def test_a_progress_line_shows_its_last_state():
    assert render(b"10%\r50%\r100%\nnext\r\n") == "100%\nnext\n"
    # Colour set before a \r still applies to what follows it.
    assert render(b"\x1b[33mold\rnew\x1b[0m\n") == '<span class="fg3">new</span>\n'


def test_chunks_cut_anywhere_render_as_the_whole():
    raw = "\x1b[1;34mbuild ✓\x1b[0m\n10%\r99%\r100%\n\x1b[38;5;46mok\x1b[0m done\n".encode()
    whole = render(raw)
    for cut in range(1, len(raw)):
        renderer = Renderer()
        first, _ = renderer.feed(raw[:cut])
        rest, still_open = renderer.feed(raw[cut:], final=True)
        assert still_open == ""
        assert styled(first + rest) == styled(whole), cut


def test_the_line_being_written_is_shown_apart_and_again_as_it_grows():
    renderer = Renderer()
    assert renderer.feed(b"\x1b[32mok\x1b[0m\nDownloading") == (
        '<span class="fg2">ok</span>\n', "Downloading")
    assert renderer.feed(b" 10%\r") == ("", "Downloading 10%")
    assert renderer.feed(b"Downloading 90%\x1b[1") == ("", "Downloading 90%")
    assert renderer.feed(b"m!") == ("", 'Downloading 90%<span class="b">!</span>')
    assert renderer.feed(b"\n") == ('Downloading 90%<span class="b">!</span>\n', "")
    # The open line was rendered from its start each time: the style goes on from here.
    assert renderer.feed(b"x\n") == ('<span class="b">x</span>\n', "")


_PIECES = st.sampled_from([b"a", b"<", b"\n", b"\r", b"\r\n", b"\x1b[", b"31m", b"1;", b"0m",
                           b"\x1b]0;t\x07", "é".encode(), b"\xe2", b"\x9c\x93", b" ", b"\x1b"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(0, 200), max_size=6))
def test_any_log_in_any_chunks_renders_as_the_whole(pieces: list[bytes], cuts: list[int]):
    raw = b"".join(pieces)
    points = sorted({min(c, len(raw)) for c in cuts})
    renderer = Renderer()
    out, last = "", 0
    for point in points:
        done, open_line = renderer.feed(raw[last:point])
        out += done
        assert "\n" not in open_line
        last = point
    done, open_line = renderer.feed(raw[last:], final=True)
    assert open_line == ""
    out += done
    assert styled(out) == styled(render(raw))
    assert "\x1b" not in out and "\r" not in out
