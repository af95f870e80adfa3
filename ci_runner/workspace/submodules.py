"""Submodules in a run's worktree: those the user has initialized, checked out at the
commits the run's sha records, from the user's own clones of them.

No URL is ever used. ``.gitmodules`` comes with the commit under test, so its URLs
are anyone's (an ``ext::`` URL is a command; a ``file://`` one reads any repository
on the machine, which is why git itself refuses ``file`` in submodules since 2.38.1).
A submodule the user initialized has a clone in the repository's git dir
(``.git/modules/NAME``): the run's copy is a ``git clone --shared`` of it, which
fetches nothing, copies no object and works offline. Its commit must be in that clone;
a submodule not initialized, or whose commit the clone lacks, is left empty, and the
run's output says which and what to do. Nested submodules are handled the same way,
from the clones inside the outer one's.

What a pipeline wants is ``Pipeline.submodules`` (True: every initialized one; False:
none; a list of paths: those). The worktree is made before the pipeline is imported
(it is imported from there), so the option is read from the class's source, where it
must be written as a literal (``declared_submodules``).

Webhook runs fork from the server's bare mirrors, which hold no submodule clones:
their submodules are not checked out yet, and their output says so.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ci_runner.errors import UsageError
from ci_runner.workspace.gitcmd import GitResult, run_git

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_MAX_DEPTH = 8  # submodules of submodules: deeper than this is left empty
Wanted = bool | Sequence[str]


@dataclass(frozen=True)
class Submodule:
    """One submodule of a commit: its name in ``.gitmodules``, its path in the tree (the
    gitlink's) and the commit the gitlink records."""

    name: str
    path: str
    sha: str


def check_out(git_dir: Path, sha: str, worktree: Path, *, wanted: Wanted = True,
              bare: bool = False) -> list[str]:
    """Check out the submodules of ``sha`` (already checked out at ``worktree``) from
    the clones under ``git_dir`` (the repository's common git dir); returns one line
    for each submodule left empty, saying why (nothing for a repo without any)."""
    return _check_out(git_dir, sha, worktree, wanted, bare=bare, prefix="", depth=0)


def _check_out(git_dir: Path, sha: str, worktree: Path, wanted: Wanted, *, bare: bool,
               prefix: str, depth: int) -> list[str]:
    if not (worktree / ".gitmodules").is_file():
        return []  # a gitlink without a .gitmodules entry is no submodule to git either
    found = _listed(git_dir, sha, worktree)
    if not found:
        return []
    if bare:
        return [f"submodules not checked out: webhook runs do not check out submodules yet"
                f" (not supported): {_names(found, prefix)}"]
    if wanted is False:
        return [f"submodules not checked out: the pipeline says submodules = False:"
                f" {_names(found, prefix)}"]
    notes: list[str] = []
    for module in found:
        shown = prefix + module.path
        if not isinstance(wanted, bool) and module.path not in wanted and shown not in wanted:
            notes.append(f"submodule {shown} not checked out: not in the pipeline's"
                         " submodules list")
            continue
        if depth >= _MAX_DEPTH:
            notes.append(f"submodule {shown} not checked out: submodules nested deeper than"
                         f" {_MAX_DEPTH} are not")
            continue
        why = _one(git_dir, module, worktree, shown)
        if why is not None:
            notes.append(why)
            continue
        source = _source(git_dir, module)
        assert source is not None
        # Nested ones: all of them once the outer one is wanted.
        notes += _check_out(source, module.sha, worktree / module.path, True, bare=False,
                            prefix=shown + "/", depth=depth + 1)
    return notes


def _one(git_dir: Path, module: Submodule, worktree: Path, shown: str) -> str | None:
    """Check out one submodule; None when done, else why not (a line for the output)."""
    source = _source(git_dir, module)
    if source is None:
        return (f"submodule {shown} not checked out: it is not initialized in your clone"
                f" (`git submodule update --init {shown}` there, and runs check it out)")
    if run_git(source, "cat-file", "-e", f"{module.sha}^{{commit}}").status != 0:
        return (f"submodule {shown} not checked out: its commit {module.sha[:12]} is not in"
                f" your clone of it (`git submodule update {shown}` fetches it)")
    target = worktree / module.path
    if target.is_symlink() or not target.is_dir() or any(target.iterdir()):
        return f"submodule {shown} not checked out: {module.path} is not an empty folder"
    cloned = run_git(worktree, "clone", "--quiet", "--shared", "--no-checkout", "--",
                     str(source), str(target))
    if cloned.status == 0:
        cloned = run_git(target, "checkout", "--quiet", "--detach", module.sha)
    if cloned.status != 0:
        return f"submodule {shown} not checked out: git failed: {_summary(cloned)}"
    return None


def _listed(git_dir: Path, sha: str, worktree: Path) -> list[Submodule]:
    """The submodules of ``sha``: ``.gitmodules`` entries whose path is a gitlink."""
    config = run_git(worktree, "config", "--no-includes", "--file", ".gitmodules", "--null",
                     "--get-regexp", r"^submodule\..*\.path$")
    paths: dict[str, str] = {}  # path -> name
    for entry in config.stdout.decode("utf-8", "replace").split("\0"):
        key, _, value = entry.partition("\n")
        name = key.removeprefix("submodule.").removesuffix(".path")
        if key and _plain(name) and _plain(value):
            paths.setdefault(value.rstrip("/"), name)
    if not paths:
        return []
    tree = run_git(git_dir, "ls-tree", "-z", sha, "--", *sorted(paths))
    found: list[Submodule] = []
    for line in tree.stdout.decode("utf-8", "replace").split("\0"):
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[0] == "160000" and _SHA.fullmatch(parts[2]) \
                and path in paths:
            found.append(Submodule(name=paths[path], path=path, sha=parts[2]))
    return found


def _source(git_dir: Path, module: Submodule) -> Path | None:
    """The user's clone of ``module``: ``GIT_DIR/modules/NAME``, where `git submodule`
    keeps it; None when it was never initialized."""
    folder = git_dir / "modules" / module.name
    if (folder / "HEAD").is_file() and (folder / "objects").is_dir():
        return folder
    return None


def _plain(path: str) -> bool:
    """A relative path with no ``..``, empty or hidden-git part: all a name or path
    from a commit's ``.gitmodules`` may be before it names a folder."""
    if not path or path.startswith("/") or "\\" in path or len(path) > 1024:
        return False
    parts = PurePosixPath(path).parts
    return all(p not in ("", ".", "..") and p.lower() != ".git" for p in parts) and not any(
        ord(c) < 32 for c in path)


def _names(found: Sequence[Submodule], prefix: str) -> str:
    return ", ".join(prefix + m.path for m in found)


def _summary(result: GitResult) -> str:
    lines = [line.strip() for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("hint:")]
    return " / ".join(lines) or f"exit status {result.status}"


def declared_submodules(source: bytes | None, pipeline: str | None = None) -> Wanted:
    """What ``submodules = ...`` in the pipeline's class says (True when it says
    nothing), read from ``.ci/pipeline.py``'s source without running it. ``pipeline``
    names the class (``--pipeline``); else the one class that sets it, if they agree."""
    if source is None:
        return True
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError):
        return True  # the import says what is wrong with it, better than we could
    said: dict[str, Wanted] = {}
    for node in module.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            value = _assigned(item, "submodules")
            if value is not None:
                said[node.name] = _literal(node.name, value)
    if pipeline is not None:
        return said.get(pipeline, True)
    choices = {repr(v) for v in said.values()}
    if len(choices) > 1:
        raise UsageError("the pipeline classes in .ci/pipeline.py set submodules to"
                         " different values: run one with --pipeline NAME")
    return next(iter(said.values()), True)


def _assigned(node: ast.stmt, name: str) -> ast.expr | None:
    if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets):
        return node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
            and node.target.id == name and node.value is not None:
        return node.value
    return None


def _literal(cls: str, node: ast.expr) -> Wanted:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = None
    if isinstance(value, bool):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [v.strip("/") for v in value]
    raise UsageError(f"{cls}.submodules must be True, False or a list of paths, written as"
                     " such in the class: it is read before the pipeline is imported,"
                     f" line {node.lineno} of .ci/pipeline.py")
