"""Where ci-runner keeps its state: CI_RUNNER_HOME, else the XDG data dir."""

from __future__ import annotations

import os
import re
from hashlib import sha256
from pathlib import Path


def home() -> Path:
    explicit = os.environ.get("CI_RUNNER_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data) / "ci-runner"


def database() -> Path:
    return home() / "ci-runner.db"


def worktrees() -> Path:
    return home() / "worktrees"


def run_logs(run_id: str) -> Path:
    return home() / "logs" / run_id


def step_log(run_id: str, name: str, occurrence: int) -> Path:
    return run_logs(run_id) / step_log_name(name, occurrence)


def step_log_name(name: str, occurrence: int) -> str:
    """One log file per step; names that are not filename-safe get a hash suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    if safe != name:
        safe += "-" + sha256(name.encode()).hexdigest()[:8]
    if occurrence > 1:
        safe += f"#{occurrence}"
    return f"{safe}.log"
