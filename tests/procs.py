"""Looking at real processes from tests: alive (zombies are not), and ci-runner's own."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (nobody reaps orphans here) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def ci_processes(home: Path) -> list[str]:
    """Pids of ci-runner processes (CLI, drivers, pipeline children) using this home."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"CI_RUNNER_HOME={home}".encode() in env and b"ci_runner" in cmd:
            found.append(proc.name)
    return found
