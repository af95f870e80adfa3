"""`ci-runner logs`: print a run's step logs, optionally following them as they grow."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ci_runner import paths
from ci_runner.cli.report import step_label
from ci_runner.errors import UsageError
from ci_runner.store import journal as j

FOLLOW_POLL_S = 0.2


def print_logs(run_id: str, step: str | None, *, follow: bool) -> None:
    from ci_runner.dispatch.runs import open_engine

    with open_engine() as engine:
        row = j.get_instance(engine.conn, run_id)
        run_id = row["id"]
        files = _log_files(engine.conn, run_id, step)
        if not follow:
            for label, path in files:
                _dump(label, path, header=step is None and len(files) > 1)
            return
        offsets: dict[Path, int] = {}
        while True:
            for _label, path in _log_files(engine.conn, run_id, step):
                offsets[path] = _copy_new(path, offsets.get(path, 0))
            status = j.get_instance(engine.conn, run_id)["status"]
            if status in j.TERMINAL or status in j.HIBERNATING:
                for _label, path in _log_files(engine.conn, run_id, step):
                    offsets[path] = _copy_new(path, offsets.get(path, 0))
                return
            time.sleep(FOLLOW_POLL_S)


def _log_files(conn: object, run_id: str, step: str | None) -> list[tuple[str, Path]]:
    rows = j.steps_of(conn, run_id)  # type: ignore[arg-type]
    files = [(step_label(r["name"], r["occurrence"]),
              paths.step_log(run_id, r["name"], r["occurrence"])) for r in rows]
    if step is not None:
        files = [(label, path) for label, path in files if label == step]
        if not files:
            known = ", ".join(step_label(r["name"], r["occurrence"]) for r in rows) or "none"
            raise UsageError(f"run {run_id} has no step {step!r} (steps: {known})")
    return files


def _dump(label: str, path: Path, *, header: bool) -> None:
    if header:
        sys.stdout.write(f"==> {label} <==\n")
    if path.exists():
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    else:  # a silent step writes no log file (`show` has its exit code)
        sys.stdout.write("(no output)\n" if header else "(no output recorded for this step)\n")
    sys.stdout.flush()


def _copy_new(path: Path, offset: int) -> int:
    if not path.exists():
        return offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)
