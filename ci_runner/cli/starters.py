"""`ci-runner init`: copy a starter pipeline from ``pipelines/`` into a repo's ``.ci/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ci_runner.errors import UsageError


def _starter_dir() -> Path:
    try:
        found = Path(str(resources.files("ci_runner.starters")))
        if found.is_dir():
            return found
    except ModuleNotFoundError:
        pass
    # Running from a source checkout: the starters are the top-level pipelines/.
    return Path(__file__).resolve().parents[2] / "pipelines"


def starters() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_starter_dir().glob("*.py")) if not p.stem.startswith("_")}


# The files that make a repo one of a starter's kind, in the order they are looked for.
KINDS = (
    ("python", ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt")),
    ("node", ("package.json",)),
)


def pick(repo: Path) -> str:
    """The starter for the repo's kind of project; ``minimal`` when it is none of them."""
    for name, markers in KINDS:
        if any((repo / marker).exists() for marker in markers):
            return name
    return "minimal"


def write_starter(repo: Path, template: str | None, *, force: bool) -> tuple[Path, str]:
    from ci_runner.workspace import open_repo

    root = open_repo(repo).root
    available = starters()
    name = template or pick(root)
    if name not in available:
        raise UsageError(f"no starter {name!r}; choose one of: {', '.join(available)}")
    target = root / ".ci" / "pipeline.py"
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(available[name].read_text(encoding="utf-8"), encoding="utf-8")
    return target, name
