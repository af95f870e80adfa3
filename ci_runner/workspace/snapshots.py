"""Snapshots of an uncommitted working tree, kept out of the user's repository.

``--include-uncommitted`` (and ``watch``) commit the working tree as it is. Written
into the user's ``.git``, a 200 MB untracked file became 200 MB of loose objects that
stayed there after the run. Here the snapshot's objects go to a store of ci-runner's
own, ``CI_RUNNER_HOME/snapshots/<repo>-<hash>.git``: a bare repository whose
``objects/info/alternates`` names the user's object directory, so it reads every
object of the user's history and writes only what the working tree adds. The user's
``.git`` gets nothing, not even a worktree entry: the run's worktree is a linked
worktree of the store.

So that a run on a snapshot sees the repository a run on a commit sees, the store
includes the user's repository config (remotes, filters, line endings), carries a
copy of the user's refs (``git describe``, ``git diff main...HEAD`` work), and its
``modules`` is a link to the user's submodule clones.

The objects stay while the runs that name the snapshot are stored (``ci-runner retry``
runs one again); ``ci-runner prune`` deletes those no remaining run needs
(``prune_stores``), and the whole store once none does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ci_runner import paths

# tempfile and hashlib are imported where used: this module is imported by every
# command that opens a repository (`ci-runner runs`), which need neither.
from ci_runner.workspace.gitcmd import run_git
from ci_runner.workspace.worktree import (
    RepoInfo,
    _failure,
    _git,
    _git_ok,
    _worktree_lock,
    tenant_key,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_SNAPSHOT_MESSAGE = "ci-runner snapshot of uncommitted changes"
_SNAPSHOTTING = "snapshot the uncommitted working tree"
# A fixed identity: the snapshot must commit even where user.name/email are unset,
# and it is ci-runner's object, not the user's authorship.
_SNAPSHOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "ci-runner",
    "GIT_AUTHOR_EMAIL": "ci-runner@localhost",
    "GIT_COMMITTER_NAME": "ci-runner",
    "GIT_COMMITTER_EMAIL": "ci-runner@localhost",
}
# Loose objects stored, not deflated (zlib level 0): deflating is most of a snapshot's
# time on a big file (200 MB of random bytes: 9.4 s at git's default level, 7.6 s at
# level 1, 1.8 s stored, measured on a loaded 2-core box). The store then takes at most
# the dirty files' own size, as the run's checkout of them does, until prune.
_LOOSE_COMPRESSION = "core.looseCompression=0"
# A snapshot being taken has written objects no stored run names yet: prune leaves
# objects this young alone, whatever the cutoff.
_GRACE_S = 3600.0


@dataclass(frozen=True)
class Snapshot:
    """A commit of the working tree and the store that holds its objects."""

    sha: str
    """The snapshot commit; its parent is the user's HEAD (none in a repo without commits)."""
    store: RepoInfo
    """The store (a bare repository) to read the commit from and fork it out of."""


def stores_root() -> Path:
    return paths.home() / "snapshots"


def is_store(repo: RepoInfo) -> bool:
    """Whether ``repo`` is one of ci-runner's snapshot stores."""
    return repo.root == repo.common_dir and repo.root.parent == stores_root().resolve()


def store_for(repo: RepoInfo) -> RepoInfo:
    """The snapshot store of ``repo`` (every worktree of it shares one), made if missing."""
    from hashlib import sha256

    key = sha256(str(repo.common_dir).encode()).hexdigest()[:16]
    name = Path(tenant_key(repo).removeprefix("local:")).name.removesuffix(".git")
    root = stores_root().resolve() / f"{name}-{key}.git"
    if not (root / "objects" / "info" / "alternates").is_file():
        _make_store(root, repo.common_dir)
    return RepoInfo(root=root, common_dir=root, name=name)


def _make_store(root: Path, user_git_dir: Path) -> None:
    """A bare repository written by hand (no ``git init``: no process, no template
    hooks), then moved into place in one rename so a concurrent snapshot sees all of
    it or none."""
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".making-", dir=root.parent))
    try:
        for folder in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
            (scratch / folder).mkdir(parents=True)
        (scratch / "HEAD").write_text("ref: refs/heads/main\n")
        # The user's config first, for what a run's git should see as in any run; then
        # what makes this a bare repository of its own, which wins being later.
        (scratch / "config").write_text(
            f"[include]\n\tpath = {_quoted(user_git_dir / 'config')}\n"
            "[core]\n\tbare = true\n\tlogallrefupdates = false\n"
            "[gc]\n\tauto = 0\n"
        )
        (scratch / "objects" / "info" / "alternates").write_text(
            f"{user_git_dir / 'objects'}\n")
        (scratch / "modules").symlink_to(user_git_dir / "modules")
        scratch.chmod(0o755)
        try:
            scratch.rename(root)
        except OSError:
            if not (root / "objects" / "info" / "alternates").is_file():
                raise  # not another snapshot that made it first
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def snapshot_uncommitted(repo: RepoInfo) -> Snapshot:
    """Commit the working tree as it is now, into the repository's snapshot store.

    The tree holds tracked files as they are on disk (staged or not) and untracked
    files that are not ignored. The parent is HEAD when there is one. The user's index,
    files, stash, refs and object directory are left alone: git works on a copy of the
    index and writes its objects into the store.
    """
    import tempfile

    store = store_for(repo)
    head = _git(repo.root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    parent = head.text if head.status == 0 else None
    user_index = repo.root / _git_ok(repo.root, _SNAPSHOTTING, "rev-parse", "--git-path", "index")
    objects = {"GIT_OBJECT_DIRECTORY": str(store.root / "objects")}
    with tempfile.TemporaryDirectory(prefix="ci-runner-index-") as scratch:
        index = Path(scratch) / "index"
        env = {**objects, "GIT_INDEX_FILE": str(index)}
        if user_index.is_file():
            # Copying keeps the stat cache, so `add -A` hashes only changed files, and
            # keeps skip-worktree bits, so a sparse checkout is not read as deletions.
            shutil.copyfile(user_index, index)
        elif parent is not None:
            _git_ok(repo.root, _SNAPSHOTTING, "read-tree", parent, env=env)
        _git_ok(repo.root, _SNAPSHOTTING, "-c", _LOOSE_COMPRESSION, "add", "--all", env=env)
        tree = _git_ok(repo.root, _SNAPSHOTTING, "write-tree", env=env)
    parents = ["-p", parent] if parent is not None else []
    sha = _git_ok(
        repo.root, _SNAPSHOTTING, "commit-tree", "--no-gpg-sign", "-m", _SNAPSHOT_MESSAGE,
        *parents, tree, env={**objects, **_SNAPSHOT_IDENTITY},
    )
    _copy_refs(repo, store)
    return Snapshot(sha=sha, store=store)


def _copy_refs(repo: RepoInfo, store: RepoInfo) -> None:
    """The user's branches, tags and remote refs as the store's packed refs, so that
    git in a snapshot's worktree finds them (``refs/ci-runner/`` stay the store's own)."""
    listed = _git(repo.root, "for-each-ref", "--format=%(objectname) %(refname)")
    if listed.status != 0:
        raise _failure(f"git failed to list the refs of {repo.root}", listed,
                       "fix what git reports and retry")
    lines = [line for line in listed.text.splitlines()
             if " refs/ci-runner/" not in line and line.strip()]
    import tempfile

    packed = store.root / "packed-refs"
    with contextlib.suppress(OSError):  # the store's own, if git ever packed them
        lines += [line for line in packed.read_text().splitlines()
                  if " refs/ci-runner/" in line and not line.startswith(("#", "^"))]
    fd, tmp = tempfile.mkstemp(prefix=".packed-refs-", dir=store.root)
    os.fchmod(fd, 0o644)  # read by a sandboxed step's git, as another user
    with os.fdopen(fd, "w") as out:
        out.write("# pack-refs with: sorted \n")
        out.writelines(f"{line}\n" for line in sorted(set(lines), key=lambda s: s.split()[1]))
    Path(tmp).replace(packed)


def user_git_dir(store: Path) -> Path | None:
    """The user's git dir a store reads objects from (for the sandbox to show it)."""
    try:
        first = (store / "objects" / "info" / "alternates").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return Path(first).parent


def prune_stores(keep: Mapping[Path, Iterable[str]], *, cutoff: float,
                 problems: list[str], dry_run: bool = False) -> tuple[int, int]:
    """Delete the objects of every store that no snapshot in ``keep`` (store -> shas
    of the runs still stored) needs, unless younger than ``cutoff`` or the grace of a
    snapshot being taken; a store left with nothing goes whole. Returns
    (objects deleted, bytes freed); ``dry_run``: what would be, deleting nothing."""
    root = stores_root()
    if not root.is_dir():
        return 0, 0
    young = min(cutoff, time.time() - _GRACE_S)
    deleted = freed = 0
    wanted = {Path(k).resolve(): list(v) for k, v in keep.items()}
    for store in sorted(root.glob("*.git")):
        shas = wanted.get(store.resolve(), [])
        needed: set[str] = set()
        if shas:
            listed = run_git(store, "rev-list", "--objects", "--no-walk", "--stdin",
                             stdin="".join(f"{sha}\n" for sha in shas).encode())
            if listed.status != 0:
                problems.append(f"snapshot store {store}: git could not list what runs"
                                f" still need, so nothing was deleted: {listed.stderr[:200]}")
                continue
            needed = {line.split(" ", 1)[0] for line in listed.text.splitlines() if line}
        left = 0
        for folder in (store / "objects").glob("[0-9a-f][0-9a-f]"):
            for entry in folder.iterdir():
                try:
                    info = entry.stat()
                except OSError:
                    continue
                if folder.name + entry.name in needed or info.st_mtime >= young:
                    left += 1
                    continue
                if dry_run:
                    deleted += 1
                    freed += info.st_size
                    continue
                try:
                    entry.unlink()
                except OSError as exc:
                    problems.append(f"could not delete {entry}: {exc.strerror}")
                    left += 1
                    continue
                deleted += 1
                freed += info.st_size
            if not dry_run:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when emptied
        if dry_run:
            continue
        packs = any((store / "objects" / "pack").glob("*.pack"))
        if (store / "worktrees").is_dir():  # forget those whose folders were deleted
            with _worktree_lock(RepoInfo(root=store, common_dir=store, name=store.name)):
                run_git(store, "worktree", "prune")
        worktrees = any((store / "worktrees").glob("*"))
        if not (shas or left or packs or worktrees):
            shutil.rmtree(store, ignore_errors=True)
    return deleted, freed


def open_store(path: Path) -> RepoInfo:
    """The store at ``path`` (a run's ``snapshot_store``), which must still be there."""
    root = Path(path)
    if not (root / "objects" / "info" / "alternates").is_file():
        from ci_runner.errors import WorkspaceError

        raise WorkspaceError(
            f"the snapshot store {root} is gone, and with it the uncommitted changes this"
            " run ran on; start a new run with --include-uncommitted",
            path=str(root),
        )
    name = root.name.removesuffix(".git").rsplit("-", 1)[0]
    return RepoInfo(root=root, common_dir=root, name=name)


def checkout_source(repo_path: str | Path, store: str | Path | None,
                    common_dir: str | Path | None = None) -> RepoInfo:
    """Where a run's sha is forked from and its worktree removed from: its snapshot
    store when it ran on one, else the repository (runs stored before snapshots had
    stores: the repository too). ``common_dir``, the repository's git dir as the run
    recorded it: no git process is needed to find it again while it is still there."""
    if store:
        return open_store(Path(store))
    root = Path(repo_path)
    if common_dir and (Path(common_dir) / "HEAD").is_file() and root.is_dir():
        return RepoInfo(root=root, common_dir=Path(common_dir), name=root.name)
    from ci_runner.workspace.worktree import open_repo

    return open_repo(root)
