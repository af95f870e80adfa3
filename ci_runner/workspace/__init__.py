"""Checkouts for runs: one detached git worktree per run, at a pinned sha."""

from __future__ import annotations

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
    snapshot_uncommitted,
    tenant_key,
)

__all__ = [
    "RepoInfo",
    "ResolvedRev",
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
