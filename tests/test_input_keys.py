"""Input keys: the one-regex matcher agrees with the segment-by-segment reference on any
pattern and path, and a pattern set is matched once per run (later steps look it up)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_runner.errors import UsageError
from ci_runner.workspace import inputs
from ci_runner.workspace.inputs import TreeIndex, _matcher, _matches, _parts
from tests.gitrepos import make_repo

segments = st.text(alphabet="ab.-_[]!^&~|\\", min_size=1, max_size=4)
paths = st.lists(segments, min_size=1, max_size=5).map("/".join)
globs = st.lists(
    st.one_of(st.just("**"), st.text(alphabet="ab.-_[]!^*?\\&~|", min_size=1, max_size=5)),
    min_size=1, max_size=4,
).map("/".join)


@settings(max_examples=3000, deadline=None)
@given(pattern=globs, path=paths)
def test_the_regex_matcher_agrees_with_the_reference(pattern: str, path: str) -> None:
    try:
        parts = _parts(pattern)
    except UsageError:  # patterns the reference refuses are refused alike
        return
    expected = _matches(parts, path.split("/"))
    assert _matcher([parts])(path) is expected, (pattern, path)


@pytest.mark.parametrize("pattern,path,hit", [
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/pkg/a.py", False),  # * stays inside one segment
    ("**/*.py", "a.py", True),
    ("**/*.py", "x/y/z.py", True),
    ("src/**", "src/a/b", True),
    ("docs", "docs/api/x.md", True),  # no wildcard: everything below
    ("docs", "docsx/a", False),
    ("src/[!a]*", "src/b", True),
    ("src/[!a]*", "src/a", False),
    ("a?c", "a/c", False),  # ? never matches a separator
    ("[.-0]x", "/x", False),  # nor does a bracket range that spans "/"
    ("[z-a]", "z", False),  # an empty range: the reference decides
])
def test_examples(pattern: str, path: str, hit: bool) -> None:
    assert _matcher([_parts(pattern)])(path) is hit


def test_a_pattern_set_is_matched_once_per_run(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"a.py": "1\n", "src/b.py": "2\n", "README": "x\n"})
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    index = TreeIndex(repo, head)
    calls: list[int] = []
    real = inputs._matcher

    def counting(compiled: list[list[str]]):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(compiled)

    monkeypatch.setattr(inputs, "_matcher", counting)
    first = index.digest(["**/*.py"])
    assert index.digest(["**/*.py"]) == first
    assert len(calls) == 1
    other = index.digest(["README"])
    assert other != first and len(calls) == 2
    # The digest covers exactly the matched files' blob ids.
    assert index.match(["**/*.py"]) == sorted(
        (p, b) for p, b in index.blobs.items() if p.endswith(".py"))
