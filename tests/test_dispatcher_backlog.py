"""A backlog of deliveries does not starve the runs already waiting for a slot: while the
dispatcher turns deliveries into runs (a fetch and a fork each), it keeps reaping
finished drivers and starting queued runs (issue 13's "on one machine too").

The store and the run start are stand-ins here: what is checked is the order in which
the dispatcher does its three jobs within one tick, which a real server only shows as
timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ci_runner.server import dispatcher as d
from ci_runner.server.config import Config, RepoConfig, ServerConfig
from ci_runner.store import deliveries


def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backlog: int,
         every_s: float) -> tuple[d.Dispatcher, list[str]]:
    monkeypatch.setenv("CI_RUNNER_HOME", str(tmp_path / "home"))
    repo = RepoConfig(name="o/r", forge="github", clone_url="https://example.invalid/o/r",
                      webhook_secret=b"s", supersede_branches=False,
                      supersede_pull_requests=False)
    config = Config(server=ServerConfig(), repos=(repo,), path=tmp_path / "c.yml")
    dispatcher = d.Dispatcher(config, driver_env={}, secrets_files={})
    dispatcher.DRIVE_EVERY_S = every_s
    done: list[str] = []
    rows = [{"id": i, "forge": "github", "repo": "o/r", "pr": None, "is_fork": 0}
            for i in range(backlog)]
    monkeypatch.setattr(deliveries, "waiting", lambda _conn: rows)

    def start_one(_engine: Any, _repo: Any, row: dict[str, Any]) -> bool:
        done.append(f"run {row['id']}")
        return True

    monkeypatch.setattr(dispatcher, "_start_one", start_one)
    monkeypatch.setattr(dispatcher, "_reap", lambda: done.append("reap"))
    monkeypatch.setattr(dispatcher, "_schedule", lambda _engine: done.append("schedule"))
    return dispatcher, done


class NoEngine:
    conn = None


def test_drivers_are_started_between_deliveries_of_a_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatcher, done = make(tmp_path, monkeypatch, backlog=5, every_s=0.0)
    dispatcher.tick(NoEngine())  # type: ignore[arg-type]
    # With no interval, every delivery is preceded by a pass over the drivers, and the
    # tick ends with one.
    assert done == [item for i in range(5) for item in ("reap", "schedule", f"run {i}")
                    ] + ["reap", "schedule"]


def test_a_quick_backlog_drives_once_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatcher, done = make(tmp_path, monkeypatch, backlog=3, every_s=3600.0)
    dispatcher.tick(NoEngine())  # type: ignore[arg-type]
    assert done == ["run 0", "run 1", "run 2", "reap", "schedule"]


def test_a_stopping_dispatcher_starts_no_driver_mid_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dispatcher, done = make(tmp_path, monkeypatch, backlog=3, every_s=0.0)
    dispatcher._stop.set()
    dispatcher.tick(NoEngine())  # type: ignore[arg-type]
    assert done == []
