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

from fnmatch import fnmatchcase
from pathlib import Path

from ci_runner.errors import UsageError
from ci_runner.workspace.worktree import _git_ok

_MAGIC = frozenset("*?[")


class TreeIndex:
    """Every file of one commit, ``path -> blob id``, listed once."""

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

    def match(self, patterns: list[str]) -> list[tuple[str, str]]:
        """``(path, blob id)`` of every file matching any of ``patterns``, sorted."""
        compiled = [_parts(p) for p in patterns]
        return sorted(
            (path, blob) for path, blob in self.blobs.items()
            if any(_matches(parts, path.split("/")) for parts in compiled)
        )


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
