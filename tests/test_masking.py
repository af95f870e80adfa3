"""Masking must hold for any chunking of the output, so it is tested as a property."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.executors import MASK, Masker
from ci_runner.executors.masking import encoded_forms

# A tiny alphabet makes overlaps, repeats and near-misses common. No "*": a secret
# made of mask characters could always be "found" in the masked output.
_ALPHABET = "ab\nc"


def _feed_all(masker: Masker, chunks: list[str]) -> str:
    return "".join(masker.feed(chunk) for chunk in chunks) + masker.flush()


def _visible(secrets: list[str]) -> list[str]:
    """What must never appear: each secret and each long line of a multi-line one."""
    out = [s for s in secrets if s]
    for s in secrets:
        if s.splitlines() != [s]:
            out += [line for line in s.splitlines() if len(line) >= 4]
    return out


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    secrets = draw(st.lists(st.text(_ALPHABET, min_size=1, max_size=8), min_size=1, max_size=4))
    parts = draw(
        st.lists(
            st.one_of(st.sampled_from(secrets), st.text(_ALPHABET + "xyz", max_size=6)),
            max_size=12,
        )
    )
    text = "".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return secrets, chunks


@settings(max_examples=800, deadline=None)
@given(_streams())
def test_any_chunking_masks_like_the_whole_text(stream: tuple[list[str], list[str]]) -> None:
    secrets, chunks = stream
    text = "".join(chunks)
    whole = Masker(secrets).mask(text)
    streamed = _feed_all(Masker(secrets), chunks)
    assert streamed == whole
    for secret in _visible(secrets):
        assert secret not in streamed


@given(st.text(max_size=50), st.lists(st.integers(0, 50), max_size=5))
def test_no_secrets_passes_text_through(text: str, cuts: list[int]) -> None:
    masker = Masker(["", ""])
    cuts = sorted(min(cut, len(text)) for cut in cuts)
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert _feed_all(masker, chunks) == text


def test_overlapping_occurrences_merge_into_one_mask() -> None:
    masker = Masker(["abc", "bcd"])
    assert masker.mask("xabcdx") == f"x{MASK}x"
    assert Masker(["aaaa"]).mask("aaaaaa") == MASK


def test_adjacent_occurrences_stay_separate() -> None:
    assert Masker(["abc"]).mask("abcabc") == MASK + MASK


def test_longer_secret_wins_over_its_prefix() -> None:
    masker = Masker(["tok", "token123"])
    assert masker.feed("my tok") == "my "
    assert masker.feed("en123!") == f"{MASK}!"
    assert masker.flush() == ""


def test_secret_split_across_feeds_is_masked() -> None:
    masker = Masker(["hunter2"])
    assert masker.feed("pw=hun") == "pw="
    assert masker.feed("ter2\n") == f"{MASK}\n"


def test_feed_holds_back_only_a_possible_start() -> None:
    masker = Masker(["secret"])
    assert masker.feed("a sec") == "a "
    assert masker.feed("ond") == "second"
    assert masker.feed("xyz s") == "xyz "
    assert masker.flush() == "s"
    assert masker.flush() == ""


def test_lines_of_a_multiline_secret_are_masked_alone() -> None:
    key = "-----BEGIN KEY-----\nMIIEabcdef\nab\n-----END KEY-----\n"
    masker = Masker([key])
    assert masker.mask(key) == MASK
    assert masker.mask("line: MIIEabcdef") == f"line: {MASK}"
    # Lines shorter than four characters would mask half of any log.
    assert masker.mask("ab") == "ab"
    assert Masker(["token\n"]).mask("token") == MASK


def test_mask_leaves_stream_state_alone() -> None:
    masker = Masker(["hunter2"])
    assert masker.feed("hun") == ""
    assert masker.mask("hunter2") == MASK
    assert masker.feed("ter2") == MASK


# Encoded forms, as GitHub Actions masks them: base64 (standard and URL-safe, at the
# three alignments), percent-encoded and JSON-escaped.

_SECRET = 'p@ss w/"rd+é\\Tok3n?~'


def _chunked(masker: Masker, text: str, cut: int) -> str:
    return _feed_all(masker, [text[:cut], text[cut:]])


def _assert_masked_every_way(secret: str, text: str, expected: str) -> None:
    assert Masker([secret]).mask(text) == expected
    for cut in range(len(text) + 1):
        assert _chunked(Masker([secret]), text, cut) == expected, cut
    assert _feed_all(Masker([secret]), list(text)) == expected


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("before", range(6))
def test_base64_of_a_secret_inside_a_longer_stream_is_masked(before: int, urlsafe: bool) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    raw = _SECRET.encode()
    stream = encode(b"u" * before + raw + b"@host:443").decode()
    # The characters made of the secret's bits alone; one either side shares bits
    # with its neighbours and stays (as GitHub's runner leaves it).
    first, stop = -(-8 * before // 6), 8 * (before + len(raw)) // 6
    expected = stream[:first] + MASK + stream[stop:]
    _assert_masked_every_way(_SECRET, f"Authorization: Basic {stream}\n",
                             f"Authorization: Basic {expected}\n")


@pytest.mark.parametrize("form", [
    quote(_SECRET, safe=""), quote(_SECRET), quote_plus(_SECRET),
    json.dumps(_SECRET)[1:-1], json.dumps(_SECRET, ensure_ascii=False)[1:-1],
])
def test_url_encoded_and_json_escaped_forms_are_masked(form: str) -> None:
    assert form != _SECRET
    _assert_masked_every_way(_SECRET, f"GET /?token={form}&x=1\n", f"GET /?token={MASK}&x=1\n")


def test_json_of_a_multiline_secret_and_its_lines_are_masked() -> None:
    key = "-----BEGIN KEY-----\nMIIEabcdef\n-----END KEY-----"
    masker = Masker([key])
    assert masker.mask(json.dumps({"key": key})) == f'{{"key": "{MASK}"}}'
    line_b64 = base64.b64encode(b"MIIEabcdef").decode()
    assert masker.mask(f"line: {line_b64}") == f"line: {MASK}"


def test_base64_that_is_not_a_secret_is_left_alone() -> None:
    masker = Masker([_SECRET, "hunter2"])
    other = base64.b64encode(b"just some bytes that are no secret at all").decode()
    quoted = json.dumps('say "hi"')
    text = f"digest: {other} {quote('a b/c')} {quoted}\n"
    assert masker.mask(text) == text
    assert _feed_all(masker, [text[:20], text[20:]]) == text


def test_short_secrets_have_no_encoded_forms() -> None:
    # base64("abc") is "YWJj": masking it would blank unrelated base64 everywhere.
    assert encoded_forms("abc") == set()
    assert Masker(["abc"]).mask("YWJj abc") == f"YWJj {MASK}"
    assert all(len(form) >= 4 for form in encoded_forms("abcd"))


def _reference(patterns: set[str], text: str) -> str:
    """Masking by brute force: mark every occurrence, merge overlapping ones."""
    spans = sorted((i, i + len(p)) for p in patterns for i in range(len(text))
                   if text.startswith(p, i))
    out, masked_to = [], 0
    for start, stop in spans:
        if start < masked_to:
            masked_to = max(masked_to, stop)
            continue
        out += [text[masked_to:start], MASK]
        masked_to = stop
    return "".join([*out, text[masked_to:]])


@st.composite
def _encoded_streams(draw: st.DrawFn) -> tuple[list[str], list[str], set[str]]:
    secrets = draw(st.lists(st.text("ab\nc/+ é", min_size=1, max_size=9), min_size=1,
                            max_size=3))
    patterns = set(secrets) | {line for s in secrets for line in s.splitlines()
                               if len(line) >= 4 and s.splitlines() != [s]}
    for value in list(patterns):
        patterns |= encoded_forms(value)
    parts = draw(st.lists(st.one_of(st.sampled_from(sorted(patterns)),
                                    st.text("ab\nc/+ é%YWJ=", max_size=6)), max_size=10))
    text = "".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return secrets, chunks, patterns


@settings(max_examples=400, deadline=None)
@given(_encoded_streams())
def test_encoded_forms_mask_like_brute_force_however_chunked(
    stream: tuple[list[str], list[str], set[str]],
) -> None:
    secrets, chunks, patterns = stream
    expected = _reference(patterns, "".join(chunks))
    masker = Masker(secrets)
    streamed = []
    for chunk in chunks:
        streamed.append(masker.feed(chunk))
        assert masker.held < masker.longest
    assert "".join(streamed) + masker.flush() == expected
    assert Masker(secrets).mask("".join(chunks)) == expected


def test_lower_case_percent_encoding_is_masked_too() -> None:
    secret = "p@ss/w0rd?x"
    lower = "p%40ss%2fw0rd%3fx"
    assert Masker([secret]).mask(f"url={lower}&a=1") == "url=***&a=1"
