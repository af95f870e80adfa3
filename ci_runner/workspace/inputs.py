"""What a step's ``inputs=`` patterns name at a run's sha, read from git's tree.

The blob ids git already keeps are content hashes, so the files are never read
from disk (a step may have changed the worktree; the commit has not changed).
Patterns are git pathspecs with glob magic: ``src/**``, ``*.toml``, ``docs/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ci_runner.errors import UsageError
from ci_runner.workspace.worktree import _git_ok


def input_blobs(worktree: Path, sha: str, patterns: list[str]) -> list[tuple[str, str]]:
    """``(path, blob id)`` of every file at ``sha`` matching ``patterns``, sorted."""
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or pattern.startswith((":", "-")):
            raise UsageError(f"input pattern {pattern!r} must be a path or glob like 'src/**'")
    with tempfile.TemporaryDirectory(prefix="ci-runner-inputs-") as tmp:
        # A private index holding exactly the commit's tree: git matches the globs.
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git_ok(worktree, "read the commit's tree", "read-tree", sha, env=env)
        out = _git_ok(worktree, "match the inputs", "ls-files", "-s", "-z", "--",
                      *(f":(glob){p.rstrip('/') + '/**' if p.endswith('/') else p}"
                        for p in patterns), env=env)
    blobs = []
    for entry in out.split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            blobs.append((path, meta.split()[1]))
    return sorted(blobs)
