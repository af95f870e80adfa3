"""Keeping a run's files: copy them out of the worktree into a content-addressed store
(the same bytes saved twice are stored once). Paths that escape the worktree, by
``..`` or by a symlink pointing out, are refused."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ci_runner import paths
from ci_runner.errors import UsageError

CHUNK = 1 << 20


def object_path(digest: str) -> Path:
    return paths.home() / "artifacts" / "objects" / digest[:2] / digest


def collect(worktree: Path, patterns: list[str]) -> list[Path]:
    """The files under ``worktree`` matching the glob ``patterns``, each checked to be inside."""
    root = worktree.resolve()
    found: dict[Path, None] = {}
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or Path(pattern).is_absolute() \
                or ".." in Path(pattern).parts:
            raise UsageError(f"artifact pattern {pattern!r} must be a relative path inside "
                             "the worktree, without '..'")
        for match in sorted(root.glob(pattern)):
            if match.is_file():
                found[inside(root, match)] = None
    return list(found)


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refused if it (or a symlink on the way) leads out of ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise UsageError(f"artifact {path} points outside the worktree ({resolved}); refused")
    return path


def store(root: Path, path: Path, name: str | None = None) -> dict[str, Any]:
    """Copy one file into the object store; returns ``{path, sha256, size}``."""
    root = root.resolve()
    source = inside(root, path if path.is_absolute() else root / path)
    if not source.resolve().is_file():
        raise UsageError(f"artifact {source} is not a file")
    digest = hashlib.sha256()
    objects = paths.home() / "artifacts" / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    with source.resolve().open("rb") as src, tempfile.NamedTemporaryFile(
        dir=objects, delete=False
    ) as tmp:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            tmp.write(chunk)
    target = object_path(digest.hexdigest())
    if target.exists():
        Path(tmp.name).unlink()  # the same content is stored once
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(tmp.name).replace(target)
    label = name or str(source.resolve().relative_to(root))
    return {"path": label, "sha256": digest.hexdigest(), "size": target.stat().st_size}


def download(items: list[dict[str, Any]], dest: Path) -> list[Path]:
    """Copy stored artifacts out to ``dest``, keeping their relative paths."""
    written = []
    for item in items:
        target = (dest / item["path"]).resolve()
        if not target.is_relative_to(dest.resolve()):
            raise UsageError(f"artifact name {item['path']!r} would escape {dest}; refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(object_path(item["sha256"]), target)
        written.append(target)
    return written
