"""The server's retention: with ``server.retention`` set, `ci-runner prune` runs in the
background, a minute after the start and then every hour, so a box that runs CI for
months keeps only what is recent (and every run that is not over)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger("ci_runner.server")

FIRST_S = 60.0
EVERY_S = 3600.0


class Janitor:
    """A daemon thread pruning what ended more than ``retention_s`` ago."""

    def __init__(self, retention_s: float | None, db_path: Path | str, *,
                 first_s: float = FIRST_S, every_s: float = EVERY_S) -> None:
        self.retention_s = retention_s
        self._db_path = db_path
        self._first_s = first_s
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ci-runner-janitor",
                                        daemon=True)

    def start(self) -> None:
        if self.retention_s is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        wait = self._first_s
        while not self._stop.wait(wait):
            wait = self._every_s
            self.run_once()

    def run_once(self) -> None:
        from ci_runner.prune import prune
        from ci_runner.store import connect

        assert self.retention_s is not None
        try:
            conn = connect(self._db_path)
            try:
                done = prune(conn, older_than_s=self.retention_s)
            finally:
                conn.close()
        except Exception:  # never take the server down; try again next hour
            log.exception("pruning old runs failed")
            return
        if done.runs or done.deliveries or done.cache_entries or done.objects:
            log.info("pruned %d runs, %d deliveries, %d cache entries, %d artifact objects"
                     " (%.1f MB)", done.runs, done.deliveries, done.cache_entries, done.objects,
                     done.bytes_freed / 1e6)
        for problem in done.problems:
            log.warning("prune: %s", problem)
