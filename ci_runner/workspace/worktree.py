"""Gives every run its own checkout of one sha without touching the user's working copy.

A run is pinned to a commit: either one that exists (``resolve_rev``) or one made on
the fly from the uncommitted working tree (``snapshots.snapshot_uncommitted``, in a
store of ci-runner's own). ``fork`` checks that commit out as a detached linked
worktree, ``remove`` takes it away again, and ``hold``/``release`` keep a ref on the
commit so ``git gc`` cannot prune a snapshot while its run lives. ``fork(...,
only=".ci")`` checks out one folder and leaves the rest of the tree to ``fill``,
called when a step needs the files: a run whose steps are all served from the cache
never pays for a checkout of the whole tree. Submodules the user initialized are
checked out too (``submodules.py``). Every git call goes through ``_git`` as an
argument list, and so through ``gitcmd.run_git``: no hook, fsmonitor or ``ext::`` URL
of the repository runs.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ci_runner.errors import NotAGitRepository, UsageError, WorkspaceError
from ci_runner.workspace.gitcmd import GitResult, run_git

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ci_runner.workspace.submodules import Wanted

_RUN_REF_PREFIX = "refs/ci-runner/runs/"
# `git worktree add` reads every worktree's entry and dies on one another add is still
# writing ("failed to read .git/worktrees/NAME/commondir"): retried a few times, for
# adds that our lock does not keep apart (the user's own).
_RACING_ADD = re.compile(r"failed to read .*worktrees/[^/\s]+/(commondir|gitdir)")
_FORK_ATTEMPTS = 8
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Stricter than git's own rules on purpose: a run id becomes one path component.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RepoInfo:
    """A git working tree, as found by ``open_repo``."""

    root: Path
    """Real path of the working tree's top level (of the git dir, for a bare repository)."""
    common_dir: Path
    """Real path of the ``.git`` dir that every worktree of the repository shares."""
    name: str
    """``root.name``, for display."""


@dataclass(frozen=True)
class ResolvedRev:
    """A revision pinned to its commit."""

    sha: str
    """The full 40-hex commit sha."""
    ref: str | None
    """The full ref the revision named (``refs/heads/main`` for ``HEAD`` on main or for
    ``main``; ``refs/tags/v1`` for ``v1``), or None for a detached HEAD or a sha."""


def open_repo(path: Path) -> RepoInfo:
    """Find the git working tree that contains ``path`` (a file or any subdirectory)."""
    where = Path(path).absolute()
    if not where.exists():
        raise NotAGitRepository(
            f"{where} does not exist; cd into a git repository or pass --repo", path=str(where)
        )
    cwd = where if where.is_dir() else where.parent
    result = _git(cwd, "rev-parse", "--show-toplevel", "--git-common-dir")
    if result.status != 0:
        if "not a git repository" in result.stderr:
            raise NotAGitRepository(
                f"{where} is not inside a git repository; cd into one or pass --repo",
                path=str(where),
            )
        if "must be run in a work tree" in result.stderr:
            bare = _bare_repo(cwd)
            if bare is not None:
                return bare
            raise NotAGitRepository(
                f"{where} is inside a git directory, not a working tree; "
                "cd into the checkout or pass --repo",
                path=str(where),
            )
        raise _failure(f"git could not open the repository at {where}", result,
                       "fix what git reports and retry")
    top, common = result.text.splitlines()
    root = Path(top).resolve()
    # --git-common-dir may come back relative to the directory git ran in.
    return RepoInfo(root=root, common_dir=(cwd / common).resolve(), name=root.name)


def tenant_key(repo: RepoInfo) -> str:
    """The stable key of a repository: the same for every worktree of it."""
    if repo.common_dir == repo.root:  # bare: the git dir is the repository
        return "local:" + str(repo.root)
    return "local:" + str(repo.common_dir.parent)


def _bare_repo(cwd: Path) -> RepoInfo | None:
    """The bare repository at ``cwd`` (the webhook server's mirrors), or None.

    Runs fork worktrees from it like from any repository; the ``.git`` dir of a
    repository with a working tree is not bare and stays refused.
    """
    found = _git(cwd, "rev-parse", "--is-bare-repository", "--absolute-git-dir")
    lines = found.text.splitlines()
    if found.status != 0 or len(lines) != 2 or lines[0] != "true":
        return None
    root = Path(lines[1]).resolve()
    return RepoInfo(root=root, common_dir=root, name=root.name)


def locate(path: Path, rev: str = "HEAD") -> tuple[RepoInfo, ResolvedRev]:
    """``open_repo(path)`` and ``resolve_rev(repo, rev)`` in one git process, as every
    run's start needs both; when git says anything unexpected, the two of them, for
    their exact errors (a bare repository, an unknown revision, no commits yet)."""
    _check_rev(rev)
    where = Path(path).absolute()
    if where.is_dir():
        found = _git(where, "rev-parse", "--show-toplevel", "--git-common-dir",
                     f"{rev}^{{commit}}", "--symbolic-full-name", rev)
        lines = found.text.splitlines()
        # A sha or an expression (main~1) has no symbolic name: no fourth line.
        if found.status == 0 and len(lines) in (3, 4) and _OBJECT_ID.fullmatch(lines[2]):
            root = Path(lines[0]).resolve()
            repo = RepoInfo(root=root, common_dir=(where / lines[1]).resolve(), name=root.name)
            named = lines[3] if len(lines) == 4 else ""
            return repo, ResolvedRev(sha=lines[2], ref=named if named.startswith("refs/") else None)
    repo = open_repo(where)
    return repo, resolve_rev(repo, rev)


def resolve_rev(repo: RepoInfo, rev: str = "HEAD") -> ResolvedRev:
    """Pin ``rev`` (a branch, tag, sha or any commit-ish) to its commit."""
    _check_rev(rev)
    found = _git(repo.root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.status != 0:
        if _is_unborn(repo) and rev in _names_of_head(repo):
            raise UsageError(
                f"{repo.root} has no commits yet; commit something or use "
                "--include-uncommitted",
                rev=rev,
            )
        raise UsageError(
            f"unknown revision {rev!r} in {repo.root}; pass a branch, tag or commit sha "
            "that exists there",
            rev=rev,
        )
    named = _git(repo.root, "rev-parse", "--symbolic-full-name", rev).text
    # A detached HEAD names itself; shas and expressions such as main~1 name nothing.
    ref = named if named.startswith("refs/") else None
    return ResolvedRev(sha=found.text, ref=ref)


def hold(repo: RepoInfo, run_id: str, sha: str) -> None:
    """Point ``refs/ci-runner/runs/<run_id>`` at ``sha`` so gc keeps it while the run lives."""
    _check_rev(sha)
    _git_ok(repo.root, f"hold {sha} for run {run_id}", "update-ref", _run_ref(run_id), sha)


def release(repo: RepoInfo, run_id: str) -> None:
    """Drop the ref ``hold`` made; nothing happens if it is already gone."""
    _git_ok(repo.root, f"release run {run_id}", "update-ref", "-d", _run_ref(run_id))


def fork(repo: RepoInfo, sha: str, dest: Path, *, again: bool = False,
         submodules: Wanted = True, only: str | None = None) -> list[str]:
    """Check out ``sha`` as a new detached worktree at ``dest``, with its submodules
    (``submodules``: True, every one the user initialized; False, none; or a list of
    paths; see ``workspace.submodules``). Returns a line for the run's output about
    each submodule left empty, and why.

    One git call and nothing else for a repo without submodules: this sits on the
    start-up path of every run. ``again``: ``dest`` was this run's worktree and its
    folder was deleted; git still has it registered, and ``--force`` lets it be
    checked out there once more. ``only``: check out just this folder of the tree (a
    ``--no-checkout`` worktree, then that folder); ``fill`` checks out the rest.
    """
    target = add_worktree(repo, sha, dest, again=again, files=only is None)
    if only is not None:
        _check_out_folder(repo, sha, target, only)
        return []  # submodules come with the rest of the files (``fill``)
    return check_out_submodules(repo, sha, target, submodules)


def add_worktree(repo: RepoInfo, sha: str, dest: Path, *, again: bool = False,
                 files: bool = True) -> Path:
    """``fork``'s first half: the worktree alone, no submodule (with ``files=False``, no
    file either: a ``--no-checkout`` worktree); returns its path."""
    _check_rev(sha)
    target = Path(dest).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _worktree_lock(repo):
        if _is_bare(repo):  # perhaps a mirror, which runs can write
            from ci_runner.workspace.mirror import is_mirror, reset_foreign_config

            if is_mirror(repo):  # a filter it names would run during the checkout
                reset_foreign_config(repo.root)
        result = _add_worktree(repo, sha, target, again=again, files=files)
    if result.status != 0:
        raise _failure(f"could not create a worktree of {sha} at {target}", result,
                       "check that the path is free and the commit exists")
    return target


def check_out_submodules(repo: RepoInfo, sha: str, target: Path,
                         submodules: Wanted = True) -> list[str]:
    """``fork``'s second half (see there): nothing at all without a ``.gitmodules``."""
    if not (target / ".gitmodules").is_file():
        return []
    from ci_runner.workspace.submodules import check_out

    return check_out(repo.common_dir, sha, target, wanted=submodules, bare=_is_bare(repo))


def _is_bare(repo: RepoInfo) -> bool:
    """A bare repository other than a snapshot store (whose `modules` are the user's)."""
    if repo.root != repo.common_dir:
        return False
    from ci_runner.workspace.snapshots import is_store

    return not is_store(repo)


def _add_worktree(repo: RepoInfo, sha: str, target: Path, *, again: bool,
                  files: bool = True) -> GitResult:
    for attempt in range(_FORK_ATTEMPTS):
        # submodule.recurse (a user's setting) would clone from the commit's URLs:
        # submodules are checked out apart, from the user's clones (submodules.py).
        result = _git(
            repo.root, "-c", "submodule.recurse=false", "worktree", "add", "--detach",
            "--quiet", *(["--force"] if again else []),
            *([] if files else ["--no-checkout"]), str(target), sha,
        )
        if result.status == 0 or not _RACING_ADD.search(result.stderr):
            break
        # A `worktree add` of this repo not made by us (the lock keeps ours apart) was
        # half-way through writing its entry, which git reads and trips over.
        time.sleep(0.01 * (attempt + 1))
    return result


def _check_out_folder(repo: RepoInfo, sha: str, target: Path, folder: str) -> None:
    """Check out ``folder`` of ``sha`` into the ``--no-checkout`` worktree ``target``, and
    mark the worktree as holding only it (``PARTIAL`` in its admin folder, which the
    pipeline's sandbox cannot write)."""
    admin = _admin_dir(target)
    if admin is None:
        raise WorkspaceError(f"{target} is not a linked worktree after `git worktree add`",
                             path=str(target))
    (admin / PARTIAL).write_text(sha + "\n", encoding="utf-8")
    result = _git(repo.root, *_in(admin, target), "-c", "submodule.recurse=false",
                  "checkout", sha, "--", folder)
    if result.status != 0 and "did not match any file" not in result.stderr:
        raise _failure(f"could not check out {folder} of {sha} at {target}", result,
                       "check that the commit exists")
    # (No such folder: nothing to check out; a missing pipeline file fails later.)


# In a worktree's admin folder while only one folder of its tree is checked out.
PARTIAL = "ci-runner-partial"


def has_files(dest: Path) -> bool:
    """Whether the worktree at ``dest`` holds its whole tree (not only the folder a
    ``fork(..., only=...)`` checked out)."""
    admin = _admin_dir(Path(dest).absolute())
    return admin is None or not (admin / PARTIAL).exists()


def fill(repo: RepoInfo, sha: str, dest: Path, *, submodules: Wanted = True) -> list[str]:
    """Check out the rest of the tree into a worktree ``fork(..., only=...)`` made, and
    its submodules; returns ``fork``'s notes on submodules. Nothing happens (and
    nothing is returned) when it holds its files already."""
    _check_rev(sha)
    target = Path(dest).absolute()
    admin = _admin_dir(target)
    if admin is None or not (admin / PARTIAL).exists():
        return []
    if _is_bare(repo):  # perhaps a mirror, which runs can write (as fork)
        from ci_runner.workspace.mirror import is_mirror, reset_foreign_config

        with _worktree_lock(repo):
            if is_mirror(repo):
                reset_foreign_config(repo.root)
    # Run from the repository, naming both folders: the worktree may belong to the
    # sandbox's user by now, and git refuses to work in a folder of another owner.
    _git_ok(repo.root, f"check out {sha} at {target}", *_in(admin, target),
            "-c", "submodule.recurse=false", "reset", "--hard", "--quiet", sha)
    (admin / PARTIAL).unlink(missing_ok=True)
    return check_out_submodules(repo, sha, target, submodules)


def _in(admin: Path, target: Path) -> tuple[str, ...]:
    return (f"--git-dir={admin}", f"--work-tree={target}")


def _admin_dir(target: Path) -> Path | None:
    """The worktree's admin folder in the repository (``gitdir:`` of its ``.git`` file)."""
    try:
        text = (target / ".git").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    admin = Path(text.removeprefix("gitdir:").strip())
    return (target / admin).resolve() if not admin.is_absolute() else admin


@contextmanager
def _worktree_lock(repo: RepoInfo) -> Iterator[None]:
    """Serialise ci-runner's worktree changes to one repository, across processes.

    git's own worktree commands are not safe side by side: an add reads every other
    entry and dies on one being written, and a prune (or a remove) deletes an entry
    an add is still making. A webhook server or parallel runs fork one repo at once.
    """
    with (repo.common_dir / "ci-runner-worktrees.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove(repo: RepoInfo, dest: Path) -> None:
    """Delete the worktree at ``dest``; nothing happens if it is already gone.

    Refuses to delete a folder that is not a worktree of ``repo``.
    """
    target = Path(dest).absolute()
    with _worktree_lock(repo):
        _remove_locked(repo, target)


def _remove_locked(repo: RepoInfo, target: Path) -> None:
    removed = _git(repo.root, "worktree", "remove", "--force", str(target))
    if removed.status == 0 and not target.exists():
        return
    # git declined: the folder was deleted by hand, or is damaged, or is not ours.
    if target.exists():
        if _is_worktree_of(repo, target):
            shutil.rmtree(target)
        elif target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        else:
            raise WorkspaceError(
                f"{target} is not a worktree of {repo.name}, so ci-runner will not delete "
                "it; remove it yourself if it is safe",
                path=str(target),
            )
    # Prune only here: it also forgets the user's own worktrees whose folders are missing.
    _git_ok(repo.root, f"prune the worktree at {target}", "worktree", "prune")


def file_at(repo: RepoInfo, sha: str, path: str) -> bytes | None:
    """The content of file ``path`` at commit ``sha``, or None if there is no such file."""
    _check_rev(sha)
    blob = _git(repo.root, "cat-file", "blob", f"{sha}:{path}")
    if blob.status == 0:
        return blob.stdout
    # Only an absent file is None; a commit that does not exist is an error.
    known = _git(repo.root, "cat-file", "-e", f"{sha}^{{commit}}")
    if known.status != 0:
        raise WorkspaceError(
            f"commit {sha} is not in {repo.root}; resolve the revision before reading files",
            sha=sha,
        )
    return None


def _git(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> GitResult:
    # Plain subprocess, not GitPython: every call here is one git plumbing command, and
    # importing GitPython (plus the two `git version` calls it makes) cost ~60 ms of
    # every run's start. run_git's C locale: the error texts matched here are English.
    return run_git(cwd, *args, env=env)


def _git_ok(cwd: Path, doing: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    result = _git(cwd, *args, env=env)
    if result.status != 0:
        raise _failure(f"git failed to {doing} in {cwd}", result, "fix what git reports and retry")
    return result.text


def _failure(what: str, result: GitResult, todo: str) -> WorkspaceError:
    return WorkspaceError(f"{what}: {_summary(result.stderr)}; {todo}", stderr=result.stderr)


def _summary(stderr: str) -> str:
    """git's complaint in one line, without its hints."""
    lines = [
        re.sub(r"^(fatal|error|warning): ", "", line.strip())
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("hint:")
    ]
    return " / ".join(lines) or "git gave no reason"


def _check_rev(rev: str) -> None:
    # Anything starting with "-" would reach git as an option, not a revision.
    if not rev or rev.startswith("-"):
        raise UsageError(
            f"{rev!r} is not a revision; pass a branch, tag or commit sha", rev=rev
        )


def _run_ref(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id or run_id.endswith(".lock"):
        raise UsageError(
            f"run id {run_id!r} cannot name a git ref; use letters, digits, '.', '_' and '-'",
            run_id=run_id,
        )
    return _RUN_REF_PREFIX + run_id


def _is_unborn(repo: RepoInfo) -> bool:
    return _git(repo.root, "rev-parse", "--verify", "--quiet", "HEAD").status != 0


def _names_of_head(repo: RepoInfo) -> set[str]:
    """Every spelling of the current branch, to tell 'no commits yet' from a typo."""
    names = {"HEAD", "@"}
    branch = _git(repo.root, "symbolic-ref", "--quiet", "HEAD").text
    if branch.startswith("refs/heads/"):
        short = branch.removeprefix("refs/heads/")
        names |= {branch, short, "heads/" + short}
    return names


def _is_worktree_of(repo: RepoInfo, folder: Path) -> bool:
    """Whether ``folder`` is a linked worktree of ``repo``, judged by its ``.git`` file."""
    marker = folder / ".git"
    if not marker.is_file():
        return False  # the main worktree has a .git directory: never ours to delete
    content = marker.read_text(encoding="utf-8", errors="replace").strip()
    if not content.startswith("gitdir:"):
        return False
    admin = (folder / content.removeprefix("gitdir:").strip()).resolve()
    return admin.parent == repo.common_dir / "worktrees"
