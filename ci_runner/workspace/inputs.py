"""What a step's ``inputs=`` patterns name at a run's sha, read from git's tree.

The blob ids git already keeps are content hashes, so no file is read from disk
(a step may have changed the worktree; the commit has not changed). The tree is
listed once per run (one ``git ls-tree``); patterns are then matched here with
git's ``:(glob)`` pathspec rules, which git itself only offers one call per query:
``*`` and ``?`` stay inside one path segment, ``**`` spans any number of them, and
a pattern without wildcards also names everything below it (``docs`` = ``docs/**``).
tests/test_inputs.py checks these rules against git's own ``ls-files ':(glob)…'``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from hashlib import sha256
from pathlib import Path
from typing import Any

from ci_runner.errors import UsageError
from ci_runner.workspace.worktree import _git_ok

_MAGIC = frozenset("*?[")


class TreeIndex:
    """Every file of one commit, ``path -> blob id``, listed once.

    A run's steps mostly repeat a few pattern sets: each set is matched once, and
    its digest (what a cache key needs) kept, so later steps pay a dictionary look-up.
    """

    def __init__(self, worktree: Path, sha: str) -> None:
        out = _git_ok(worktree, "list the commit's files", "ls-tree", "-r", "-z",
                      "--full-tree", sha)
        self.blobs: dict[str, str] = {}
        for entry in out.split("\0"):
            if entry:
                meta, _, path = entry.partition("\t")
                kind, blob = meta.split()[1:3]
                if kind == "blob":
                    self.blobs[path] = blob
        self._digests: dict[tuple[str, ...], str] = {}

    def match(self, patterns: list[str]) -> list[tuple[str, str]]:
        """``(path, blob id)`` of every file matching any of ``patterns``, sorted."""
        matches = _matcher([_parts(p) for p in patterns])
        return sorted((path, blob) for path, blob in self.blobs.items() if matches(path))

    def digest(self, patterns: list[str]) -> str:
        """A SHA-256 of what ``match(patterns)`` returns, computed once per pattern set."""
        key = tuple(patterns)
        found = self._digests.get(key)
        if found is None:
            text = json.dumps(self.match(list(patterns)), separators=(",", ":"))
            found = self._digests[key] = sha256(text.encode()).hexdigest()
        return found


def input_key(tree: TreeIndex, patterns: list[str], material: dict[str, Any]) -> str:
    """A step's cache key: its input patterns, what they match at the commit (by blob
    id, so no file is read) and the rest of what the step is (``material``)."""
    text = json.dumps({"v": 2, "inputs": patterns, "blobs": tree.digest(patterns), **material},
                      sort_keys=True, default=str)
    return sha256(text.encode()).hexdigest()


def _matcher(compiled: list[list[str]]) -> Callable[[str], bool]:
    """One test of a path against every pattern: a single regular expression over
    ``path + "/"`` where it can be built, else the segment-by-segment reference."""
    try:
        regex = re.compile("|".join(f"(?:{_regex(parts)})" for parts in compiled))
    except re.error:  # a bracket expression re reads otherwise ([z-a]): the slow way
        return lambda path: any(_matches(parts, path.split("/")) for parts in compiled)
    return lambda path: regex.fullmatch(path + "/") is not None


def _regex(parts: list[str]) -> str:
    """``parts`` as a regular expression over a path with a "/" after every segment:
    a segment is ``SEG/``, and ``**`` any number of whole segments."""
    return "".join("(?:[^/]+/)*" if part == "**" else _segment(part) + "/" for part in parts)


def _segment(part: str) -> str:
    """One path segment's glob as fnmatchcase reads it, never matching a "/"."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            if not out or out[-1] != "[^/]*":
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] == "!":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")  # no closing bracket: a plain "["
                continue
            stuff = part[i:j].replace("\\", "\\\\")
            stuff = re.sub(r"([&~|])", r"\\\1", stuff)
            i = j + 1
            if stuff.startswith("!"):
                stuff = "^" + stuff[1:]
            elif stuff.startswith(("^", "[")):
                stuff = "\\" + stuff
            out.append(f"(?!/)[{stuff}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _parts(pattern: str) -> list[str]:
    if not isinstance(pattern, str) or not pattern.strip("/") or pattern.startswith((":", "-")):
        raise UsageError(f"input pattern {pattern!r} must be a path or glob like 'src/**'")
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"input pattern {pattern!r} must stay inside the repository")
    if pattern.endswith("/") or not _MAGIC & set(pattern):
        parts.append("**")  # a directory (or a file: ** also matches nothing more)
    return parts


def _matches(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], head) and _matches(rest, path[1:])
