"""The one way ci-runner runs git, so that no repository can make it run a command.

A repository's own config and hooks are written by whoever can write its git dir:
for the webhook server's mirrors that has included a fork pull request's pipeline,
which set ``core.fsmonitor`` so that the server's next ``git worktree add`` ran its
command (issue 10). Every git call of ci-runner goes through ``run_git``, which puts
these settings on git's command line, where they beat every config file (and which
git hands on to the git processes it starts itself):

- ``core.fsmonitor=false``: a repository's fsmonitor is a command run on every index
  refresh (``worktree add``, ``add``, ``status``).
- ``core.hooksPath=/dev/null``: no hook runs (``post-checkout`` on ``worktree add``,
  ``reference-transaction`` on every ref update, ``post-index-change``, ...). A user's
  hooks belong to their own workflow, not to the commit under test.
- ``protocol.ext.allow=never``: an ``ext::`` URL is a command; a repository's
  ``url.<base>.insteadOf`` could turn the configured clone URL into one, and a
  repository's ``protocol.ext.allow`` could allow it.
- ``core.useReplaceRefs=false``: not a command, but the same door: a ref under
  ``refs/replace/`` makes a sha read as another commit, so a trusted run would check
  out a tree the writer chose. A run is pinned to its sha and gets exactly that.

Left alone, on purpose:

- ``core.sshCommand``, ``credential.helper``, ``http.*``: only a fetch uses them, and
  only the mirrors are fetched into; ``mirror.py`` resets a mirror's config to
  ci-runner's own before every fetch, so a repository-level value never reaches one.
  Overriding them here would also override the operator's global ones (an ssh key
  for a private ``clone_url``, a credential helper, a proxy).
- Filters (``filter.<name>.smudge/clean/process``): git has no switch to turn them off,
  and a user's own (git-lfs) must keep working in their runs. Mirrors get theirs
  removed with the rest of a foreign config (``mirror.py``).
- ``core.untrackedCache``: a cache, not a command; a snapshot's ``add --all`` uses it.
- ``uploadpack.packObjectsHook``: git honours it only from protected config (system,
  global, command line), which no repository can write.
- ``safe.directory``: git's ownership check stays in force; mirrors are created by the
  server's own user, and a repository owned by someone else should be refused.
- System and global config (no ``GIT_CONFIG_NOSYSTEM``): they are the operator's or
  the user's, not a repository's, and carry what fetches need (credentials, proxies,
  CA bundles). Snapshot commits use a fixed identity, so nothing needs ``user.*``.

The environment adds: no terminal prompt and no askpass program (nobody is there to
answer), and the C locale (callers match git's English error texts).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ci_runner.errors import WorkspaceError

if TYPE_CHECKING:
    from collections.abc import Mapping

OVERRIDES: tuple[str, ...] = (
    "core.fsmonitor=false",
    f"core.hooksPath={os.devnull}",
    "protocol.ext.allow=never",
    "core.useReplaceRefs=false",
)
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "LANGUAGE": "C",
    "LC_ALL": "C",
}
_ARGV_PREFIX = ("git", *(arg for setting in OVERRIDES for arg in ("-c", setting)))


class GitResult(NamedTuple):
    """What a git command left: its exit status, raw stdout and decoded stderr."""

    status: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        """stdout as text, stripped."""
        return self.stdout.decode("utf-8", "surrogateescape").strip()


def run_git(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> GitResult:
    """Run ``git ARGS`` in ``cwd`` with the overrides above; never raises on git's exit.

    ``env`` adds variables (an index file, an identity) to the inherited environment;
    it cannot undo the fixed ones. ``timeout`` raises ``subprocess.TimeoutExpired``.
    """
    try:
        done = subprocess.run(
            [*_ARGV_PREFIX, *args], cwd=cwd, env={**os.environ, **(env or {}), **_ENV},
            input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True, check=False, timeout=timeout,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise WorkspaceError(
            f"could not run git in {cwd}; check that git is installed and the folder exists",
            cwd=str(cwd),
        ) from exc
    return GitResult(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))
