"""Commit statuses for webhook runs, reported back to the forge: pending (queued, running,
waiting for approval), then success, failure or error.

A background thread compares each run's state with the last state reported for it
(also after a final one: `ci-runner retry` makes a finished run live again) and posts
the difference (GitHub and Gitea/Forgejo ``/repos/{name}/statuses/{sha}``,
GitLab ``/projects/{id}/statuses/{sha}``) to the repo's configured API base URL. A
report that fails is tried again later with a growing delay, and given up after a
few minutes; it never touches the run.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ci_runner.server.config import Config, RepoConfig, StatusConfig
from ci_runner.statuses import phrase, run_word
from ci_runner.statuses import waiting_for as waits_on
from ci_runner.store import deliveries as store
from ci_runner.store import journal as j

log = logging.getLogger("ci_runner.server")

MAX_ATTEMPTS = 8
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 60.0
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Report:
    state: str  # pending | success | failure | error
    description: str
    final: bool

    @property
    def key(self) -> str:
        return f"{'final' if self.final else 'pending'}:{self.state}:{self.description}"


def report_for(status: str, waiting_for: str | None) -> Report:
    """What a run in ``status`` (the engine's word; ``waiting_for``: the journal's list
    of waits) shows on its commit, in the words `ci-runner show` uses."""
    word = run_word(status)
    if word == "complete":
        return Report("success", "ci-runner: passed", final=True)
    if word == "failed":
        return Report("failure", "ci-runner: failed", final=True)
    if word == "cancelled":
        return Report("error", "ci-runner: cancelled", final=True)
    if word == "interrupted":  # stopped, and driven again only if someone resumes it
        return Report("error", "ci-runner: interrupted (resume or cancel it)", final=False)
    text = phrase(status, waiting_for=waits_on(status, j.loads(waiting_for)))
    return Report("pending", f"ci-runner: {text}", final=False)


def request_for(forge: str, repo: str, sha: str, ref: str | None, status: StatusConfig,
                report: Report, target_url: str | None, *,
                pull_request: bool = False) -> urllib.request.Request:
    """The forge API call that sets ``report`` on commit ``sha``.

    A pull request's run reports as ``<context>/pr``: the same commit pushed to a branch
    and opened as a pull request has two runs, and neither should overwrite the other.
    """
    context = f"{status.context}/pr" if pull_request else status.context
    if forge == "gitlab":
        state = {"failure": "failed", "error": "canceled"}.get(report.state, report.state)
        url = f"{status.api_url}/projects/{quote(repo, safe='')}/statuses/{sha}"
        body: dict[str, Any] = {"state": state, "name": context,
                                "description": report.description}
        if ref and ref.startswith("refs/heads/"):
            body["ref"] = ref.removeprefix("refs/heads/")
        headers = {"PRIVATE-TOKEN": status.token}
    else:
        url = f"{status.api_url}/repos/{quote(repo, safe='/')}/statuses/{sha}"
        body = {"state": report.state, "context": context, "description": report.description}
        if forge == "github":
            headers = {"Authorization": f"Bearer {status.token}",
                       "Accept": "application/vnd.github+json"}
        else:
            headers = {"Authorization": f"token {status.token}"}
    if target_url:
        body["target_url"] = target_url
    # The config only takes http(s) API URLs, so no file: or custom scheme gets here.
    return urllib.request.Request(  # noqa: S310
        url, data=json.dumps(body).encode(), method="POST",
        headers={**headers, "Content-Type": "application/json", "User-Agent": "ci-runner"},
    )


class StatusReporter:
    def __init__(self, config: Config, db_path: Path | str, *, poll_s: float = 0.5) -> None:
        self.config = config
        self.db_path = db_path
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry: dict[int, tuple[int, float]] = {}  # delivery -> (attempts, next try)
        self._thread = threading.Thread(target=self._loop, name="ci-runner-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Report what changed one last time, then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=TIMEOUT_S + 5)

    def _loop(self) -> None:
        from ci_runner.store import connect

        conn = connect(self.db_path)
        try:
            while True:
                try:
                    self.tick(conn)
                except Exception:
                    log.exception("reporting commit statuses failed; trying again")
                if self._stop.is_set():
                    return
                self._wake.wait(self.poll_s)
                self._wake.clear()
        finally:
            conn.close()

    def tick(self, conn: sqlite3.Connection) -> None:
        for row in store.unreported(conn):
            repo = self.config.repo(row["forge"], row["repo"])
            if repo is None or repo.status is None:
                store.set_reported(conn, row["id"], "final:none")  # nothing to report to
                continue
            report = report_for(row["status"], row["waiting_for"])
            # A run redone since its final report is reported again, even with the same
            # outcome: the forge shows it ran (and when), not only how it ended.
            if report.key == row["status_reported"] and not row["redone"]:
                continue
            attempts, due = self._retry.get(row["id"], (0, 0.0))
            if due > time.monotonic():
                continue
            if self._post(repo, repo.status, row, report):
                self._retry.pop(row["id"], None)
                store.set_reported(conn, row["id"], report.key)
                continue
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                log.warning("gave up reporting %s to %s for %s after %d attempts",
                            report.state, repo.forge, row["sha"][:12], attempts)
                self._retry.pop(row["id"], None)
                store.set_reported(conn, row["id"], report.key)
                continue
            delay = min(FIRST_DELAY_S * 2 ** (attempts - 1), MAX_DELAY_S)
            self._retry[row["id"]] = (attempts, time.monotonic() + delay)

    def _post(self, repo: RepoConfig, status: StatusConfig, row: sqlite3.Row,
              report: Report) -> bool:
        public = self.config.server.public_url
        target = f"{public}/runs/{row['run_id']}" if public else None
        request = request_for(repo.forge, repo.name, row["sha"], row["ref"], status, report,
                              target, pull_request=row["pr"] is not None)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
                return 200 <= int(answer.status) < 300
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            if repo.forge == "gitlab" and exc.code == 400 and "transition" in detail:
                return True  # GitLab refuses to set the state the commit already has
            log.warning("%s answered %d to a commit status for %s", repo.forge, exc.code,
                        row["sha"][:12])
        except (OSError, ValueError) as exc:
            log.warning("could not reach %s for a commit status: %s", repo.forge, exc)
        return False
