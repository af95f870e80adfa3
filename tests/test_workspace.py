"""The workspace module against real git repositories: forks, snapshots, refs, cleanup."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from ci_runner.errors import NotAGitRepository, UsageError, WorkspaceError
from ci_runner.workspace import (
    RepoInfo,
    file_at,
    fork,
    hold,
    open_repo,
    release,
    remove,
    resolve_rev,
    snapshot_uncommitted,
    tenant_key,
)
from tests.gitrepos import ISOLATED_GIT_ENV, commit, git, init_repo, make_repo, write

if TYPE_CHECKING:
    from pathlib import Path

SHA = re.compile(r"[0-9a-f]{40}")


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path) -> None:
    # The code under test runs git with os.environ: keep the developer's config out,
    # and stop repository discovery from climbing above tmp_path.
    for name, value in ISOLATED_GIT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "proj",
        {"a.txt": "a1\n", "b.txt": "b1\n", ".gitignore": "ignored.txt\nbuild/\n",
         "src/main.py": "print('hi')\n"},
    )


@pytest.fixture
def repo(repo_dir: Path) -> RepoInfo:
    return open_repo(repo_dir)


def user_state(path: Path) -> dict[str, object]:
    """Everything about the user's checkout that ci-runner must never change."""
    git_dir = path / ".git"
    # Index bytes first, and status without optional locks: a plain `git status` may
    # refresh and rewrite the index itself.
    return {
        "index": (git_dir / "index").read_bytes() if (git_dir / "index").exists() else None,
        "status": git(path, "--no-optional-locks", "status", "--porcelain=v1",
                      "--untracked-files=all", "--ignored"),
        "head": (git_dir / "HEAD").read_text(),
        "refs": git(path, "for-each-ref"),
        "stash": git(path, "stash", "list"),
        "files": {
            p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(path).parts
        },
    }


# open_repo / tenant_key


def test_open_repo_from_root_and_subdir(repo_dir: Path) -> None:
    (repo_dir / "src" / "deep").mkdir()
    top = open_repo(repo_dir)
    assert top == open_repo(repo_dir / "src" / "deep")
    assert top == open_repo(repo_dir / "src" / "main.py")
    assert top.root == repo_dir.resolve()
    assert top.common_dir == (repo_dir / ".git").resolve()
    assert top.name == "proj"
    assert tenant_key(top) == f"local:{repo_dir.resolve()}"


def test_linked_worktree_shares_the_tenant_key(repo_dir: Path, tmp_path: Path) -> None:
    git(repo_dir, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    main, side = open_repo(repo_dir), open_repo(tmp_path / "side")
    assert side.root == (tmp_path / "side").resolve()
    assert side.common_dir == main.common_dir
    assert tenant_key(side) == tenant_key(main)


def test_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository, match="is not inside a git repository; cd into one"):
        open_repo(plain)
    with pytest.raises(NotAGitRepository, match="does not exist"):
        open_repo(tmp_path / "missing")


def test_git_dir_is_not_a_working_tree(repo_dir: Path) -> None:
    with pytest.raises(NotAGitRepository, match="not a working tree"):
        open_repo(repo_dir / ".git")


# resolve_rev


def test_resolve_head_and_branch(repo: RepoInfo, repo_dir: Path) -> None:
    head = git(repo_dir, "rev-parse", "HEAD")
    assert resolve_rev(repo).sha == head
    assert resolve_rev(repo).ref == "refs/heads/main"
    feature = commit(repo_dir, {"a.txt": "a2\n"}, "two")
    git(repo_dir, "branch", "feature")
    git(repo_dir, "reset", "-q", "--hard", head)
    resolved = resolve_rev(repo, "feature")
    assert (resolved.sha, resolved.ref) == (feature, "refs/heads/feature")


def test_resolve_short_sha_and_detached_head(repo: RepoInfo, repo_dir: Path) -> None:
    head = git(repo_dir, "rev-parse", "HEAD")
    assert resolve_rev(repo, head[:7]).sha == head
    assert resolve_rev(repo, head[:7]).ref is None
    git(repo_dir, "checkout", "-q", "--detach")
    detached = resolve_rev(repo, "HEAD")
    assert SHA.fullmatch(detached.sha)
    assert (detached.sha, detached.ref) == (head, None)


def test_resolve_annotated_tag_gives_the_commit(repo: RepoInfo, repo_dir: Path) -> None:
    git(repo_dir, "tag", "-a", "-m", "release", "v1")
    resolved = resolve_rev(repo, "v1")
    assert (resolved.sha, resolved.ref) == (git(repo_dir, "rev-parse", "HEAD"), "refs/tags/v1")


def test_resolve_unknown_rev(repo: RepoInfo) -> None:
    with pytest.raises(UsageError, match="unknown revision 'nope'"):
        resolve_rev(repo, "nope")


def test_resolve_in_a_repo_with_no_commits(tmp_path: Path) -> None:
    repo = open_repo(init_repo(tmp_path / "empty"))
    for rev in ("HEAD", "main"):
        with pytest.raises(UsageError, match="has no commits yet; commit something or use"):
            resolve_rev(repo, rev)
    with pytest.raises(UsageError, match="unknown revision"):
        resolve_rev(repo, "other")


@pytest.mark.parametrize("rev", ["--all", "-h", "--output=/tmp/x", ""])
def test_resolve_rejects_option_like_revs(repo: RepoInfo, rev: str) -> None:
    with pytest.raises(UsageError, match="is not a revision"):
        resolve_rev(repo, rev)


# snapshot_uncommitted


def test_snapshot_holds_the_working_tree_and_leaves_the_user_alone(
    repo: RepoInfo, repo_dir: Path
) -> None:
    head = git(repo_dir, "rev-parse", "HEAD")
    write(repo_dir, {"a.txt": "a-modified\n", "b.txt": "b-staged\n", "new-staged.txt": "s\n",
                     "untracked/u.txt": "u\n", "ignored.txt": "secret\n", "build/out": "o\n"})
    git(repo_dir, "add", "b.txt", "new-staged.txt")
    (repo_dir / "src" / "main.py").unlink()
    before = user_state(repo_dir)

    snap = snapshot_uncommitted(repo)
    sha, store = snap.sha, snap.store.root

    assert SHA.fullmatch(sha)
    assert user_state(repo_dir) == before
    assert git(repo_dir, "rev-parse", "HEAD") == head
    # Not in the user's repository at all: in the store, which reads the user's objects.
    assert subprocess.run(["git", "cat-file", "-e", sha], cwd=repo_dir,
                          check=False).returncode != 0
    assert git(store, "rev-parse", f"{sha}^") == head
    assert git(store, "branch", "--all", "--contains", sha) == ""
    subject = git(store, "log", "-1", "--format=%s", sha)
    assert subject == "ci-runner snapshot of uncommitted changes"
    got = snap.store
    assert file_at(got, sha, "a.txt") == b"a-modified\n"
    assert file_at(got, sha, "b.txt") == b"b-staged\n"
    assert file_at(got, sha, "new-staged.txt") == b"s\n"
    assert file_at(got, sha, "untracked/u.txt") == b"u\n"
    assert file_at(got, sha, ".gitignore") == b"ignored.txt\nbuild/\n"
    assert file_at(got, sha, "ignored.txt") is None
    assert file_at(got, sha, "build/out") is None
    assert file_at(got, sha, "src/main.py") is None


def test_snapshot_of_a_clean_tree_has_the_head_tree(repo: RepoInfo, repo_dir: Path) -> None:
    snap = snapshot_uncommitted(repo)
    head_tree = git(repo_dir, "rev-parse", "HEAD^{tree}")
    assert git(snap.store.root, "rev-parse", f"{snap.sha}^{{tree}}") == head_tree


def test_snapshot_in_a_repo_with_no_commits(tmp_path: Path) -> None:
    path = init_repo(tmp_path / "empty")
    write(path, {"hello.txt": "hello\n"})
    repo = open_repo(path)
    before = user_state(path)
    snap = snapshot_uncommitted(repo)
    assert user_state(path) == before
    assert git(snap.store.root, "rev-list", "--parents", "-1", snap.sha) == snap.sha
    assert file_at(snap.store, snap.sha, "hello.txt") == b"hello\n"


def test_snapshot_from_a_linked_worktree(repo_dir: Path, tmp_path: Path) -> None:
    git(repo_dir, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    side = open_repo(tmp_path / "side")
    write(tmp_path / "side", {"a.txt": "from-side\n"})
    snap = snapshot_uncommitted(side)
    assert snap.store == snapshot_uncommitted(open_repo(repo_dir)).store  # one per repository
    assert file_at(snap.store, snap.sha, "a.txt") == b"from-side\n"
    assert git(repo_dir, "status", "--porcelain") == ""


def test_snapshot_keeps_files_a_sparse_checkout_leaves_out(repo: RepoInfo, repo_dir: Path) -> None:
    # Marked skip-worktree and absent from disk, as a sparse checkout leaves them: still
    # part of the commit, not a deletion.
    git(repo_dir, "update-index", "--skip-worktree", "b.txt")
    (repo_dir / "b.txt").unlink()
    snap = snapshot_uncommitted(repo)
    assert file_at(snap.store, snap.sha, "b.txt") == b"b1\n"


# fork / remove


def test_fork_checks_out_the_sha(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    first = git(repo_dir, "rev-parse", "HEAD")
    commit(repo_dir, {"a.txt": "a2\n"}, "two")
    write(repo_dir, {"a.txt": "dirty\n"})
    before = user_state(repo_dir)

    dest = tmp_path / "runs" / "deep" / "r1"
    fork(repo, first, dest)

    assert (dest / "a.txt").read_text() == "a1\n"
    assert (dest / "src" / "main.py").read_text() == "print('hi')\n"
    assert git(dest, "rev-parse", "HEAD") == first
    assert git(dest, "status", "--porcelain") == ""
    assert user_state(repo_dir) == before


def test_fork_is_detached(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    fork(repo, git(repo_dir, "rev-parse", "HEAD"), tmp_path / "w")
    detached = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=tmp_path / "w",
                              check=False, capture_output=True)
    assert detached.returncode == 1


def test_two_forks_of_one_sha_at_once(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    sha = git(repo_dir, "rev-parse", "HEAD")
    # Same folder name on purpose: git must pick distinct admin entries concurrently.
    dests = [tmp_path / "a" / "ws", tmp_path / "b" / "ws"]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda d: fork(repo, sha, d), dests))
    write(dests[0], {"a.txt": "changed in w1\n", "only-w1.txt": "x\n"})
    assert (dests[1] / "a.txt").read_text() == "a1\n"
    assert not (dests[1] / "only-w1.txt").exists()
    assert git(dests[1], "status", "--porcelain") == ""
    assert (repo_dir / "a.txt").read_text() == "a1\n"
    listed = git(repo_dir, "worktree", "list", "--porcelain")
    assert all(f"worktree {d.resolve()}" in listed for d in dests)


def test_many_forks_of_one_repo_at_once(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    """`git worktree add` reads every other worktree's admin entry, and fails on one that
    another add is still writing ("failed to read .../commondir"): a webhook server or
    parallel runs fork one repo concurrently, and none of them may fail for it."""
    sha = git(repo_dir, "rev-parse", "HEAD")
    dests = [tmp_path / f"w{i}" for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda d: fork(repo, sha, d), dests))
    assert all((d / "a.txt").read_text() == "a1\n" for d in dests)

    def again(i: int) -> None:  # removing some while adding others: runs end and start
        remove(repo, dests[i])
        fork(repo, sha, tmp_path / f"v{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(again, range(48)))
    assert not any(d.exists() for d in dests)
    assert all((tmp_path / f"v{i}" / "a.txt").is_file() for i in range(48))


def test_fork_a_snapshot(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    write(repo_dir, {"a.txt": "work in progress\n", "new.txt": "n\n"})
    snap = snapshot_uncommitted(repo)
    fork(snap.store, snap.sha, tmp_path / "w")
    assert (tmp_path / "w" / "a.txt").read_text() == "work in progress\n"
    assert (tmp_path / "w" / "new.txt").read_text() == "n\n"
    assert git(repo_dir, "worktree", "list", "--porcelain").count("worktree ") == 1
    remove(snap.store, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_fork_failure_is_one_line(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    write(busy, {"keep.txt": "mine\n"})
    with pytest.raises(WorkspaceError, match="could not create a worktree") as caught:
        fork(repo, git(repo_dir, "rev-parse", "HEAD"), busy)
    assert "\n" not in caught.value.message
    assert (busy / "keep.txt").read_text() == "mine\n"
    with pytest.raises(WorkspaceError, match="could not create a worktree"):
        fork(repo, "0" * 40, tmp_path / "w")
    with pytest.raises(UsageError):
        fork(repo, "--help", tmp_path / "w")


def test_remove_is_idempotent(repo: RepoInfo, repo_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    fork(repo, git(repo_dir, "rev-parse", "HEAD"), dest)
    write(dest, {"a.txt": "edited\n", "scratch/new.txt": "n\n"})
    remove(repo, dest)
    assert not dest.exists()
    assert str(dest.resolve()) not in git(repo_dir, "worktree", "list")
    remove(repo, dest)
    assert (repo_dir / "a.txt").read_text() == "a1\n"


def test_remove_after_the_folder_was_deleted_by_hand(
    repo: RepoInfo, repo_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "w"
    fork(repo, git(repo_dir, "rev-parse", "HEAD"), dest)
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    remove(repo, dest)
    assert str(dest.resolve()) not in git(repo_dir, "worktree", "list")
    assert not (repo.common_dir / "worktrees" / "w").exists()
    fork(repo, git(repo_dir, "rev-parse", "HEAD"), dest)  # the path is usable again
    assert (dest / "a.txt").read_text() == "a1\n"


def test_remove_refuses_a_folder_that_is_not_a_worktree(
    repo: RepoInfo, repo_dir: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    write(precious, {"thesis.txt": "years of work\n"})
    with pytest.raises(WorkspaceError, match="not a worktree of proj"):
        remove(repo, precious)
    assert (precious / "thesis.txt").exists()
    with pytest.raises(WorkspaceError):
        remove(repo, repo_dir)
    assert (repo_dir / "a.txt").exists()


# hold / release


def test_hold_keeps_a_snapshot_through_gc(repo: RepoInfo, repo_dir: Path) -> None:
    write(repo_dir, {"a.txt": "held\n"})
    held = snapshot_uncommitted(repo)
    write(repo_dir, {"a.txt": "dropped\n"})
    dropped = snapshot_uncommitted(repo)
    store = held.store
    hold(store, "run-1", held.sha)
    assert git(store.root, "rev-parse", "refs/ci-runner/runs/run-1") == held.sha

    git(store.root, "gc", "-q", "--prune=now")  # as a step's own git might

    assert file_at(store, held.sha, "a.txt") == b"held\n"
    gone = subprocess.run(["git", "cat-file", "-e", dropped.sha], cwd=store.root, check=False)
    assert gone.returncode != 0
    release(store, "run-1")
    assert git(store.root, "for-each-ref", "refs/ci-runner/") == ""
    release(store, "run-1")


@pytest.mark.parametrize("run_id", ["", "../x", "a b", "-x", "x.lock", "a..b"])
def test_hold_rejects_run_ids_that_are_not_ref_names(repo: RepoInfo, run_id: str) -> None:
    with pytest.raises(UsageError, match="cannot name a git ref"):
        hold(repo, run_id, resolve_rev(repo).sha)


# file_at


def test_file_at(repo: RepoInfo, repo_dir: Path) -> None:
    first = git(repo_dir, "rev-parse", "HEAD")
    (repo_dir / "blob.bin").write_bytes(b"\x00\xff\n\n")
    git(repo_dir, "add", "blob.bin")
    second = commit(repo_dir, {"a.txt": "a2\n"}, "two")
    assert file_at(repo, first, "a.txt") == b"a1\n"
    assert file_at(repo, second, "a.txt") == b"a2\n"
    assert file_at(repo, second, "blob.bin") == b"\x00\xff\n\n"
    assert file_at(repo, first, "blob.bin") is None
    assert file_at(repo, first, "src") is None  # a folder is not a file
    assert file_at(repo, first[:8], "src/main.py") == b"print('hi')\n"
    with pytest.raises(WorkspaceError, match="is not in"):
        file_at(repo, "0" * 40, "a.txt")

