"""Starting and stopping `ci-runner serve`.

Start: migrate the database, write each repo's secrets file, then start the intake
(group commits), the dispatcher and the status reporter before the first request is
taken. The dispatcher's first pass is the recovery: deliveries accepted but not yet
turned into runs (a server killed right after its 2xx) start now, and runs whose
driver died are driven again from their last committed step.

SIGTERM (or Ctrl-C): uvicorn stops listening and finishes the requests in flight;
deliveries already queued are committed; running steps get ``server.grace_s`` to
finish; drivers still going are interrupted and release their runs, which the next
start resumes. Nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from ci_runner import paths
from ci_runner.server.config import Config

log = logging.getLogger("ci_runner.server")


def _raise_descriptor_limit() -> None:
    """Every connection is a descriptor: many clients (slow ones included, until their
    deadline) must not leave /health and the hooks without one. Soft limit to hard."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):  # the kernel caps it: keep ours
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    log.info("open files: up to %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _set_limits(conn: Any, config: Config) -> None:
    """On a fleet's database, each repo's concurrency as its slot rows: every worker on
    every host claims within them (``store.claims``)."""
    from ci_runner.store.db import is_postgres

    if not is_postgres(conn):
        return
    from ci_runner.store.claims import set_limits
    from ci_runner.workspace.mirror import mirror_path

    set_limits(conn, {"local:" + str(mirror_path(r.forge, r.name).resolve()): r.concurrency
                      for r in config.repos})


def _log_database(db: object) -> None:
    from ci_runner.store.db import is_url

    if is_url(db):
        from ci_runner.store.pg import shown

        log.info("database: %s (shared: workers on other hosts may drive its runs)",
                 shown(str(db)))
    else:
        log.info("database: %s", db)


def serve(config: Config, *, host: str | None = None, port: int | None = None,
          workers: bool = True) -> None:
    """Serve until SIGTERM; ``workers=False``: intake and API only, the runs are driven
    by `ci-runner worker` processes (on this host or, with PostgreSQL, any)."""
    import uvicorn

    from ci_runner.server.app import create_app, http_protocol, request_timeout_s
    from ci_runner.server.dispatcher import (
        Dispatcher,
        driver_environment,
        fork_refusal,
        write_secrets_files,
    )
    from ci_runner.server.intake import Intake
    from ci_runner.server.janitor import Janitor
    from ci_runner.server.status import StatusReporter
    from ci_runner.store import connect

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    host = host or config.server.host
    port = config.server.port if port is None else port
    if config.server.db and not os.environ.get(paths.DB_ENV):
        os.environ[paths.DB_ENV] = config.server.db  # drivers started from here inherit it
    db_path = paths.database()
    conn = connect(db_path)  # create and migrate before anything else touches it
    try:
        _set_limits(conn, config)
    finally:
        conn.close()
    _log_database(db_path)
    _raise_descriptor_limit()
    from ci_runner.sandbox import probe

    mode = config.server.sandbox
    level = probe(mode)  # a mode this machine cannot give fails the start, in one line
    log.info("sandbox: %s (%s)", level.kind, level.reason)
    refuse_forks = fork_refusal()
    if refuse_forks is not None and any(r.fork_prs != "ignore" for r in config.repos):
        log.warning("pull requests from forks will be refused: %s", refuse_forks)
    reporter = StatusReporter(config, db_path)
    dispatcher = Dispatcher(
        config, driver_env=driver_environment(config, os.environ),
        secrets_files=write_secrets_files(config), sandbox=mode, refuse_forks=refuse_forks,
        on_change=reporter.wake, drive=workers,
    )
    if not workers:
        log.info("--no-workers: runs are driven by `ci-runner worker` processes")
    intake = Intake(config, db_path, on_accept=dispatcher.wake)
    janitor = Janitor(config.server.retention_s, db_path)
    app = create_app(config, intake, on_decision=dispatcher.wake)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=5, server_header=False,
        # h11 with a deadline on each request: slow clients are cut off (see app.py).
        http=http_protocol(request_timeout_s(default=config.server.request_timeout_s)),
    ))
    app.state.server = server  # the web view's live streams end as soon as it stops

    def stop(signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles the signal first (stops listening) and hands it on to us.
        log.info("%s: stopping", signal.Signals(signum).name)
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    intake.start()
    dispatcher.start()
    reporter.start()
    janitor.start()
    log.info("ci-runner serve: %d repos, listening on http://%s:%d (hooks at /hooks/<forge>)",
             len(config.repos), host, port)
    try:
        server.run()
    finally:
        intake.stop()
        log.info("draining: running steps get %gs", config.server.grace_s)
        dispatcher.stop(config.server.grace_s)
        reporter.stop()
        janitor.stop()
        log.info("stopped")
