"""Per-tenant bare mirrors: fetched by sha (or by ref when a forge refuses that), and
forked from like any repository, with real git."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_runner.errors import NotAGitRepository, UsageError, WorkspaceError
from ci_runner.workspace import fork, open_repo, remove, resolve_rev, tenant_key
from ci_runner.workspace.mirror import ensure_mirror, fetch, has_commit, mirror_path
from tests.gitrepos import commit, git, make_repo


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CI_RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return make_repo(tmp_path / "source", {"README": "hi\n"})


def test_fetch_a_sha_on_no_branch_and_fork_from_the_mirror(source: Path, tmp_path: Path):
    git(source, "checkout", "-q", "--detach")
    sha = commit(source, {"only-here.txt": "x"}, "on no branch")
    mirror = ensure_mirror(mirror_path("github", "octo/repo"))
    assert mirror.root == mirror.common_dir  # bare
    assert mirror.root == (tmp_path / "home/mirrors/github/octo/repo.git").resolve()
    assert not has_commit(mirror, sha)
    fetch(mirror, str(source), sha, into="refs/ci-runner/heads/main")
    assert has_commit(mirror, sha)
    assert git(mirror.root, "rev-parse", "refs/ci-runner/heads/main") == sha
    assert open_repo(mirror.root) == mirror  # reopened the same way
    assert resolve_rev(mirror, sha).sha == sha
    dest = tmp_path / "wt"
    fork(mirror, sha, dest)
    assert (dest / "only-here.txt").read_text() == "x"
    remove(mirror, dest)
    assert not dest.exists()
    # Fetching what is there already only moves the ref.
    fetch(mirror, str(source), sha, into="refs/ci-runner/pull/3")
    assert git(mirror.root, "rev-parse", "refs/ci-runner/pull/3") == sha


def test_each_mirror_is_its_own_tenant(source: Path):
    a = ensure_mirror(mirror_path("github", "octo/a"))
    b = ensure_mirror(mirror_path("github", "octo/b"))
    c = ensure_mirror(mirror_path("gitlab", "octo/a"))
    keys = {tenant_key(a), tenant_key(b), tenant_key(c), tenant_key(open_repo(source))}
    assert len(keys) == 4


def test_fetch_falls_back_to_the_source_ref(source: Path, monkeypatch: pytest.MonkeyPatch):
    older = git(source, "rev-parse", "HEAD")
    commit(source, {"b.txt": "b"}, "second")
    # Protocol v0 serves only advertised tips, as some forges do: the older commit can
    # only come with the branch.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    mirror = ensure_mirror(mirror_path("gitea", "octo/repo"))
    url = "file://" + str(source)
    with pytest.raises(WorkspaceError, match="could not fetch"):
        fetch(mirror, url, older, into="refs/ci-runner/heads/main")
    fetch(mirror, url, older, into="refs/ci-runner/heads/main", source="refs/heads/main")
    assert has_commit(mirror, older)
    assert git(mirror.root, "rev-parse", "refs/ci-runner/heads/main") == older


def test_unknown_commits_and_option_like_input_are_refused(source: Path):
    mirror = ensure_mirror(mirror_path("github", "octo/repo"))
    with pytest.raises(WorkspaceError, match="could not fetch"):
        fetch(mirror, str(source), "b" * 40, into="refs/ci-runner/heads/main")
    for bad in ("--upload-pack=x", "HEAD", "a" * 39):
        with pytest.raises(UsageError):
            fetch(mirror, str(source), bad, into="refs/ci-runner/heads/main")
    with pytest.raises(UsageError):
        fetch(mirror, str(source), "a" * 40, into="refs/heads/main")


def test_the_git_dir_of_a_working_tree_is_still_refused(source: Path):
    with pytest.raises(NotAGitRepository, match="not a working tree"):
        open_repo(source / ".git")


def test_a_fetch_writes_one_pack_never_loose_objects(source: Path):
    """A fetch killed half way must not leave a commit without its blobs (git would count
    it as present and never fetch it again): objects arrive as a pack, renamed whole."""
    sha = commit(source, {f"f{i}.txt": f"{i}\n" for i in range(5)}, "a few files")
    mirror = ensure_mirror(mirror_path("github", "octo/packs"))
    fetch(mirror, str(source), sha, into="refs/ci-runner/heads/main")
    counts = dict(line.split(": ") for line in git(mirror.root, "count-objects", "-v").splitlines())
    assert counts["count"] == "0" and int(counts["in-pack"]) >= 8, counts


def test_a_commit_left_without_its_files_is_fetched_again(source: Path, tmp_path: Path):
    """A mirror damaged by a fetch killed half way, before fetches were one pack: the
    commit is there, a file of it is not. The next delivery of it repairs the mirror."""
    sha = commit(source, {"b.txt": "world\n"}, "two files")
    mirror = ensure_mirror(mirror_path("github", "octo/damaged"))
    git(mirror.root, "-c", "fetch.unpackLimit=1000", "fetch", "-q", str(source),
        f"+{sha}:refs/ci-runner/heads/main")  # loose objects, as old fetches left them
    blob = git(source, "rev-parse", f"{sha}:b.txt")
    (mirror.root / "objects" / blob[:2] / blob[2:]).unlink()
    assert has_commit(mirror, sha)
    fetch(mirror, str(source), sha, into="refs/ci-runner/pull/1")
    dest = tmp_path / "wt"
    fork(mirror, sha, dest)
    assert (dest / "b.txt").read_text() == "world\n"
