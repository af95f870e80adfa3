"""`ci-runner prune`: forget what is older than a cutoff, so a box that runs CI for
months does not fill its disk.

Goes: finished runs (their records, step logs, kept worktrees and snapshot refs),
webhook deliveries that started no run, step-cache entries, artifact objects no
remaining run or cache entry points to, and unreachable objects in the webhook
server's mirrors, and the objects of snapshots of uncommitted trees that no remaining
run names (``workspace.snapshots``). Stays: every run that is not over (waiting for an approval,
sleeping, paused, running), however old, and anything newer than the cutoff.

Safe beside live runs: rows are deleted only if still finished inside the write
transaction, and an artifact object is deleted only when nothing references it
and its file is older than the cutoff (a run storing one right now wrote it just
now). A run whose files cannot be removed keeps them and is reported, never fails
the rest.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ci_runner import paths
from ci_runner.dispatch.envelope import unwrap_params
from ci_runner.store import retention

# Leftover temporary files of an interrupted artifact copy are this old at least.
_TMP_GRACE_S = 3600.0


@dataclass
class Pruned:
    """What a prune removed (or, dry, would remove)."""

    runs: int = 0
    deliveries: int = 0
    cache_entries: int = 0
    objects: int = 0
    bytes_freed: int = 0
    mirrors_gc: int = 0
    snapshot_objects: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def prune(conn: sqlite3.Connection, *, older_than_s: float, dry_run: bool = False,
          now: float | None = None) -> Pruned:
    """Forget what ended more than ``older_than_s`` seconds ago (see the module doc)."""
    cutoff = (time.time() if now is None else now) - older_than_s
    done = Pruned()
    runs = retention.old_runs(conn, cutoff)
    done.deliveries = retention.old_deliveries(conn, cutoff)
    done.cache_entries = retention.old_cache_entries(conn, cutoff)
    if dry_run:
        done.runs = len(runs)
        done.bytes_freed = sum(_size(paths.run_logs(r["id"])) for r in runs)
        unused, size = _unused_objects(conn, cutoff, without_runs={r["id"] for r in runs})
        done.objects, done.bytes_freed = len(unused), done.bytes_freed + size
        done.snapshot_objects, size = _prune_snapshots(
            conn, cutoff, done.problems, dry_run=True, without_runs={r["id"] for r in runs})
        done.bytes_freed += size
        return done

    gone = set(retention.forget_runs(conn, [r["id"] for r in runs], cutoff))
    for row in runs:
        if row["id"] in gone:  # not one retried meanwhile: that is live again
            done.bytes_freed += _remove_run_files(row, done.problems)
    done.runs = len(gone)
    done.deliveries = retention.forget_deliveries(conn, cutoff)
    done.cache_entries = retention.forget_cache_entries(conn, cutoff)
    unused, _ = _unused_objects(conn, cutoff)
    for path in unused:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as exc:
            done.problems.append(f"could not delete artifact object {path}: {exc.strerror}")
            continue
        done.objects += 1
        done.bytes_freed += size
    done.mirrors_gc = _gc_mirrors(cutoff, done.problems)
    done.snapshot_objects, freed = _prune_snapshots(conn, cutoff, done.problems)
    done.bytes_freed += freed
    return done


def _prune_snapshots(conn: Any, cutoff: float, problems: list[str], *, dry_run: bool = False,
                     without_runs: set[str] | None = None) -> tuple[int, int]:
    """Snapshot objects that no run still stored names (the run itself went above);
    ``without_runs``: as if those were gone already, for a dry run."""
    from ci_runner.workspace.snapshots import prune_stores, stores_root

    if not stores_root().is_dir():
        return 0, 0
    keep: dict[Path, list[str]] = {}
    for (run_id, payload) in conn.execute("SELECT id, payload FROM instances"):
        if without_runs and run_id in without_runs:
            continue
        try:
            metadata, _ = unwrap_params(json.loads(payload))
        except (ValueError, TypeError, KeyError):
            continue
        store, sha = metadata.get("snapshot_store"), metadata.get("sha")
        if store and isinstance(sha, str):
            keep.setdefault(Path(str(store)), []).append(sha)
    return prune_stores(keep, cutoff=cutoff, problems=problems, dry_run=dry_run)


def _remove_run_files(row: Any, problems: list[str]) -> int:
    """The run's step logs, its worktree if one was kept, its snapshot ref."""
    from ci_runner.dispatch.runs import finish_workspace
    from ci_runner.errors import CIRunnerError

    freed = _size(paths.run_logs(row["id"]))
    shutil.rmtree(paths.run_logs(row["id"]), ignore_errors=True)
    from ci_runner.dispatch.confine import remove_scratch
    from ci_runner.executors.limits import remove_leftovers

    remove_scratch(str(row["id"]))  # a killed driver's private /tmp and HOME
    remove_leftovers(f"{row['id']}-")  # and the pids cgroups it left (empty by now)
    try:
        metadata, _ = unwrap_params(json.loads(row["payload"]))
    except (ValueError, TypeError, KeyError):
        return freed
    if not metadata.get("workspace"):
        return freed
    workspace = Path(str(metadata["workspace"]))
    if not (workspace.exists() or metadata.get("snapshot")):
        return freed
    size = _size(workspace)
    try:
        problem = finish_workspace(metadata, even_kept=True)
    except CIRunnerError as exc:  # a folder that is not the run's worktree stays
        problem = exc.message
    if problem:
        problems.append(f"run {row['id']}: {problem}")
        return freed
    return freed + size


def _unused_objects(
    conn: Any, cutoff: float, *, without_runs: set[str] | None = None
) -> tuple[list[Path], int]:
    """Artifact objects nothing points to, with files older than the cutoff, and stale
    temporary files of interrupted copies. ``without_runs``: as if those runs (and old
    cache entries) were deleted already, for a dry run."""
    store = paths.home() / "artifacts" / "objects"
    if not store.is_dir():
        return [], 0
    if without_runs is None:
        used = retention.referenced_objects(conn)
    else:
        used = retention.referenced_objects(conn, without_runs=without_runs, cache_from=cutoff)
    unused: list[Path] = []
    size = 0
    for entry in store.rglob("*"):
        try:
            info = entry.stat()
        except OSError:
            continue
        if not entry.is_file():
            continue
        if entry.parent == store:  # a copy's temporary file: objects live a folder down
            stale = info.st_mtime < min(cutoff, time.time() - _TMP_GRACE_S)
        else:
            stale = entry.name not in used and info.st_mtime < cutoff
        if stale:
            unused.append(entry)
            size += info.st_size
    return unused, size


def _gc_mirrors(cutoff: float, problems: list[str]) -> int:
    """``git gc`` each webhook mirror, pruning unreachable objects older than the cutoff
    (pushes that were force-pushed away, closed pull requests' heads)."""
    root = paths.home() / "mirrors"
    if not root.is_dir():
        return 0
    from ci_runner.workspace.gitcmd import run_git
    from ci_runner.workspace.mirror import reset_foreign_config

    count = 0
    before = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cutoff))
    for mirror in sorted(p.parent for p in root.rglob("*.git/HEAD")):
        reset_foreign_config(mirror)  # as before any git command in a mirror
        done = run_git(mirror, "gc", "--quiet", f"--prune={before}")
        if done.status == 0:
            count += 1
        else:
            problems.append(f"git gc failed in {mirror}: {done.stderr.strip()[:200]}")
    return count


def _size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file() and not entry.is_symlink():
                total += entry.stat().st_size
        except OSError:
            continue
    return total
