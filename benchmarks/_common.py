"""Shared helpers for the benchmarks: temp git repos, the real CLI, medians and the table.

The machine these run on is shared and noisy, so every benchmark measures its
two sides interleaved in one process and reports medians and ratios; absolute
numbers are printed only next to the ratio that gives them meaning.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
# Measure this checkout's code, in this process and in every CLI it starts: an editable
# install points at one checkout (often another worktree's), and its finder would
# otherwise serve that one's ci_runner.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def compile_package() -> None:
    """Write ci_runner's bytecode once, as `pip install .` does for users.

    Under PYTHONDONTWRITEBYTECODE=1 (set on this machine) an editable checkout is
    recompiled by every process it starts, which is no user's start-up time.
    """
    import compileall

    compileall.compile_dir(str(ROOT / "ci_runner"), quiet=1)


compile_package()
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def cli() -> list[str]:
    """The installed ``ci-runner`` script next to this interpreter (not the slow pyenv shim)."""
    script = Path(PY).parent / "ci-runner"
    if script.is_file():
        return [str(script)]
    found = shutil.which("ci-runner")
    return [found] if found else [PY, "-m", "ci_runner"]


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(root: Path, files: dict[str, str]) -> tuple[Path, str]:
    """A fresh git repo at ``root`` holding ``files``, committed once; returns (root, sha)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--no-gpg-sign", "-m", "bench")
    return root, git(root, "rev-parse", "HEAD")


def run_env(home: Path) -> dict[str, str]:
    """The environment for a CLI run whose state lives in ``home``."""
    return {**os.environ, "CI_RUNNER_HOME": str(home)}


def raw_commits(path: Path, n: int) -> float:
    """Seconds per durable SQLite commit of one small INSERT (WAL, synchronous=FULL)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        db.execute("COMMIT")
    per = (time.perf_counter() - t0) / n
    db.close()
    return per


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def spread(values: list[float], fmt: Callable[[float], str] | None = None) -> str:
    """``median [min-max]`` of ``values``: a verdict is never one figure."""
    show = fmt or (lambda v: f"{v:.2f}x")
    return f"{show(statistics.median(values))} [{show(min(values))}-{show(max(values))}]"


@dataclass(frozen=True)
class Row:
    figure: str
    ours: str
    peer: str
    ratio: str
    goal: str
    verdict: str  # PASS, MISS, or "info" for reference rows


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(title: str, rows: list[Row], notes: Sequence[str] = ()) -> None:
    header = Row("figure", "ours", "peer", "ratio", "goal", "result")
    cells = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in cells) for f in Row.__dataclass_fields__]
    print(f"\n== {title}")
    for i, r in enumerate(cells):
        values = [getattr(r, f) for f in Row.__dataclass_fields__]
        print("  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for note in notes:
        print(f"  * {note}")


# A pipeline that runs event.payload["n"] light steps of `true` in a row and returns
# how long its own loop took (no start-up inside): bench_light_step and bench_sandbox.
STEP_LOOP = '''\
import time

from ci_runner import Pipeline


class CI(Pipeline):
    async def run(self, event, step):
        n = int(event.payload.get("n", 0))
        t0 = time.perf_counter()
        for i in range(n):
            await step.run(f"s{i}", ["true"])
        return {"loop_s": time.perf_counter() - t0}
'''
