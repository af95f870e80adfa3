"""Checkouts for runs: one detached git worktree per run, at a pinned sha (of a commit,
or of a snapshot of the working tree kept in a store of ci-runner's own)."""

from __future__ import annotations

from ci_runner.workspace.snapshots import Snapshot, snapshot_uncommitted
from ci_runner.workspace.worktree import (
    RepoInfo,
    ResolvedRev,
    file_at,
    fill,
    fork,
    has_files,
    hold,
    open_repo,
    release,
    remove,
    resolve_rev,
    tenant_key,
)

__all__ = [
    "RepoInfo",
    "ResolvedRev",
    "Snapshot",
    "file_at",
    "fill",
    "fork",
    "has_files",
    "hold",
    "open_repo",
    "release",
    "remove",
    "resolve_rev",
    "snapshot_uncommitted",
    "tenant_key",
]
