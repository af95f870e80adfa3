"""Built-in stand-ins for the actions most workflows use, so nothing is downloaded.

``actions/checkout`` clones the run's commit into the job's own folder (``git clone
--shared`` from the run's worktree: no network, the objects shared); the setup-*
actions put an interpreter or tool that is installed here on PATH (a version that
is not installed skips the job cell, saying so); ``actions/cache`` keeps folders in
the repo's tool cache; ``upload-artifact`` keeps files as the run's artifacts and
``download-artifact`` hands them to later jobs of the run. ``uses: ./path`` runs a
local composite action from the repo. Anything else is not available offline: the
job cell is skipped with one line saying which action.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ci_runner.workflows import tools
from ci_runner.workflows.model import Step
from ci_runner.workflows.source import Located, WorkflowError, load_yaml

if TYPE_CHECKING:
    from ci_runner.workflows.runner import JobCell

STAND_INS = ("actions/checkout", "actions/setup-python", "actions/setup-node",
             "astral-sh/setup-uv", "pnpm/action-setup", "actions/cache",
             "actions/cache/restore", "actions/cache/save", "actions/upload-artifact",
             "actions/download-artifact")
ARTIFACTS_DIR = ".ci-runner-jobs/_artifacts"
_SH = ["sh", "-e", "{0}"]


def action_name(uses: str) -> str:
    """``actions/setup-python@v5`` -> ``actions/setup-python``."""
    return uses.split("@", 1)[0].rstrip("/").lower()


def preflight(cell: JobCell) -> str | None:
    """Why this job cell cannot run here (an action not available offline, a Python
    or Node version not installed), or None."""
    missing = []
    for step in cell.job.steps:
        if step.uses is None:
            continue
        reason = _unavailable(cell, step)
        if reason is not None:
            missing.append(reason)
    if missing:
        return "; ".join(dict.fromkeys(missing))
    return None


def _unavailable(cell: JobCell, step: Step) -> str | None:
    assert step.uses is not None
    uses = step.uses.strip()
    if uses.startswith("./"):
        try:
            _local_action(cell, uses, step)
        except WorkflowError as exc:
            return exc.message
        return None
    name = action_name(uses)
    if uses.startswith("docker://") or name not in STAND_INS:
        return (f"{uses} is not available offline (stand-ins: {', '.join(STAND_INS[:6])},"
                " cache, upload/download-artifact; or a local ./action)")
    if cell.image is not None and name.startswith(("actions/setup-", "astral-sh/", "pnpm/")):
        return f"{uses} in a container: job is not available offline"
    with_ = _with_early(cell, step)
    if name == "actions/setup-python":
        wanted = _python_wanted(cell, with_)
        if wanted is not None and tools.pick(cell.flow.tools.get("python", []), wanted) is None:
            have = ", ".join(e["version"] for e in cell.flow.tools.get("python", [])) or "none"
            return f"Python {wanted} is not installed here (installed: {have})"
    if name == "actions/setup-node":
        wanted = _node_wanted(cell, with_)
        if wanted is not None and tools.pick(cell.flow.tools.get("node", []), wanted) is None:
            have = ", ".join(e["version"] for e in cell.flow.tools.get("node", [])) or "none"
            return f"Node {wanted} is not installed here (installed: {have})"
    if name == "astral-sh/setup-uv" and "uv" not in cell.flow.tools.get("programs", {}):
        return "uv is not installed here (pip install uv)"
    if name == "pnpm/action-setup" and "pnpm" not in cell.flow.tools.get("programs", {}):
        return "pnpm is not installed here (npm install -g pnpm)"
    if name == "actions/checkout":
        repository = str(with_.get("repository") or "")
        if repository and repository != cell.flow.github["repository"]:
            return f"actions/checkout of another repository ({repository}) needs the network"
    return None


def _with_early(cell: JobCell, step: Step) -> dict[str, Any]:
    """``with:`` as far as it can be known before the job's steps ran."""
    from ci_runner.workflows import expressions

    shown = {}
    for key, value in step.with_.items():
        try:
            shown[key] = expressions.interpolate(value, cell.contexts()) \
                if isinstance(value, str) else value
        except (expressions.ExpressionError, AttributeError):
            shown[key] = None
    return shown


def _python_wanted(cell: JobCell, with_: Mapping[str, Any]) -> str | None:
    from ci_runner.workflows import expressions

    value = with_.get("python-version")
    if value is not None and str(value).strip():
        first = str(expressions.to_string(value)).split()[0] if isinstance(value, str) \
            else expressions.to_string(value)
        return str(first)
    version_file = with_.get("python-version-file")
    if version_file:
        try:
            return (cell.flow.root / str(version_file)).read_text().split()[0]
        except (OSError, IndexError):
            return None
    return None


def _node_wanted(cell: JobCell, with_: Mapping[str, Any]) -> str | None:
    from ci_runner.workflows import expressions

    value = with_.get("node-version")
    if value is not None and str(value).strip():
        return str(expressions.to_string(value))
    version_file = with_.get("node-version-file")
    if version_file:
        try:
            return (cell.flow.root / str(version_file)).read_text().split()[0]
        except (OSError, IndexError):
            return None
    return None


async def run_action(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                     ) -> dict[str, Any]:
    """Run a ``uses:`` step; returns what it hands on (``outputs``, ``env``, ``path``)."""
    assert step.uses is not None
    with_ = {}
    for key, value in step.with_.items():
        with_[key] = cell.interpolate(value, cell.where(step, f"with.{key}"), step_env)
    uses = step.uses.strip()
    if uses.startswith("./"):
        from ci_runner.workflows.composite import run_composite

        return await run_composite(cell, step, name, step_env, with_)
    kind = action_name(uses)
    handler = _HANDLERS[kind]
    result: dict[str, Any] = await handler(cell, step, name, step_env, with_)
    return result


async def _checkout(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                    with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions

    path = str(expressions.to_string(with_.get("path") or ""))
    target = Path(cell.dir_rel) / path if path else Path(cell.dir_rel)
    if not (cell.flow.root / target).resolve().is_relative_to(cell.dir.resolve()):
        raise WorkflowError(f"{cell.where(step, 'with.path')}: {path!r} is outside the job's"
                            " workspace")
    ref = str(cell.flow.github["ref"])
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else ""
    sha = str(cell.flow.github["sha"])
    source = str(cell.flow.root)
    submodules = with_.get("submodules")
    lines = [
        f"mkdir -p {shlex.quote(str(cell.flow.root / target))}",
        f"cd {shlex.quote(str(cell.flow.root / target))}",
        "find . -mindepth 1 -maxdepth 1 -exec rm -rf {} +",
        f"git clone -q --shared --no-checkout {shlex.quote(source)} .",
        (f"git checkout -q -B {shlex.quote(branch)} {sha}" if branch
         else f"git checkout -q --detach {sha}"),
    ]
    if submodules and expressions.to_string(submodules) != "false":
        # From the run's worktree, where they are checked out already: no URL is used.
        lines.append(
            "git config -f .gitmodules --get-regexp '^submodule\\..*\\.path$' 2>/dev/null |"
            " while read -r key sub; do name=${key#submodule.}; name=${name%.path};"
            f" [ -e {shlex.quote(source)}/\"$sub\"/.git ] || continue;"
            f" git config submodule.\"$name\".url {shlex.quote(source)}/\"$sub\"; done")
        # git's local transport drops -c settings: safe.directory (the worktree is not
        # the sandbox user's) comes from a global config of the step's own.
        lines.append('mkdir -p "$RUNNER_TEMP"; gc="$RUNNER_TEMP/ci-runner-gitconfig";'
                     " printf '[safe]\\n\\tdirectory = *\\n' > \"$gc\"")
        lines.append('GIT_CONFIG_GLOBAL="$gc" git -c protocol.file.allow=always submodule'
                     " update -q --init 2>&1 || echo 'note: a submodule could not be checked"
                     " out offline'")
    lines.append("echo \"checked out $(git rev-parse --short HEAD) from the run's worktree\"")
    return await cell.execute(name, _SH, "\n".join(lines), step, step_env,
                              cwd=cell.dir_rel)


def _installed(cell: JobCell, step: Step, kind: str, wanted: str | None) -> dict[str, str]:
    """The installed ``kind`` (python, node) of version ``wanted`` (None: the newest)."""
    installed = cell.flow.tools.get(kind, [])
    found = tools.pick(installed, wanted) if wanted is not None else (
        installed[0] if installed else None)
    if found is None:
        label = {"python": "Python", "node": "Node"}[kind]
        raise WorkflowError(f"{cell.where(step, f'with.{kind}-version')}: {label} {wanted}"
                            " is not installed here")
    return dict(found)


async def _setup_python(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                        with_: Mapping[str, Any]) -> dict[str, Any]:
    found = _installed(cell, step, "python", _python_wanted(cell, with_))
    prefix = str(Path(found["bin"]).parent)
    minor = ".".join(found["version"].split(".")[:2])
    python = shlex.quote(found["python"])
    # python, python3 and python3.X all name it (Debian's /usr/bin has no `python`),
    # ahead of its own folder (pip and the scripts installed there).
    script = "\n".join([
        f'dir="$RUNNER_TEMP/ci-runner-tools/python-{found["version"]}"', 'mkdir -p "$dir"',
        f'for n in python python3 python{minor}; do ln -sf {python} "$dir/$n"; done',
        f"echo {shlex.quote(found['bin'])} >> \"$GITHUB_PATH\"",
        'echo "$dir" >> "$GITHUB_PATH"',
        f"echo \"Python {found['version']} at {found['python']}\"",
        '"$dir/python" --version'])
    handed = await cell.execute(name, _SH, script, step, step_env)
    return {"path": handed.get("path", []),
            "env": {"pythonLocation": prefix, "Python_ROOT_DIR": prefix,
                    "Python3_ROOT_DIR": prefix, "PKG_CONFIG_PATH": f"{prefix}/lib/pkgconfig"},
            "outputs": {"python-version": found["version"], "python-path": found["python"],
                        "cache-hit": "false"}}


async def _setup_node(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                      with_: Mapping[str, Any]) -> dict[str, Any]:
    found = _installed(cell, step, "node", _node_wanted(cell, with_))
    script = f"echo \"Node $({shlex.quote(found['node'])} --version) at {found['node']}\""
    await cell.execute(name, _SH, script, step, step_env)
    return {"path": [found["bin"]], "outputs": {"node-version": "v" + found["version"],
                                                "cache-hit": "false"}}


async def _setup_uv(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                    with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions

    handed = await cell.execute(name, _SH, _link_tool(cell, "uv"), step, step_env)
    env = {}
    python = with_.get("python-version")
    if python:
        env["UV_PYTHON"] = str(expressions.to_string(python))
    return {"path": handed.get("path", []), "env": env,
            "outputs": {"uv-version": handed.get("outputs", {}).get("version", ""),
                        "uv-path": handed.get("outputs", {}).get("path", ""),
                        "cache-hit": "false"}}


def _link_tool(cell: JobCell, program: str) -> str:
    """A script putting ``program`` (found on this machine) on PATH alone: linked into a
    folder of its own, so its install folder's other programs (a pyenv version's
    python, say) do not come first on PATH too."""
    real = f"{cell.flow.tools['programs'][program]}/{program}"
    return "\n".join([
        f'dir="$RUNNER_TEMP/ci-runner-tools/{program}"', 'mkdir -p "$dir"',
        f'ln -sf {shlex.quote(real)} "$dir/{program}"',
        f'echo "{program} $("$dir/{program}" --version) from {real}"',
        'echo "$dir" >> "$GITHUB_PATH"',
        f'echo "version=$("$dir/{program}" --version | sed \'s/^[^0-9]*//; s/ .*//\')"'
        ' >> "$GITHUB_OUTPUT"',
        f'echo "path=$dir/{program}" >> "$GITHUB_OUTPUT"'])


async def _setup_pnpm(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                      with_: Mapping[str, Any]) -> dict[str, Any]:
    handed = await cell.execute(name, _SH, _link_tool(cell, "pnpm"), step, step_env)
    return {"path": handed.get("path", []), "env": {}, "outputs": {}}


def _cache_paths(cell: JobCell, step: Step, with_: Mapping[str, Any]) -> list[str]:
    from ci_runner.workflows import expressions

    raw = str(expressions.to_string(with_.get("path") or ""))
    paths = [p.strip() for p in raw.splitlines() if p.strip() and not p.strip().startswith("!")]
    if not paths:
        raise WorkflowError(f"{cell.where(step, 'with.path')}: actions/cache needs a path")
    return paths


# The cache lives in the repo's tool cache (kept per repo between runs; a fork's pull
# request has its own): one tarball per key, paths relative to the job's folder.
_CACHE_DIR = '"$cache_dir"'


def _cache_dir(cell: JobCell) -> str:
    """``cache_dir=...``: the run's tool cache, ``$XDG_CACHE_HOME`` in its sandbox; with
    the sandbox off, the same folder the sandbox would have mounted there."""
    import hashlib
    import os

    if os.environ.get("CI_RUNNER") == "1" and os.environ.get("XDG_CACHE_HOME"):
        return 'cache_dir="$XDG_CACHE_HOME/ci-runner-actions-cache"'
    from ci_runner import paths

    meta = cell.flow.metadata
    scope = hashlib.sha256(str(meta.get("tenant", "")).encode()).hexdigest()[:16]
    if meta.get("untrusted"):
        scope += f"-pr-{meta.get('pr') or 'unknown'}"
    folder = paths.home() / "toolcache" / scope / "ci-runner-actions-cache"
    return f"cache_dir={shlex.quote(str(folder))}"


def _cache_file(key: str) -> str:
    import hashlib

    return f"{_CACHE_DIR}/{hashlib.sha256(key.encode()).hexdigest()}.tar"


async def _cache(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                 with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions

    kind = action_name(step.uses or "")
    key = str(expressions.to_string(with_.get("key") or ""))
    if not key:
        raise WorkflowError(f"{cell.where(step, 'with.key')}: actions/cache needs a key")
    paths = _cache_paths(cell, step, with_)
    if kind == "actions/cache/save":
        await _cache_save(cell, name, key, paths, step, step_env)
        return {}
    restore = [r.strip() for r in str(expressions.to_string(
        with_.get("restore-keys") or "")).splitlines() if r.strip()]
    index = f"{_CACHE_DIR}/keys"
    lines = [_cache_dir(cell), f"mkdir -p {_CACHE_DIR}", f"touch {index}",
             f"key={shlex.quote(key)}", f"file={_cache_file(key)}",
             'hit=""; matched=""',
             'if [ -f "$file" ]; then hit=true; matched=$key; else',
             "  hit=false"]
    for prefix in restore:
        lines.append(f"  if [ -z \"$matched\" ]; then matched=$(grep -F -- {shlex.quote(prefix)}"
                     f" {index} | awk -v p={shlex.quote(prefix)} 'index($0, p) == 1' | tail -n 1);"
                     " fi")
    lines += ["fi",
              'if [ -n "$matched" ]; then',
              '  f=$(printf %s "$matched" | sha256sum | cut -d" " -f1)',
              f'  tar -xf {_CACHE_DIR}/"$f".tar -C "$GITHUB_WORKSPACE"',
              f'  touch {_CACHE_DIR}/"$f".tar  # used: kept (GitHub evicts after 7 days unused)',
              '  echo "cache restored from key: $matched"',
              'else echo "cache not found for key: $key"; fi',
              'echo "cache-hit=$hit" >> "$GITHUB_OUTPUT"',
              'echo "cache-primary-key=$key" >> "$GITHUB_OUTPUT"',
              'echo "cache-matched-key=$matched" >> "$GITHUB_OUTPUT"']
    handed = await cell.execute(name, _SH, "\n".join(lines), step, step_env)
    if kind == "actions/cache" and handed.get("outputs", {}).get("cache-hit") != "true":
        post_name = f"{cell.label} / Post {name.split(' / ', 1)[-1]}"

        async def post() -> None:
            if not cell.failed:
                await _cache_save(cell, post_name, key, paths, None, step_env)

        cell.post.append(post)
    return handed


async def _cache_save(cell: JobCell, name: str, key: str, paths: list[str],
                      step: Step | None, step_env: Mapping[str, str]) -> None:
    quoted = " ".join(shlex.quote(p) for p in paths)
    script = "\n".join([
        _cache_dir(cell), f"mkdir -p {_CACHE_DIR}", 'cd "$GITHUB_WORKSPACE"',
        f"set -- {quoted}", 'for p; do [ -e "$p" ] || { echo "cache: $p does not exist,'
        ' not saved"; exit 0; }; done',
        f'tar -cf {_cache_file(key)}.part "$@"',
        f"mv {_cache_file(key)}.part {_cache_file(key)}",
        # As GitHub does: entries not used for 7 days go (their keys stay listed, harmless).
        f"find {_CACHE_DIR} -name '*.tar' -mtime +7 -delete 2>/dev/null || true",
        f"grep -qxF -- {shlex.quote(key)} {_CACHE_DIR}/keys 2>/dev/null ||"
        f" printf '%s\\n' {shlex.quote(key)} >> {_CACHE_DIR}/keys",
        f"echo \"cache saved with key: {key}\""])
    await cell.execute(name, _SH, script, step, step_env, cwd=cell.dir_rel)


async def _upload(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                  with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions

    artifact = str(expressions.to_string(with_.get("name") or "artifact"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", artifact):
        raise WorkflowError(f"{cell.where(step, 'with.name')}: artifact name {artifact!r}"
                            " must be letters, digits, . _ -")
    raw = str(expressions.to_string(with_.get("path") or ""))
    paths = [p.strip() for p in raw.splitlines() if p.strip()]
    if not paths:
        raise WorkflowError(f"{cell.where(step, 'with.path')}: upload-artifact needs a path")
    store = f"{ARTIFACTS_DIR}/{artifact}"
    missing = str(expressions.to_string(with_.get("if-no-files-found") or "warn"))
    lines = ['cd "$GITHUB_WORKSPACE"', f"store={shlex.quote(str(cell.flow.root / store))}",
             'rm -rf "$store"; mkdir -p "$store"', "n=0"]
    if len(paths) == 1 and not any(c in paths[0] for c in "*?["):
        # One path: a folder's content, or the file itself, is the artifact (GitHub's).
        one = shlex.quote(paths[0].rstrip("/") or ".")
        lines.append(f'if [ -d {one} ]; then cp -R {one}/. "$store"/; n=1;'
                     f' elif [ -e {one} ]; then cp {one} "$store"/; n=1; fi')
    else:
        # Several, or globs: paths are kept relative to what their folders share.
        root = _common_root(paths)
        lines.append(f"cd {shlex.quote(root)}")
        for path in paths:
            rel = path[len(root):].lstrip("/") if root != "." else path
            lines.append(f"for p in {_glob_word(rel)}; do [ -e \"$p\" ] || continue;"
                         ' mkdir -p "$store/$(dirname "$p")"; cp -R "$p" "$store/$(dirname "$p")/";'
                         " n=$((n + 1)); done")
    lines.append('if [ "$n" -eq 0 ]; then echo "no files found for the artifact";'
                 + (" exit 1; fi" if missing == "error" else " fi"))
    lines.append(f"echo \"artifact {artifact}: $n path(s) kept\"")
    lines.append(f'echo "artifact-id={artifact}" >> "$GITHUB_OUTPUT"')
    return await cell.execute(name, _SH, "\n".join(lines), step, step_env,
                              cwd=cell.dir_rel, artifacts=[f"{store}/**/*", f"{store}/*"])


async def _download(cell: JobCell, step: Step, name: str, step_env: Mapping[str, str],
                    with_: Mapping[str, Any]) -> dict[str, Any]:
    from ci_runner.workflows import expressions

    artifact = str(expressions.to_string(with_.get("name") or ""))
    path = str(expressions.to_string(with_.get("path") or ""))
    root = shlex.quote(str(cell.flow.root / ARTIFACTS_DIR))
    dest = f'"$GITHUB_WORKSPACE"/{shlex.quote(path)}' if path else '"$GITHUB_WORKSPACE"'
    if artifact:
        script = "\n".join([
            f"src={root}/{shlex.quote(artifact)}",
            f'[ -d "$src" ] || {{ echo "artifact {artifact} was not uploaded in this run";'
            " exit 1; }",
            f"mkdir -p {dest}", f'cp -R "$src"/. {dest}/',
            f'echo "download-path=$(cd {dest} && pwd)" >> "$GITHUB_OUTPUT"'])
    else:
        script = "\n".join([
            f"mkdir -p {dest}",
            f"for a in {root}/*; do [ -d \"$a\" ] || continue;"
            f' mkdir -p {dest}/"$(basename "$a")"; cp -R "$a"/. {dest}/"$(basename "$a")"/;'
            " done",
            f'echo "download-path=$(cd {dest} && pwd)" >> "$GITHUB_OUTPUT"'])
    return await cell.execute(name, _SH, script, step, step_env, cwd=cell.dir_rel)


def _common_root(patterns: list[str]) -> str:
    """The folder the patterns' fixed parts share (``dist/a/*.whl``, ``dist/b`` ->
    ``dist``): what an artifact's paths are relative to."""
    import os

    folders = []
    for pattern in patterns:
        fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        parent = str(PurePosixPath(fixed.rstrip("/")).parent)
        folders.append(("" if parent == "." else parent) if fixed == pattern
                       else fixed.rsplit("/", 1)[0] if "/" in fixed else "")
    common = os.path.commonpath([f or "." for f in folders]) if folders else "."
    return common or "."


def _glob_word(pattern: str) -> str:
    """A path pattern as an sh word whose * and ? still glob."""
    return "".join(c if c in "*?" else shlex.quote(c) for c in pattern)


def _local_action(cell: JobCell, uses: str, step: Step) -> Located:
    """The ``action.yml`` of a ``uses: ./path`` action (composite only)."""
    folder = cell.flow.root / uses
    if not folder.resolve().is_relative_to(cell.flow.root.resolve()):
        raise WorkflowError(f"{cell.where(step, 'uses')}: {uses} is outside the repository")
    for file in ("action.yml", "action.yaml"):
        path = folder / file
        if path.is_file():
            data = load_yaml(path.read_bytes(), f"{uses.rstrip('/')}/{file}")
            break
    else:
        raise WorkflowError(f"{cell.where(step, 'uses')}: {uses} has no action.yml")
    if not isinstance(data, Located):
        raise WorkflowError(f"{uses}/action.yml must be a mapping")
    runs = data.get("runs")
    using = runs.get("using") if isinstance(runs, Located) else None
    if using != "composite":
        raise WorkflowError(f"{uses} is a {using or 'unknown'} action: only composite local"
                            " actions run offline")
    return data


_HANDLERS = {
    "actions/checkout": _checkout, "actions/setup-python": _setup_python,
    "actions/setup-node": _setup_node, "astral-sh/setup-uv": _setup_uv,
    "pnpm/action-setup": _setup_pnpm, "actions/cache": _cache,
    "actions/cache/restore": _cache, "actions/cache/save": _cache,
    "actions/upload-artifact": _upload, "actions/download-artifact": _download,
}

