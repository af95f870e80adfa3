"""The interpreters and tools installed on this machine, for the setup-* stand-ins.

Found once, when a workflow run starts (in the CLI, outside any sandbox), and kept
in the run's metadata: a resumed run picks the same interpreter, and the run's
sandbox mounts their folders read-only (``toolchain_dirs``). Nothing is downloaded:
a version that is not here makes its job cell skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _version_of(program: Path, args: list[str]) -> str | None:
    try:
        done = subprocess.run([str(program), *args], capture_output=True, text=True,
                              timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(done.stdout + done.stderr)
    return found.group(0) if done.returncode == 0 and found else None


def find_pythons(home: Path | None = None) -> list[dict[str, str]]:
    """CPython installs: pyenv's versions, uv's, and /usr(/local)/bin/python3.X;
    each ``{"version": "3.11.7", "bin": "/.../bin", "python": "/.../bin/python3"}``."""
    home = home or Path.home()
    found: dict[str, dict[str, str]] = {}
    roots = [home / ".pyenv" / "versions"]
    uv_dir = os.environ.get("UV_PYTHON_INSTALL_DIR")
    roots.append(Path(uv_dir) if uv_dir else home / ".local" / "share" / "uv" / "python")
    for root in roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name.removeprefix("cpython-")
            match = re.match(r"^(\d+\.\d+\.\d+)(?:[-.].*)?$", name)
            python = next((p for p in (entry / "bin" / "python3", entry / "bin" / "python")
                           if p.exists()), None)
            if match is None or python is None or "t" in name.split("-")[0][-1:]:
                continue
            found.setdefault(match.group(1), {"version": match.group(1),
                                              "bin": str(entry / "bin"),
                                              "python": str(python)})
    for folder in (Path("/usr/local/bin"), Path("/usr/bin")):
        for candidate in sorted(folder.glob("python3.[0-9]*")):
            if not re.fullmatch(r"python3\.\d+", candidate.name):
                continue
            version = _version_of(candidate, ["--version"])
            if version is None or version in found:
                continue
            found[version] = {"version": version, "bin": str(folder),
                              "python": str(candidate)}
    return sorted(found.values(), key=lambda e: _key(e["version"]), reverse=True)


def find_nodes(home: Path | None = None) -> list[dict[str, str]]:
    """Node installs: nvm's, and the one on PATH; each ``{version, bin, node}``."""
    home = home or Path.home()
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        candidates += sorted((home / ".nvm" / "versions" / "node").glob("v*/bin/node"))
    on_path = shutil.which("node")
    if on_path:
        candidates.append(Path(on_path))
    found: dict[str, dict[str, str]] = {}
    for node in candidates:
        version = _version_of(node, ["--version"])
        if version is not None and version not in found:
            found[version] = {"version": version, "bin": str(node.parent), "node": str(node)}
    return sorted(found.values(), key=lambda e: _key(e["version"]), reverse=True)


def find_programs(*names: str) -> dict[str, str]:
    """The folder of each program (uv, pnpm...) on PATH, else beside ci-runner's own
    interpreter (its venv or pipx folder, where `pip install uv` put it)."""
    import sys

    beside = str(Path(sys.executable).parent)
    found = {}
    for name in names:
        path = shutil.which(name) or shutil.which(name, path=beside)
        if not path:
            continue
        where = Path(path).parent
        if where.name == "shims":  # pyenv's: a script that picks a version by the cwd
            real = sorted(where.parent.glob(f"versions/*/bin/{name}"))
            if not real:
                continue
            where = real[-1].parent
        found[name] = str(where)
    return found


def discover() -> dict[str, Any]:
    """Everything the stand-ins may use, as stored in the run's metadata."""
    return {"python": find_pythons(), "node": find_nodes(),
            "programs": find_programs("uv", "pnpm", "npm", "yarn", "docker")}


def toolchain_dirs(tools: Mapping[str, Any]) -> list[str]:
    """The bin folders the run's sandbox must let its steps see."""
    dirs = [e["bin"] for kind in ("python", "node") for e in tools.get(kind, [])]
    dirs += list(tools.get("programs", {}).values())
    return list(dict.fromkeys(dirs))


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def pick(installed: list[dict[str, str]], wanted: str) -> dict[str, str] | None:
    """The newest install matching ``wanted``: ``3``, ``3.11``, ``3.11.7``, ``3.x``,
    ``3.11.x``, ``>=3.10`` (with ``<`` bounds), ``lts/*``-less node majors like ``20``,
    ``v20.1.0``. ``None`` when nothing here matches."""
    text = wanted.strip().removeprefix("v")
    if text in ("", "latest", "x", "*", "node", "lts/*", "stable"):
        return installed[0] if installed else None
    if re.match(r"^[<>=!~^]", text) or "," in text or " " in text:
        return next((e for e in installed if _in_range(e["version"], text)), None)
    parts = text.split(".")
    for entry in installed:
        have = entry["version"].split(".")
        if all(p in ("x", "X", "*") or (i < len(have) and have[i] == p)
               for i, p in enumerate(parts)):
            return entry
    return None


def _in_range(version: str, spec: str) -> bool:
    have = _key(version)
    for clause in re.split(r"[,\s]+", spec.strip()):
        match = re.match(r"^(>=|<=|==|!=|>|<|~=|\^|~)?\s*v?([\d.x*]+)$", clause)
        if match is None:
            return False
        op, number = match.group(1) or "==", match.group(2).rstrip(".x*")
        want = _key(number) if number else ()
        size = len(want)
        cut = have[:size]
        ok = {">=": have >= want, "<=": cut <= want, ">": cut > want, "<": have < want,
              "==": cut == want, "!=": cut != want,
              "^": cut[:1] == want[:1] and have >= want,
              "~": cut[:2] == want[:2] and have >= want,
              "~=": have[:max(size - 1, 1)] == want[:max(size - 1, 1)] and have >= want}[op]
        if not ok:
            return False
    return True
