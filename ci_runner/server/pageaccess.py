"""Who looks at the web view, what they see and what they may do, for both ways it is
served: by `ci-runner serve` to a team (``TeamAccess``: people sign in, and see and
decide what the API lets their token see and decide, through the same ``Access``) and
by `ci-runner ui` to the one person at this machine (``LocalAccess``: no sign-in,
every run, on loopback only).

The data is the API's: run records from ``ci_runner.cli.report`` (with the webhook
they came from), pending waits from ``pending_records``, deliveries from the store;
the actions are ``ci_runner.dispatch.control``'s, as the API and the CLI call them.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

from ci_runner import paths
from ci_runner.errors import InvalidState, RunNotFound
from ci_runner.server.sessions import COOKIE, Signer
from ci_runner.store import journal as j

if TYPE_CHECKING:
    from ci_runner.server.app import Access, Principal

ACTIONS = ("approve", "reject", "retry", "cancel")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Person:
    """Who is looking: a signed-in user, or the local user of `ci-runner ui`; ``csrf`` is
    the token their forms carry."""

    name: str
    csrf: str


class Refused(Exception):
    """An action or page that is not allowed or not possible: its HTTP status and the
    sentence that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PageAccess(Protocol):
    """What the pages ask of the way they are served."""

    signs_in: bool  # people sign in (a team's server) or not (`ci-runner ui`)
    webhooks: bool  # the server takes webhooks: its deliveries are worth a page

    def person(self, request: Request) -> Person | None:
        """Who sends ``request``; None: nobody signed in."""

    def tenants(self, conn: sqlite3.Connection, person: Person,
                repo: str | None) -> list[str] | None:
        """The tenants whose runs ``person`` lists (only ``repo``'s, when given);
        None: every run."""

    def repo_names(self, conn: sqlite3.Connection, person: Person) -> list[str]:
        """The repos ``person`` can filter the runs by."""

    def may_read(self, person: Person, run: sqlite3.Row) -> bool: ...

    def may_act(self, person: Person, run: sqlite3.Row) -> bool:
        """Whether ``person`` approves, rejects, re-runs and cancels ``run``."""

    def may_read_delivery(self, person: Person, delivery: sqlite3.Row) -> bool: ...

    def delivery_repos(self, person: Person) -> list[str] | None:
        """The repos whose deliveries ``person`` lists; None: every delivery."""

    def acted(self, run_id: str, action: str) -> None:
        """After an action: get the run driven on (it needs a driver after all but a
        cancel)."""


class TeamAccess:
    """`ci-runner serve`: the API's rules (``Access``) for the signed-in user."""

    signs_in = True
    webhooks = True

    def __init__(self, access: Access, *, on_change: Callable[[], None]) -> None:
        self.access = access
        self.config = access.config
        self.signer = Signer.for_home(paths.home(), access.config.server.user_tokens)
        self._on_change = on_change

    def person(self, request: Request) -> Person | None:
        session = self.signer.check(request.cookies.get(COOKIE))
        return None if session is None else Person(session.user, session.csrf)

    def _principal(self, person: Person) -> Principal:
        from ci_runner.server.app import Principal

        return Principal(person.name)

    def tenants(self, conn: sqlite3.Connection, person: Person,
                repo: str | None) -> list[str] | None:
        from ci_runner.server.app import _tenant

        who = self._principal(person)
        sees_all = self.access.sees_all(who)
        if repo is None and sees_all:
            return None
        repos = self.config.repos if sees_all else self.access.readable_repos(who)
        return [_tenant(r.forge, r.name) for r in repos
                if repo is None or r.name.lower() == repo.lower()]

    def repo_names(self, conn: sqlite3.Connection, person: Person) -> list[str]:
        return sorted({r.name for r in self.access.readable_repos(self._principal(person))},
                      key=str.lower)

    def may_read(self, person: Person, run: sqlite3.Row) -> bool:
        return self.access.may_read_run(self._principal(person), run)

    def may_act(self, person: Person, run: sqlite3.Row) -> bool:
        # The API's rule for decisions (``decide`` in app.py), for every action.
        return self.config.may_approve(person.name, self.access.repo_of(run))

    def may_read_delivery(self, person: Person, delivery: sqlite3.Row) -> bool:
        return self.access.may_read_delivery(self._principal(person), delivery)

    def delivery_repos(self, person: Person) -> list[str] | None:
        who = self._principal(person)
        if self.access.sees_all(who):
            return None
        return sorted({r.name for r in self.access.readable_repos(who)})

    def acted(self, run_id: str, action: str) -> None:
        self._on_change()  # the dispatcher drives what needs a driver


class LocalAccess:
    """`ci-runner ui`: the person at this machine sees every run of its database and may
    do what the CLI lets them do. Requests must name a loopback host (a web page
    elsewhere cannot reach the pages through DNS rebinding); forms still carry a CSRF
    token, made at start, so another site's page cannot post to them either."""

    signs_in = False
    webhooks = False

    def __init__(self, user: str | None = None) -> None:
        self.user = user or _login_name()
        self._csrf = secrets.token_urlsafe(24)

    def person(self, request: Request) -> Person | None:
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower() not in LOOPBACK_HOSTS:
            raise Refused(421, f"this page is served to 127.0.0.1 only, not to {host!r}")
        return Person(self.user, self._csrf)

    def tenants(self, conn: sqlite3.Connection, person: Person,
                repo: str | None) -> list[str] | None:
        if repo is None:
            return None
        return [str(r[0]) for r in conn.execute(
            "SELECT key FROM tenants WHERE lower(name) = lower(?)", (repo,))]

    def repo_names(self, conn: sqlite3.Connection, person: Person) -> list[str]:
        return sorted({str(r[0]) for r in conn.execute("SELECT name FROM tenants")},
                      key=str.lower)

    def may_read(self, person: Person, run: sqlite3.Row) -> bool:
        return True

    def may_act(self, person: Person, run: sqlite3.Row) -> bool:
        return True

    def may_read_delivery(self, person: Person, delivery: sqlite3.Row) -> bool:
        return True

    def delivery_repos(self, person: Person) -> list[str] | None:
        return None

    def acted(self, run_id: str, action: str) -> None:
        if action == "cancel":
            return
        # As `ci-runner approve --detach` does: a driver of its own, in its own session,
        # its output in the run's log folder.
        log_dir = paths.run_logs(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "resume.log").open("ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "ci_runner", "resume", run_id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=os.environ.copy(),
            )


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid-{os.getuid()}"


# -- the data --------------------------------------------------------------------------


def run_row(conn: sqlite3.Connection, access: PageAccess, person: Person,
            run_id: str) -> sqlite3.Row:
    """The run ``run_id`` (an id or a unique prefix) if ``person`` may see it; a run they
    may not see is answered as one that does not exist."""
    try:
        row = j.get_instance(conn, run_id)
    except RunNotFound as exc:
        raise Refused(404, exc.message) from exc
    if not access.may_read(person, row):
        raise Refused(404, f"no run {run_id!r}: `ci-runner runs` lists the runs")
    return row


def run_record(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    """The API's record of a run (``GET /api/runs/ID``)."""
    from ci_runner.cli.report import run_record as record_of
    from ci_runner.server.app import _with_webhook

    return _with_webhook(conn, record_of(conn, str(row["id"])))


def list_runs(conn: sqlite3.Connection, access: PageAccess, person: Person, *,
              repo: str | None, statuses: tuple[str, ...] | None, branch: str | None,
              limit: int) -> list[dict[str, Any]]:
    """The records ``person`` sees, newest first, as ``GET /api/runs`` lists them."""
    from ci_runner.cli.report import list_records
    from ci_runner.server.app import _with_webhook

    tenants = access.tenants(conn, person, repo)
    if tenants is None:
        records = list_records(conn, tenant=None, limit=limit, statuses=statuses,
                               branch=branch)
    else:
        records = [r for t in tenants for r in list_records(
            conn, tenant=t, limit=limit, statuses=statuses, branch=branch)]
        records.sort(key=lambda r: r["created_at"], reverse=True)
    return [_with_webhook(conn, r) for r in records[:limit]]


def pending(conn: sqlite3.Connection, access: PageAccess,
            person: Person) -> list[dict[str, Any]]:
    """The waits ``person`` sees (``GET /api/pending``), with whether they may decide."""
    from ci_runner.dispatch.control import pending_records
    from ci_runner.dispatch.runs import open_engine

    with open_engine() as engine:
        records = pending_records(engine)
    shown = []
    for record in records:
        try:
            row = j.get_instance(conn, str(record["run_id"]))
        except RunNotFound:  # pruned since
            continue
        if access.may_read(person, row):
            shown.append({**record, "may_act": access.may_act(person, row)})
    return shown


def deliveries(conn: sqlite3.Connection, access: PageAccess, person: Person, *,
               limit: int) -> list[dict[str, Any]]:
    """Recent webhook deliveries ``person`` sees, newest first, as ``GET /api/deliveries``
    shows them: those taken in for a run and those ignored or refused."""
    from ci_runner.server.app import _noted_delivery, _stored_delivery
    from ci_runner.store import deliveries as store

    names = access.delivery_repos(person)
    if names is None:
        stored = store.recent(conn, limit=limit)
        noted = store.recent_log(conn, repos=None, limit=limit)
    else:
        stored = [d for name in names for d in store.recent(conn, repo=name, limit=limit)]
        noted = store.recent_log(conn, repos=names, limit=limit)
    found = ([_stored_delivery(r) for r in stored if access.may_read_delivery(person, r)]
             + [_noted_delivery(r) for r in noted if access.may_read_delivery(person, r)])
    found.sort(key=lambda d: float(d["received_at"]), reverse=True)
    return found[:limit]


def act(conn: sqlite3.Connection, access: PageAccess, person: Person, run_id: str,
        action: str, *, comment: str | None = None, step: str | None = None) -> str:
    """Approve, reject, re-run (from ``step``) or cancel a run as ``person``; the
    sentence saying what was done. ``Refused`` (403) when they may not: a run they
    may not see is refused as one that does not exist, as the API does."""
    from ci_runner.dispatch import control
    from ci_runner.dispatch.runs import open_engine

    if action not in ACTIONS:
        raise Refused(404, f"no action {action!r} (actions: {', '.join(ACTIONS)})")
    not_theirs = (f"{person.name} approves no run {run_id!r}: only its repo's approvers"
                  " act on a run")
    try:
        row = j.get_instance(conn, run_id)
    except RunNotFound as exc:
        raise Refused(403, not_theirs) from exc
    if not (access.may_read(person, row) and access.may_act(person, row)):
        raise Refused(403, not_theirs)
    full = str(row["id"])
    comment = (comment or "").strip() or None
    try:
        with open_engine() as engine:
            if action in ("approve", "reject"):
                control.decide(engine, full, by=person.name, comment=comment,
                               reject=action == "reject")
                said = f"{action}d" if action == "approve" else "rejected"
                done = f"{said} run {full} as {person.name}"
            elif action == "retry":
                control.retry(engine, full, step or None)
                done = f"run {full} runs again" + (f" from step {step}" if step else "")
            else:
                control.cancel(engine, full)
                done = f"run {full} cancelled"
    except InvalidState as exc:
        raise Refused(409, exc.message) from exc
    except RunNotFound as exc:  # pruned meanwhile
        raise Refused(404, exc.message) from exc
    access.acted(full, action)
    return done
