"""Per-tenant bare mirrors for the webhook server: a pushed sha is fetched from the clone
URL in the server's config (never one from the payload) into
``CI_RUNNER_HOME/mirrors/<forge>/<owner>/<repo>.git``, and runs fork their worktrees
from there like from any repository (``open_repo`` accepts a bare repository).

Nothing a payload says reaches git as an option: the sha is checked to be hex, the
destination ref is built from names the caller validated, and every call ends its
options with ``--end-of-options``.

A mirror is ci-runner's alone, yet a run forked from it can write its git dir (issue
10: a fork pull request's pipeline set ``core.fsmonitor`` there). So before every
fetch, after it and before every worktree is added, ``reset_foreign_config`` checks
the mirror: a config key outside what ci-runner writes (filters, ``sshCommand``,
``url.*.insteadOf``, includes, ...), or a file git would take as settings or as a
pointer to another git dir (``.git``, ``commondir``, ``info/attributes``,
``config.worktree``), and puts back ci-runner's own content with a warning. git's
command-line overrides (``gitcmd.py``) stop fsmonitor, hooks and ``ext::`` even
between two checks; filters only this reset removes.

A mirror remembers which clone URL it mirrors: the SHA-256 of the URL, in its file
``ci-runner-clone-url`` (not in its config, which stays what ``git init`` wrote: git
never reads this file, so it needs no place in the reset). When the config's
``clone_url`` changes, the next fetch makes the mirror afresh before fetching: git
takes a commit it already has for fetched from anywhere, so objects of the old URL
left in place would be served for the new one's deliveries. Runs still going from
the old mirror keep their checked-out files, not git: their worktrees cannot come
along, since git checks every worktree's commit on each fetch and theirs are gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ci_runner import paths
from ci_runner.errors import UsageError, WorkspaceError
from ci_runner.workspace.gitcmd import GitResult, run_git
from ci_runner.workspace.worktree import RepoInfo, _worktree_lock, open_repo

log = logging.getLogger("ci_runner.workspace")

FETCH_TIMEOUT_S = 600.0
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_BOOL = frozenset({"true", "false"})
# Every key a mirror's config may hold, with the values it may have: what `git init
# --bare` probes and writes, and the gc setting ensure_mirror adds. Anything else was
# written by someone else.
_ALLOWED: dict[str, frozenset[str]] = {
    "core.repositoryformatversion": frozenset({"0", "1"}),
    "core.filemode": _BOOL,
    "core.symlinks": _BOOL,
    "core.ignorecase": _BOOL,
    "core.precomposeunicode": _BOOL,
    "core.bare": frozenset({"true"}),
    "extensions.objectformat": frozenset({"sha1", "sha256"}),
    "extensions.refstorage": frozenset({"files", "reftable"}),
    "gc.auto": frozenset({"0"}),
}
# Which clone URL the mirror's objects came from (its SHA-256), beside git's files.
_URL_FILE = "ci-runner-clone-url"
_PROBED = ("core.filemode", "core.symlinks", "core.ignorecase", "core.precomposeunicode")
_FORMAT_DEFAULTS = {"extensions.objectformat": "sha1", "extensions.refstorage": "files"}
# git reads these from a git dir as settings (attributes, per-worktree config) or as a
# pointer to another git dir whose config it would use instead (`.git`, `commondir`).
# ci-runner writes none of them in a mirror.
_FOREIGN_FILES = (".git", "commondir", "config.worktree", "info/attributes")


def mirror_path(forge: str, name: str) -> Path:
    """Where the mirror of repository ``name`` (``owner/repo``, already validated) lives."""
    return paths.home() / "mirrors" / forge / f"{name}.git"


def ensure_mirror(path: Path) -> RepoInfo:
    """The bare repository at ``path``, created empty on first use."""
    if not (path / "HEAD").is_file():
        path.mkdir(parents=True, exist_ok=True)
        _run(path, "init", "--bare", "--quiet", doing=f"create the mirror at {path}")
        _write_config(path, _own_config(_config_entries(path) or []))
    else:
        reset_foreign_config(path)
    return open_repo(path)


def is_mirror(repo: RepoInfo) -> bool:
    """Whether ``repo`` is one of the server's mirrors (so ci-runner's to reset)."""
    if repo.root != repo.common_dir:
        return False
    return repo.root.is_relative_to((paths.home() / "mirrors").resolve())


def reset_foreign_config(git_dir: Path) -> bool:
    """Put back ci-runner's own config in the mirror at ``git_dir`` if anything else
    is there (see the module's doc); returns whether it had to. Logs a warning naming
    what it found, since only a run writing into the mirror puts it there."""
    files = [name for name in _FOREIGN_FILES if os.path.lexists(git_dir / name)]
    # A symlink would let whoever can write its target change them after this check.
    files += [name for name in ("config", "hooks") if (git_dir / name).is_symlink()]
    # Inert for ci-runner (its git calls run no hook), but not for someone who runs git
    # in the mirror by hand. git's own samples (*.sample) never run.
    files += sorted(f"hooks/{hook.name}" for hook in _entries(git_dir / "hooks")
                    if not hook.name.endswith(".sample"))
    entries = _config_entries(git_dir)
    keys = sorted({key for key, value in entries or [] if value not in _ALLOWED.get(key, ())})
    if entries is not None and not files and not keys:
        return False
    for name in files:
        _remove_path(git_dir / name)
    _write_config(git_dir, _own_config(entries or []))
    # repr: the names are whatever the writer chose, newlines and quotes included.
    found = keys + files
    shown = [repr(f) for f in found[:12]] + ([f"{len(found) - 12} more"] if found[12:] else [])
    if entries is None:
        shown.insert(0, "a config file git cannot read")
    log.warning("the mirror %s held settings ci-runner does not write (%s); reset it to "
                "ci-runner's own config. Something with write access to the mirror put "
                "them there, such as a run of this repo", git_dir, ", ".join(shown))
    return True


def has_commit(mirror: RepoInfo, sha: str) -> bool:
    check_sha(sha)
    return run_git(mirror.root, "cat-file", "-e", f"{sha}^{{commit}}").status == 0


def fetch(mirror: RepoInfo, url: str, sha: str, *, into: str, source: str | None = None) -> None:
    """Make commit ``sha`` present in the mirror, held by ref ``into``.

    Asks the remote for the sha itself first (GitHub, Gitea, GitLab and local paths
    allow it); if the remote refuses, fetches ``source`` (the pushed branch or the
    pull request's head ref) and checks that it brought the sha.
    """
    check_sha(sha)
    if not into.startswith("refs/ci-runner/"):
        raise UsageError(f"mirror refs live under refs/ci-runner/, not {into!r}")
    # A fetch is what reads transport settings (sshCommand, credential helpers,
    # insteadOf): none of the mirror's own may reach it.
    reset_foreign_config(mirror.root)
    follow_clone_url(mirror.root, url)
    try:
        _fetch_into(mirror, url, sha, into=into, source=source)
    finally:
        reset_foreign_config(mirror.root)


def follow_clone_url(git_dir: Path, url: str) -> bool:
    """Make the mirror at ``git_dir`` one of ``url``: afresh if it holds another URL's
    objects (see the module's doc); returns whether it had to. A mirror that never
    recorded its URL (made before ci-runner did) is taken to be of ``url``."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()
    known = _recorded_url(git_dir / _URL_FILE)
    if known == digest:
        return False
    if known is not None:
        _make_afresh(git_dir)
        log.warning("the clone_url of the mirror %s changed (now %s): made it afresh, so"
                    " nothing fetched from the old URL is used (runs still going from it"
                    " keep their files, without git)", git_dir, _shown(url))
    _replace_file(git_dir / _URL_FILE, f"{digest}\n".encode(), mode=0o644)
    return known is not None


def _recorded_url(path: Path) -> str | None:
    """What ``path`` records, None if there is no such file; anything but a regular
    file (a symlink, a FIFO something planted) records a URL no config has."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        return "not a file"
    with path.open("rb") as f:
        return f.read(200).decode("ascii", "replace").strip()


def _make_afresh(git_dir: Path) -> None:
    """Swap the mirror at ``git_dir`` for an empty one of the same formats, under
    ci-runner's worktree lock, so no worktree is being added or removed meanwhile.
    Worktrees forked from the old one are still removed as usual: ``remove`` knows
    them by the path in their ``.git`` file."""
    entries = _config_entries(git_dir) or []
    found = dict(entries)
    formats = []
    if found.get("extensions.objectformat") == "sha256":
        formats.append("--object-format=sha256")
    if found.get("extensions.refstorage") == "reftable":
        formats.append("--ref-format=reftable")
    with _worktree_lock(open_repo(git_dir)):
        fresh = Path(tempfile.mkdtemp(dir=git_dir.parent, prefix=f".{git_dir.name}.fresh-"))
        try:
            fresh.chmod(stat.S_IMODE(git_dir.stat().st_mode))
            _run(fresh, "init", "--bare", "--quiet", *formats,
                 doing=f"make the mirror {git_dir} afresh")
            _write_config(fresh, _own_config(entries))
            retired = Path(tempfile.mkdtemp(dir=git_dir.parent,
                                            prefix=f".{git_dir.name}.retired-"))
            git_dir.rename(retired / "old")
            fresh.rename(git_dir)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    shutil.rmtree(retired, ignore_errors=True)


def _shown(url: str) -> str:
    """``url`` without a password or token in it, for the log."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _fetch_into(mirror: RepoInfo, url: str, sha: str, *, into: str, source: str | None) -> None:
    if has_commit(mirror, sha):
        if not _complete(mirror, sha):
            # Left by a fetch killed half way before fetches were one pack: the commit is
            # here, some of its files are not, and git would never fetch them again.
            log.warning("mirror %s holds %s without all its files: fetching it again",
                        mirror.root, sha[:12])
            _fetch(mirror, url, f"+{sha}:{into}", refetch=True)
            if not _complete(mirror, sha):
                raise WorkspaceError(f"could not repair {sha[:12]} in {mirror.root}: fetch"
                                     f" it again from {url} failed; remove the mirror", sha=sha)
        _run(mirror.root, "update-ref", "--end-of-options", into, sha, doing="hold the commit")
        return
    first = _fetch(mirror, url, f"+{sha}:{into}")
    if first.status == 0 and has_commit(mirror, sha):
        return
    if source is not None:
        second = _fetch(mirror, url, f"+{source}:{into}")
        if second.status == 0 and has_commit(mirror, sha):
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


def _complete(mirror: RepoInfo, sha: str) -> bool:
    """Whether every file of ``sha``'s tree is in the mirror (one ls-tree, one batch check)."""
    tree = run_git(mirror.root, "ls-tree", "-r", "-z", "--full-tree", "--end-of-options", sha)
    if tree.status != 0:
        return False
    blobs = [entry.split(b"\t", 1)[0].split()[2] for entry in tree.stdout.split(b"\0")
             if entry and entry.split()[1] == b"blob"]
    if not blobs:
        return True
    found = run_git(mirror.root, "cat-file", "--batch-check=%(objectname)",
                    stdin=b"\n".join(blobs) + b"\n")
    return found.status == 0 and b" missing" not in found.stdout


def _fetch(
    mirror: RepoInfo, url: str, refspec: str, *, refetch: bool = False,
) -> GitResult:
    # Objects always arrive as one pack, renamed into place whole: a fetch killed half
    # way (a SIGKILL of the server) leaves nothing, never a commit without its blobs,
    # which git would then count as present and never fetch again (small fetches are
    # otherwise unpacked into loose objects, one file at a time).
    try:
        return run_git(mirror.root, "-c", "fetch.unpackLimit=1", "-c", "transfer.unpackLimit=1",
                       "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                       *(["--refetch"] if refetch else []),
                       "--end-of-options", url, refspec, timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise WorkspaceError(
            f"fetching from {url} took over {FETCH_TIMEOUT_S:g}s; check the forge is reachable"
        ) from exc


def _run(cwd: Path, *args: str, doing: str) -> None:
    done = run_git(cwd, *args)
    if done.status != 0:
        raise WorkspaceError(f"git failed to {doing}: {_summary(done.stderr)}")


def _config_entries(git_dir: Path) -> list[tuple[str, str | None]] | None:
    """``(key, value)`` of every line of the mirror's config file as git reads it (no
    includes followed: an include is itself a key), or None if git cannot read it."""
    listed = run_git(git_dir, "config", "--file", str(git_dir / "config"), "--null", "--list")
    if listed.status != 0:
        return None
    entries: list[tuple[str, str | None]] = []
    for item in listed.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, newline, value = item.partition("\n")
            entries.append((key, value if newline else None))
    return entries


def _own_config(entries: list[tuple[str, str | None]]) -> bytes:
    """ci-runner's config for a mirror, keeping what init probed (file system
    features) and chose (object and ref formats) among ``entries``."""
    kept = {key: value for key, value in entries if value in _ALLOWED.get(key, ())}
    extensions = [(key.partition(".")[2], kept[key]) for key in _FORMAT_DEFAULTS
                  if kept.get(key, _FORMAT_DEFAULTS[key]) != _FORMAT_DEFAULTS[key]]
    lines = ["[core]", f"\trepositoryformatversion = {1 if extensions else 0}"]
    lines += [f"\t{key.partition('.')[2]} = {kept[key]}" for key in _PROBED if key in kept]
    lines.append("\tbare = true")
    if extensions:
        lines += ["[extensions]", *(f"\t{name} = {value}" for name, value in extensions)]
    # The mirror is a cache of what the forge has: git's background gc would only
    # compete with runs for the CPU; objects of superseded pushes cost little.
    lines += ["[gc]", "\tauto = 0"]
    return ("\n".join(lines) + "\n").encode()


def _write_config(git_dir: Path, content: bytes) -> None:
    _replace_file(git_dir / "config", content, mode=0o644)


def _replace_file(path: Path, content: bytes, *, mode: int) -> None:
    # A new file renamed over the old one: never a half-written file, and a symlink
    # planted at ``path`` is replaced, not followed.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.name}.ci-runner-",
                                     delete=False) as new:
        new.write(content)
    written = Path(new.name)
    written.chmod(mode)
    written.replace(path)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []
    except OSError:
        return []


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _summary(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith("hint:")]
    return " / ".join(lines)[:500] or "git gave no reason"
