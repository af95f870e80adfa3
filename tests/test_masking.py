"""Masking must hold for any chunking of the output, so it is tested as a property."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.executors import MASK, Masker

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
