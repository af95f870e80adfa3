"""Per-tenant bare mirrors for the webhook server: a pushed sha is fetched from the clone
URL in the server's config (never one from the payload) into
``CI_RUNNER_HOME/mirrors/<forge>/<owner>/<repo>.git``, and runs fork their worktrees
from there like from any repository (``open_repo`` accepts a bare repository).

Nothing a payload says reaches git as an option: the sha is checked to be hex, the
destination ref is built from names the caller validated, and every call ends its
options with ``--end-of-options``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ci_runner import paths
from ci_runner.errors import UsageError, WorkspaceError
from ci_runner.workspace.worktree import RepoInfo, open_repo

FETCH_TIMEOUT_S = 600.0
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Fetches never ask for a password on a terminal nobody watches, and never run the
# user's global hooks or credential helpers that pop up windows.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}


def mirror_path(forge: str, name: str) -> Path:
    """Where the mirror of repository ``name`` (``owner/repo``, already validated) lives."""
    return paths.home() / "mirrors" / forge / f"{name}.git"


def ensure_mirror(path: Path) -> RepoInfo:
    """The bare repository at ``path``, created empty on first use."""
    if not (path / "HEAD").is_file():
        path.mkdir(parents=True, exist_ok=True)
        _run(path, "init", "--bare", "--quiet", doing=f"create the mirror at {path}")
        # The mirror is a cache of what the forge has: git's background gc would only
        # compete with runs for the CPU; objects of superseded pushes cost little.
        _run(path, "config", "gc.auto", "0", doing="configure the mirror")
    return open_repo(path)


def has_commit(mirror: RepoInfo, sha: str) -> bool:
    check_sha(sha)
    done = subprocess.run(
        ["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=mirror.root, env=_env(),
        capture_output=True, check=False,
    )
    return done.returncode == 0


def fetch(mirror: RepoInfo, url: str, sha: str, *, into: str, source: str | None = None) -> None:
    """Make commit ``sha`` present in the mirror, held by ref ``into``.

    Asks the remote for the sha itself first (GitHub, Gitea, GitLab and local paths
    allow it); if the remote refuses, fetches ``source`` (the pushed branch or the
    pull request's head ref) and checks that it brought the sha.
    """
    check_sha(sha)
    if not into.startswith("refs/ci-runner/"):
        raise UsageError(f"mirror refs live under refs/ci-runner/, not {into!r}")
    if has_commit(mirror, sha):
        _run(mirror.root, "update-ref", "--end-of-options", into, sha, doing="hold the commit")
        return
    first = _fetch(mirror, url, f"+{sha}:{into}")
    if first.returncode == 0 and has_commit(mirror, sha):
        return
    if source is not None:
        second = _fetch(mirror, url, f"+{source}:{into}")
        if second.returncode == 0 and has_commit(mirror, sha):
            _run(mirror.root, "update-ref", "--end-of-options", into, sha, doing="hold the commit")
            return
        first = second
    raise WorkspaceError(
        f"could not fetch {sha[:12]} from {url} into {mirror.root}: "
        f"{_summary(first.stderr)}; check the clone_url and that the commit was pushed",
        sha=sha,
    )


def check_sha(sha: str) -> None:
    if not _SHA.fullmatch(sha):
        raise UsageError(f"{sha!r} is not a full commit sha (40 or 64 hex digits)", sha=sha)


def _fetch(mirror: RepoInfo, url: str, refspec: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-c", f"core.hooksPath={os.devnull}", "fetch", "--quiet", "--no-tags",
             "--no-write-fetch-head", "--end-of-options", url, refspec],
            cwd=mirror.root, env=_env(), capture_output=True, text=True, check=False,
            timeout=FETCH_TIMEOUT_S, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkspaceError(
            f"fetching from {url} took over {FETCH_TIMEOUT_S:g}s; check the forge is reachable"
        ) from exc


def _run(cwd: Path, *args: str, doing: str) -> None:
    done = subprocess.run(["git", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise WorkspaceError(f"git failed to {doing}: {_summary(done.stderr)}")


def _env() -> dict[str, str]:
    return {**os.environ, **_GIT_ENV}


def _summary(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith("hint:")]
    return " / ".join(lines)[:500] or "git gave no reason"
