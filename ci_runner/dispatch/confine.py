"""What a run's sandbox holds: from the run's metadata to a sandbox policy.

``ci_runner.sandbox`` knows how to build a sandbox from a policy; this module
knows what a CI run needs in one. The pipeline process and each light step see:

- the run's worktree, writable, at its real path (steps also get the worktree's
  own git admin folder writable; the repository's git directory is read-only);
- the system (``/usr``, ``/etc`` less its secrets), the interpreter and the
  toolchain prefixes on the runner's ``PATH``, read-only;
- a private ``/tmp`` and ``HOME`` per run (kept for the run's steps, removed with
  its worktree), and a per-repo tool cache at ``HOME/.cache`` (per pull request for
  a fork's run);
- the host network, unless the step says ``network=False`` or the run is a fork's.

Never: ``CI_RUNNER_HOME`` (database, secrets, logs, mirrors, other worktrees), the
rest of ``HOME``, ``/run`` and ``/var/run`` (the Docker socket), the host's ``/tmp``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from ci_runner import paths
from ci_runner.errors import UsageError

# Where the pipeline process finds its end of the broker's socket: part of the
# environment its confinement hands it, here so that starting it needs no import of
# the broker (asyncio), which the parent then does while the child starts.
BROKER_FD_ENV = "CI_RUNNER_BROKER_FD"

MODES = ("auto", "bwrap", "landlock", "off")
MODE_ENV = "CI_RUNNER_SANDBOX"
# Variables a sandboxed pipeline process keeps from its driver's environment, comma
# separated: the server's `pass_env`.
PASS_ENV = "CI_RUNNER_PASS_ENV"  # noqa: S105 - a variable name, not a password


def chosen_mode(explicit: str | None) -> str:
    """``--sandbox``/the server's ``sandbox:`` key, else ``CI_RUNNER_SANDBOX``, else auto."""
    mode = explicit or os.environ.get(MODE_ENV) or "auto"
    if mode not in MODES:
        raise UsageError(f"--sandbox must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


@dataclass(frozen=True)
class Confinement:
    """A run's sandbox: its level (``bwrap``, ``landlock`` or ``off``, and why) and
    how to put the pipeline process and each light step in it."""

    kind: str
    reason: str
    workspace: Path
    ro: tuple[Path, ...] = ()
    rw: tuple[Path, ...] = ()
    step_rw: tuple[Path, ...] = ()  # steps only: the worktree's git admin folder
    tmp: Path | None = None
    home: Path | None = None
    cache: Path | None = None
    network: bool = True
    ids: tuple[int, int] | None = None  # when ci-runner is root: who the sandbox runs as
    env: dict[str, str] = field(default_factory=dict)

    # -- the pipeline process ------------------------------------------------------

    def process(self, keep_fds: tuple[int, ...]) -> Any:
        """The engine's ``Confinement`` for the pipeline process."""
        from ci_runner.engine.process import Confinement as ProcessConfinement

        if self.kind == "bwrap":
            return ProcessConfinement(wrap=tuple(self._bwrap(network=self.network,
                                                             steps=False)),
                                      fork=False, keep_fds=keep_fds)
        if self.kind == "landlock":
            # Spawned, never forked: a fork would carry the driver's memory (its whole
            # environment among it) into the pipeline's process.
            return ProcessConfinement(wrap=tuple(self._landlock(steps=False)), fork=False,
                                      keep_fds=keep_fds)
        return ProcessConfinement(keep_fds=keep_fds)

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The pipeline process's environment: a step's scrubbed one (off: as given)."""
        if self.kind == "off":
            return dict(base)
        from ci_runner.executors.host import scrubbed_env

        passed = set(base.get(PASS_ENV, "").split(",")) - {""}
        keep = {k: v for k, v in base.items() if k.startswith("PYTHON") or k in passed}
        return {**keep, **scrubbed_env({}), **self.step_env()}

    def step_env(self) -> dict[str, str]:
        """What every light step's environment gets from its sandbox."""
        if self.kind == "off":
            return {}
        env = dict(self.env)
        if self.home is not None:
            env["HOME"] = str(self._home_inside())
        if self.cache is not None:
            # Under bubblewrap the tool cache is mounted at HOME/.cache; Landlock can
            # only point at it.
            inside = self._home_inside() / ".cache" if self.kind == "bwrap" else self.cache
            env["XDG_CACHE_HOME"] = str(inside)
        if self.kind == "landlock" and self.tmp is not None:
            env["TMPDIR"] = str(self.tmp)
        elif self.kind == "bwrap":
            env["TMPDIR"] = "/tmp"  # noqa: S108 - the sandbox's own, private /tmp
        return env

    # -- light steps ------------------------------------------------------------------

    def step_wrap(self, *, network: bool) -> list[str]:
        """The argv prefix a light step runs under."""
        if self.kind == "bwrap":
            return self._bwrap(network=network and self.network, steps=True)
        if self.kind == "landlock":
            return self._landlock(steps=True)
        return []

    def _landlock(self, *, steps: bool) -> list[str]:
        return [sys.executable, "-I", "-S", str(_LANDLOCK_EXEC),
                *[a for p in self.ro for a in ("--ro", str(p))],
                *[a for p in self._rw(steps=steps) for a in ("--rw", str(p))],
                *(("--nocaps",) if self.ids else ()), "--"]

    def _rw(self, *, steps: bool) -> list[Path]:
        extra = [p for p in (self.tmp, self.home, self.cache) if p is not None]
        return [*self.rw, *(self.step_rw if steps else ()), *extra]

    def _home_inside(self) -> Path:
        if self.kind == "bwrap":
            return Path(os.environ.get("HOME") or "/home/ci")
        assert self.home is not None
        return self.home

    def _bwrap(self, *, network: bool, steps: bool) -> list[str]:
        from ci_runner import sandbox

        home = self._home_inside()
        binds: list[tuple[Path, Path]] = []
        if self.tmp is not None:
            binds.append((self.tmp, Path("/tmp")))  # noqa: S108 - a private one
        if self.home is not None:
            binds.append((self.home, home))
        if self.cache is not None:
            binds.append((self.cache, home / ".cache"))
        policy = sandbox.Policy(
            ro=self.ro, rw=(*self.rw, *(self.step_rw if steps else ())),
            binds=tuple(binds), network=network,
            uid=self.ids[0] if self.ids else None, gid=self.ids[1] if self.ids else None,
        )
        return sandbox.bwrap_argv(policy)

    # -- the run's own folders ----------------------------------------------------------

    def prepare(self) -> None:
        """Make the run's private folders, owned by whom the sandbox runs as."""
        for folder in (self.tmp, self.home, self.cache):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o700)
        if self.ids is not None and self.kind == "bwrap":
            for folder in (self.tmp, self.home, self.cache):
                if folder is not None:
                    _chown_tree(folder, self.ids)
            if self.workspace.is_dir():
                _chown_tree(self.workspace, self.ids)
            for admin in self.step_rw:
                if admin.is_dir():
                    _chown_tree(admin, self.ids)

    def hand_over_workspace(self) -> None:
        """Hand files git just checked out in the worktree (as our user) to whom the
        sandbox runs as."""
        if self.ids is not None and self.kind == "bwrap" and self.workspace.is_dir():
            _chown_tree(self.workspace, self.ids, force=True)
            for admin in self.step_rw:  # its index, rewritten
                if admin.is_dir():
                    _chown_tree(admin, self.ids, force=True)


_LANDLOCK_EXEC = Path(__file__).resolve().parent.parent / "landlock_exec.py"


def scratch(run_id: str) -> Path:
    """A run's private ``/tmp`` and ``HOME``: removed with its worktree."""
    return paths.home() / "scratch" / run_id


def remove_scratch(run_id: str) -> None:
    shutil.rmtree(scratch(run_id), ignore_errors=True)


def plan(metadata: Mapping[str, Any], *, mode: str | None = None) -> Confinement:
    """The sandbox for the run ``metadata`` describes, at the best level this machine
    allows for the mode the run was started with. A fork's run refuses to go without
    bubblewrap: raises ``UsageError`` naming the cause and the fix."""
    from ci_runner import sandbox

    untrusted = bool(metadata.get("untrusted"))
    wanted = chosen_mode(mode or metadata.get("sandbox"))
    if untrusted:
        if wanted in ("off", "landlock"):
            wanted = "bwrap"  # a fork's code never runs with less
        level = sandbox.probe("bwrap")
    else:
        level = sandbox.probe(wanted)
    run_id = str(metadata["run_id"])
    workspace = Path(metadata["workspace"])
    if level.kind == "off":
        return Confinement("off", level.reason, workspace)
    home = paths.home()
    forbidden = [home, Path.home(), Path("/tmp"), Path("/run"), Path("/var/run")]  # noqa: S108
    ro: list[Path] = [*sandbox.python_paths(forbidden=forbidden),
                      *sandbox.toolchain_paths(os.environ.get("PATH", ""), forbidden=forbidden)]
    # Tools a run found and will put on its steps' PATH (a workflow's setup-python).
    extra = [str(p) for p in metadata.get("toolchains") or () if isinstance(p, str)]
    ro += sandbox.toolchain_paths(os.pathsep.join(extra), forbidden=forbidden)
    gitdir, admin = _git_dirs(workspace, Path(str(metadata.get("repo", ""))))
    if gitdir is not None:
        ro.append(gitdir)
    store = metadata.get("snapshot_store")
    if store:  # a snapshot's objects, and the user's that its store reads through
        from ci_runner.workspace.snapshots import user_git_dir

        ro += [Path(str(store)), *filter(None, [user_git_dir(Path(str(store)))])]
    scope = sha256(str(metadata.get("tenant", "")).encode()).hexdigest()[:16]
    if untrusted:
        scope += f"-pr-{metadata.get('pr') or 'unknown'}"
    return Confinement(
        level.kind, level.reason, workspace, ro=_outermost(ro), rw=(workspace,),
        step_rw=(admin,) if admin is not None else (),
        tmp=scratch(run_id) / "tmp", home=scratch(run_id) / "home",
        cache=home / "toolcache" / scope, network=not untrusted, ids=sandbox.sandbox_ids(),
        env={"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
             "GIT_CONFIG_VALUE_0": "*"},
    )


def _outermost(found: list[Path]) -> tuple[Path, ...]:
    """Without repeats or paths inside another one (each is mounted once)."""
    unique = sorted(dict.fromkeys(found), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return tuple(kept)


def _git_dirs(workspace: Path, repo: Path) -> tuple[Path | None, Path | None]:
    """The repository's common git directory and the worktree's admin folder in it,
    read from the worktree's ``.git`` file (no git process): ``gitdir: <admin>``."""
    admin: Path | None = None
    try:
        text = (workspace / ".git").read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            admin = Path(text.partition(":")[2].strip())
    except OSError:
        pass
    if admin is not None and admin.parent.name == "worktrees":
        return admin.parent.parent, admin
    for candidate in (repo / ".git", repo):
        if (candidate / "objects").is_dir() and (candidate / "HEAD").is_file():
            return candidate, admin
    return None, admin


def _chown_tree(root: Path, ids: tuple[int, int], *, force: bool = False) -> None:
    """Hand a folder to the sandbox's user; cheap when it already has it (unless
    ``force``: things were added to a folder it had)."""
    uid, gid = ids
    try:
        if root.stat().st_uid == uid and not force:
            return
    except OSError:
        return
    for folder, dirs, files in os.walk(root):
        os.lchown(folder, uid, gid)
        for name in (*dirs, *files):
            os.lchown(Path(folder, name), uid, gid)
