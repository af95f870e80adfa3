"""``hashFiles(...)``: the cache key GitHub computes from a workspace's files.

The same algorithm as GitHub's runner (which globs with ``@actions/glob``), so a
key computed here equals the one computed there for the same files:

* each argument may hold several patterns, one a line; blank lines and ``#``
  comments are ignored; a leading ``!`` excludes, and the last pattern that
  matches a path decides; patterns are relative to the workspace root;
* ``*`` and ``?`` stay within a path segment, ``**`` spans any number of them,
  ``[abc]`` is a class; dot-files match like any other; a pattern that matches
  a directory matches everything under it; one ending in ``/`` only matches
  directories (so: the files under them);
* the walk starts at each pattern's literal prefix, in the order the patterns
  come, depth first with each directory's entries in byte order, without
  following symbolic links into directories;
* every matched file's SHA-256 digest (32 raw bytes) goes, in walk order, into
  one SHA-256, whose hex digest is the result; "" when no file matched.

Only files inside the root count: a symbolic link is followed to a file only
when that file is inside the root too (GitHub checks the link's own path only).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["FOLLOW_OPTION", "hash_files"]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class _Pattern:
    negate: bool
    segments: tuple[str, ...]  # relative to the root; "**" spans segments
    directories_only: bool

    def literal_prefix(self) -> tuple[str, ...]:
        prefix: list[str] = []
        for segment in self.segments:
            if _GLOB_CHARS & set(segment):
                break
            prefix.append(segment)
        return tuple(prefix)


def _parse_patterns(root: Path, patterns: Sequence[str]) -> list[_Pattern]:
    parsed: list[_Pattern] = []
    for argument in patterns:
        for line in argument.splitlines():
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            negate = False
            while text.startswith("!"):
                negate = not negate
                text = text[1:]
            directories_only = text.endswith("/")
            absolute = Path(os.path.normpath(root / text))
            try:
                relative = absolute.relative_to(root)
            except ValueError:
                continue  # outside the root: matches nothing here
            parts = tuple(p for p in relative.parts if p != ".")
            parsed.append(_Pattern(negate, parts, directories_only))
    return parsed


def _segment_match(pattern: str, name: str) -> bool:
    # minimatch writes a negated class [^...]; fnmatch wants [!...]
    return fnmatchcase(name, pattern.replace("[^", "[!"))


def _matches(segments: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not segments:
        return not path
    head = segments[0]
    if head == "**":
        return any(_matches(segments[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and _segment_match(head, path[0]) and _matches(segments[1:], path[1:])


def _selected(patterns: list[_Pattern], path: tuple[str, ...], is_dir: bool) -> bool:
    selected = False
    for pattern in patterns:
        hit = any(
            _matches(pattern.segments, path[:n])
            and (n < len(path) or is_dir or not pattern.directories_only)
            for n in range(len(path), 0, -1)
        )
        if hit:
            selected = not pattern.negate
    return selected


def _walk(
    root: Path, start: tuple[str, ...], *, follow: bool
) -> Iterator[tuple[tuple[str, ...], bool]]:
    """Paths under ``start`` (itself included), depth first, names in byte order."""
    stack = [start]
    while stack:
        rel = stack.pop()
        full = root.joinpath(*rel)
        try:
            mode = (os.stat if follow else os.lstat)(full).st_mode
        except OSError:
            continue
        is_dir = stat.S_ISDIR(mode)
        yield rel, is_dir
        if is_dir and follow:
            # a followed link may lead out of the root, or back to a directory
            # it is inside of (a cycle)
            real = full.resolve()
            if not real.is_relative_to(root) or (
                full.is_symlink() and full.parent.resolve().is_relative_to(real)
            ):
                continue
        if is_dir:
            try:
                names = sorted((e.name for e in full.iterdir()), key=os.fsencode)
            except OSError:
                continue
            stack.extend((*rel, name) for name in reversed(names))


def _file_digest(root: Path, path: Path) -> bytes | None:
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    digest = hashlib.sha256()
    with real.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


FOLLOW_OPTION = "--follow-symbolic-links"


def hash_files(root: Path, patterns: Sequence[str]) -> str:
    """GitHub's ``hashFiles(patterns...)`` over the workspace ``root``.

    As on GitHub, a first argument ``--follow-symbolic-links`` makes the walk
    enter symbolic links to directories (within the root only, here).
    """
    root = root.resolve()
    follow = bool(patterns) and patterns[0] == FOLLOW_OPTION
    if follow:
        patterns = patterns[1:]
    parsed = _parse_patterns(root, patterns)
    # Walk from each include pattern's literal prefix, unless another pattern's
    # prefix is an ancestor of it (it is walked there).
    prefixes = [p.literal_prefix() for p in parsed if not p.negate]
    every = set(prefixes)
    starts: list[tuple[str, ...]] = []
    for prefix in prefixes:
        if prefix in starts or any(prefix[:n] in every for n in range(len(prefix))):
            continue
        starts.append(prefix)
    total = hashlib.sha256()
    matched = False
    for start in starts:
        for rel, is_dir in _walk(root, start, follow=follow):
            if is_dir:
                continue
            if not _selected(parsed, rel, is_dir=False):
                continue
            digest = _file_digest(root, root.joinpath(*rel))
            if digest is None:
                continue
            total.update(digest)
            matched = True
    return total.hexdigest() if matched else ""
