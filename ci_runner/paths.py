"""Where ci-runner keeps its state: CI_RUNNER_HOME, else the XDG data dir."""

from __future__ import annotations

import os
import re
from pathlib import Path


def home() -> Path:
    explicit = os.environ.get("CI_RUNNER_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data) / "ci-runner"


DB_ENV = "CI_RUNNER_DB"


def database() -> Path | str:
    """The database every command opens: ``CI_RUNNER_DB`` (a ``postgresql://`` URL, which
    a fleet of hosts shares, or a SQLite file's path) else the SQLite file in the home."""
    chosen = os.environ.get(DB_ENV, "").strip()
    if not chosen:
        return home() / "ci-runner.db"
    if chosen.startswith(("postgresql://", "postgres://")):
        return chosen
    if "://" in chosen:
        from ci_runner.errors import UsageError

        scheme = chosen.split("://", 1)[0]
        raise UsageError(f"{DB_ENV}/--db: {scheme}:// is not a database ci-runner opens; give"
                         " a postgresql://USER@HOST/DB URL or a SQLite file's path")
    return Path(chosen).expanduser().absolute()


def worktrees() -> Path:
    return home() / "worktrees"


def run_logs(run_id: str) -> Path:
    return home() / "logs" / run_id


def step_log(run_id: str, name: str, occurrence: int) -> Path:
    return run_logs(run_id) / step_log_name(name, occurrence)


# The run's own files beside its steps' logs: the pipeline process's output (its prints,
# warnings and tracebacks, masked) and, for a server's run, its driver's.
PIPELINE_LOG = "pipeline.log"
_NOT_A_STEP = {PIPELINE_LOG, "driver.log"}


def pipeline_log(run_id: str) -> Path:
    """The pipeline process's own output (masked, capped like a step's log)."""
    return run_logs(run_id) / PIPELINE_LOG


def step_log_name(name: str, occurrence: int) -> str:
    """One log file per step; names that are not filename-safe, or that would be one of
    the run's own files (a step named ``pipeline``), get a hash suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    if safe != name or (occurrence == 1 and f"{safe}.log" in _NOT_A_STEP):
        from hashlib import sha256  # here: hashlib's import is a tenth of `--help`'s own

        safe += "-" + sha256(name.encode()).hexdigest()[:8]
    if occurrence > 1:
        safe += f"#{occurrence}"
    return f"{safe}.log"
