"""The HTTP face of `ci-runner serve`: one webhook endpoint per forge, ``/health``, and a
small API for people, scripts and `ci-runner --server` (runs, step logs, pending
approvals, approve/reject, retry and cancel, and whose token it is).

Only the hooks (signed per forge) and ``/health`` answer without a token; the API and
its OpenAPI schema want ``Authorization: Bearer TOKEN``, compared in constant time.
What a token may see and decide is settled in one place, ``Access`` (on
``app.state.access`` for anything else served by the app): the shared token sees every
run, a user's token the runs of the repos its user approves; a run it may not see is
answered exactly as one that does not exist, so ids do not tell which runs exist.
Request bodies of hooks are read in chunks and refused (413) as soon as they pass the
limit, so an oversized body is never held whole.

Slow clients are cut off: uvicorn times out only idle kept-alive connections, so a
client sending a byte a second would hold its connection for ever. ``http_protocol``
is uvicorn's h11 protocol with a deadline on every request (headers and body)
arriving whole, ``CI_RUNNER_REQUEST_TIMEOUT_S`` (default ``REQUEST_TIMEOUT_S``), met
with a 408 and a closed connection. A body still flowing at ``MIN_BODY_RATE`` earns
its own time, so a large delivery on a slow link is not taken for a slow client.

``/health`` is 200 only while deliveries can be stored: it commits a tiny write (at
most once a second) and says ``degraded``, with the reason, when that fails.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import h11
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ci_runner import paths
from ci_runner.errors import InvalidState, RunNotFound, UsageError
from ci_runner.server.config import FORGES, Config, RepoConfig
from ci_runner.server.forges import HookRejected
from ci_runner.server.intake import Intake
from ci_runner.store import journal as j

log = logging.getLogger("ci_runner.server")

LOG_POLL_S = 0.2
REQUEST_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_ENV = "CI_RUNNER_REQUEST_TIMEOUT_S"
MIN_BODY_RATE = 64 * 1024  # bytes a second that keep a request's deadline moving
HEALTH_PROBE_EVERY_S = 1.0


@dataclass(frozen=True)
class Principal:
    """Who called the API: a named user (a per-user token) or the shared token (None)."""

    user: str | None


class Access:
    """What a caller may see and decide: the rule is ``Config.may_read`` and
    ``Config.may_approve``; this applies it to runs (by their tenant, the mirror they
    were forked from) and to deliveries (by forge and repo)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._by_tenant = {_tenant(r.forge, r.name): r for r in config.repos}

    def repo_of(self, run: sqlite3.Row) -> RepoConfig | None:
        """The configured repo a run (an ``instances`` row) belongs to, if any."""
        return self._by_tenant.get(str(run["tenant"]))

    def sees_all(self, who: Principal) -> bool:
        """Whether nothing is hidden from ``who`` (the shared token, server approvers)."""
        return who.user is None or who.user in self.config.server.approvers

    def may_read_run(self, who: Principal, run: sqlite3.Row) -> bool:
        return self.config.may_read(who.user, self.repo_of(run))

    def may_read_delivery(self, who: Principal, delivery: sqlite3.Row) -> bool:
        repo = self.config.repo(str(delivery["forge"]), str(delivery["repo"]))
        return self.config.may_read(who.user, repo)

    def readable_repos(self, who: Principal) -> list[RepoConfig]:
        return [r for r in self.config.repos if self.config.may_read(who.user, r)]

    def run(self, conn: sqlite3.Connection, who: Principal, run_id: str) -> sqlite3.Row:
        """The run ``run_id`` (an id or a unique prefix) if ``who`` may see it; else 404,
        the same answer as for a run that does not exist."""
        try:
            row = j.get_instance(conn, run_id)
        except RunNotFound as exc:
            # A prefix is unique or ambiguous among the runs ``who`` may see: others'
            # runs neither block it nor show in the error.
            visible = [r for r in j.instances_with_prefix(conn, run_id, limit=1000)
                       if self.may_read_run(who, r)]
            if len(visible) == 1:
                return j.get_instance(conn, str(visible[0]["id"]))
            if visible:
                from ci_runner.runnames import ambiguous

                raise HTTPException(400, ambiguous(run_id, visible).message) from exc
            raise HTTPException(404, exc.message) from exc
        if not self.may_read_run(who, row):
            raise HTTPException(404, _no_run(run_id))
        return row


class DecisionBody(BaseModel):
    by: str | None = Field(default=None, description="Who decides; required with the shared"
                           " token, taken from the token when it is a user's.")
    comment: str | None = Field(default=None, description="Why; recorded on the run.")


class RetryBody(BaseModel):
    from_step: str | None = Field(default=None, alias="from",
                                  description="Keep the results of the steps before this one.")


class _Db:
    """One SQLite connection per worker thread (connections are not shared across
    threads while in use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            from ci_runner.store import connect

            conn = connect(self.path)
            self._local.conn = conn
        return conn


def create_app(config: Config, intake: Intake, *,
               on_decision: Callable[[], None] = lambda: None) -> FastAPI:
    app = FastAPI(
        title="ci-runner", version="1",
        description="Webhooks in, durable CI runs out: one tenant per repository.",
        openapi_url=None, docs_url=None, redoc_url=None,
    )
    db = _Db(paths.database())
    access = Access(config)
    app.state.config = config
    app.state.access = access

    @app.exception_handler(HookRejected)
    async def rejected(_request: Request, exc: HookRejected) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    for forge in FORGES:
        app.add_api_route(
            f"/hooks/{forge}", _hook_endpoint(forge, intake, config.server.max_body_bytes),
            methods=["POST"], tags=["hooks"], summary=f"Receive a {forge} webhook delivery",
            responses={202: {"description": "stored; a run will start"},
                       200: {"description": "authenticated, starts nothing (ping, ignored)"},
                       400: {"description": "malformed"}, 401: {"description": "bad signature"},
                       413: {"description": "body too large"}},
        )

    writes = _WriteProbe(paths.database(), intake)
    probing = asyncio.Lock()

    @app.get("/health", tags=["server"],
             responses={503: {"description": "stopping, or degraded: the database cannot be"
                                             " written (the reason says why)"}})
    async def health() -> JSONResponse:
        """200 while deliveries are taken and stored; 503 once the server is shutting
        down, or while the database cannot be written (``degraded``, with a reason)."""
        repos = len(config.repos)
        if not intake.accepting:
            return JSONResponse({"status": "stopping", "repos": repos}, status_code=503)
        async with probing:  # one probe at a time; those waiting get its answer
            if writes.stale():
                await asyncio.to_thread(writes.probe)
        if writes.reason is not None:
            return JSONResponse({"status": "degraded", "reason": writes.reason, "repos": repos},
                                status_code=503)
        return JSONResponse({"status": "ok", "repos": repos})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_who: Caller) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/me", tags=["server"])
    def me(who: Caller) -> dict[str, Any]:
        """Who the token is: a user's name, or null for the shared token (what
        `ci-runner login` checks before it keeps a token)."""
        return {"user": who.user}

    @app.get("/api/runs", tags=["runs"])
    def list_runs(
        who: Caller,
        repo: Annotated[str | None, Query(description="owner/name: that repo's runs")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        status: Annotated[str | None, Query(
            description="only runs in these statuses (comma-separated, as `ci-runner runs"
                        " --status`)")] = None,
        branch: Annotated[str | None, Query(description="only runs of this branch")] = None,
    ) -> list[dict[str, Any]]:
        """Recent runs, newest first (the JSON of `ci-runner runs --json`); a user's
        token gets those of the repos its user approves."""
        from ci_runner.cli.report import list_records

        statuses = _statuses(status)
        conn = db.conn()
        if repo is None and access.sees_all(who):
            return [_with_webhook(conn, r) for r in list_records(
                conn, tenant=None, limit=limit, statuses=statuses, branch=branch)]
        repos = config.repos if access.sees_all(who) else access.readable_repos(who)
        tenants = [_tenant(r.forge, r.name) for r in repos
                   if repo is None or r.name.lower() == repo.lower()]
        if not tenants and repo is not None:
            if access.sees_all(who):
                raise HTTPException(404, f"{repo} is not in the config")
            raise HTTPException(404, f"{repo} is not a repo that {who.user} approves")
        records = [rec for t in tenants for rec in list_records(
            conn, tenant=t, limit=limit, statuses=statuses, branch=branch)]
        records.sort(key=lambda r: r["created_at"], reverse=True)
        return [_with_webhook(conn, r) for r in records[:limit]]

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def show_run(run_id: str, who: Caller) -> dict[str, Any]:
        """One run with its steps and approvals (the JSON of `ci-runner show --json`)."""
        from ci_runner.cli.report import run_record

        conn = db.conn()
        full = str(access.run(conn, who, run_id)["id"])
        return _with_webhook(conn, _found(lambda: run_record(conn, full)))

    @app.get("/api/runs/{run_id}/logs/{step:path}", tags=["runs"],
             response_class=StreamingResponse,
             responses={200: {"content": {"text/plain": {}}}})
    def step_log(
        run_id: str, step: str, who: Caller,
        follow: Annotated[bool, Query(description="keep streaming until the run stops")]
        = False,
        offset: Annotated[int, Query(ge=0, description="start at this byte of the log")] = 0,
    ) -> StreamingResponse:
        """A step's output (secrets already masked), streamed; ``name#2`` for a repeat,
        ``pipeline`` for the pipeline's own output (unless a step has that name). The
        ``X-Log-Exists`` header says whether the step wrote a log at all."""
        conn = db.conn()
        full = str(access.run(conn, who, run_id)["id"])
        path = _step_log_path(conn, full, step)
        return StreamingResponse(_follow(db, full, path, follow, offset),
                                 media_type="text/plain; charset=utf-8",
                                 headers={"X-Log-Exists": "1" if _log_exists(conn, full, path)
                                          else "0"})

    @app.get("/api/runs/{run_id}/artifacts", tags=["runs"])
    def list_artifacts(run_id: str, who: Caller) -> list[dict[str, Any]]:
        """The files a run kept (`ci-runner artifacts RUN_ID --json`)."""
        from ci_runner.store import memo

        conn = db.conn()
        full = str(access.run(conn, who, run_id)["id"])
        return [dict(r) for r in memo.artifacts_of(conn, full)]

    @app.get("/api/runs/{run_id}/artifacts/{path:path}", tags=["runs"],
             response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_artifact(run_id: str, path: str, who: Caller) -> FileResponse:
        """One artifact's bytes, by the path it was kept under."""
        from ci_runner.dispatch.artifacts import object_path
        from ci_runner.store import memo

        conn = db.conn()
        full = str(access.run(conn, who, run_id)["id"])
        for item in memo.artifacts_of(conn, full):
            if item["path"] == path:
                return FileResponse(object_path(item["sha256"]),
                                    filename=path.rsplit("/", 1)[-1],
                                    media_type="application/octet-stream")
        raise HTTPException(404, f"run {full} kept no artifact {path!r}")

    @app.get("/api/pending", tags=["approvals"])
    def pending(who: Caller) -> list[dict[str, Any]]:
        """Runs waiting for an approval or an event (`ci-runner pending --json`); a
        user's token gets those of the repos its user approves."""
        from ci_runner.dispatch.control import pending_records
        from ci_runner.dispatch.runs import open_engine

        with open_engine() as engine:
            records = pending_records(engine)
        if access.sees_all(who):
            return records
        conn = db.conn()
        return [r for r in records if _still_readable(conn, access, who, str(r["run_id"]))]

    def decide(run_id: str, who: Principal, body: DecisionBody | None, *,
               reject: bool) -> JSONResponse:
        from ci_runner.dispatch.control import decide as record_decision

        body = body or DecisionBody()
        if who.user is not None and body.by not in (None, who.user):
            raise HTTPException(403, f"this token is {who.user}'s; it cannot decide as {body.by}")
        conn = db.conn()
        try:
            row = j.get_instance(conn, run_id)
        except RunNotFound as exc:
            if who.user is not None:  # the same answer as for a run it may not see
                raise HTTPException(403, _not_theirs(who.user, run_id)) from exc
            raise HTTPException(404, exc.message) from exc
        repo = access.repo_of(row)
        if who.user is not None and not config.may_approve(who.user, repo):
            raise HTTPException(403, _not_theirs(who.user, run_id))
        name = who.user or body.by
        if not name:
            raise HTTPException(400, 'say who decides: {"by": "NAME"} (or use your own token)')
        if not config.may_approve(name, repo):
            where = repo.name if repo is not None else "this run"
            raise HTTPException(403, f"{name} is not an approver of {where}")
        from ci_runner.dispatch.runs import open_engine

        try:
            with open_engine() as engine:
                full = record_decision(engine, str(row["id"]), by=name, comment=body.comment,
                                       reject=reject)
        except InvalidState as exc:
            raise HTTPException(409, exc.message) from exc
        on_decision()
        verb = "rejected" if reject else "approved"
        return JSONResponse({"run_id": full, "decision": verb, "by": name}, status_code=202)

    def act(run_id: str, who: Principal, action: str, step: str | None) -> JSONResponse:
        """Re-run or cancel, by the rule of decisions: a user's token acts on the runs
        of the repos its user approves; the shared token on any run."""
        from ci_runner.dispatch import control

        conn = db.conn()
        try:
            row = j.get_instance(conn, run_id)
        except RunNotFound as exc:
            if who.user is not None:  # the same answer as for a run it may not act on
                raise HTTPException(403, _not_theirs(who.user, run_id)) from exc
            raise HTTPException(404, exc.message) from exc
        if who.user is not None and not (access.may_read_run(who, row)
                                         and config.may_approve(who.user, access.repo_of(row))):
            raise HTTPException(403, _not_theirs(who.user, run_id))
        from ci_runner.dispatch.runs import open_engine

        try:
            with open_engine() as engine:
                if action == "retry":
                    full = control.retry(engine, str(row["id"]), step)
                else:
                    full = control.cancel(engine, str(row["id"]))
        except InvalidState as exc:
            raise HTTPException(409, exc.message) from exc
        on_decision()  # a re-run needs a driver
        return JSONResponse({"run_id": full, "action": action, "by": who.user},
                            status_code=202)

    @app.post("/api/runs/{run_id}/retry", tags=["runs"], status_code=202)
    def retry(run_id: str, who: Caller, body: RetryBody | None = None) -> JSONResponse:
        """Run a run again, keeping the results of the steps before ``from`` (none
        without it), as `ci-runner retry --from STEP` does; the server drives it."""
        step = (body.from_step if body is not None else None) or None
        return act(run_id, who, "retry", step)

    @app.post("/api/runs/{run_id}/cancel", tags=["runs"], status_code=202)
    def cancel(run_id: str, who: Caller) -> JSONResponse:
        """Cancel a run: its processes and containers stop and it is recorded cancelled."""
        return act(run_id, who, "cancel", None)

    @app.post("/api/runs/{run_id}/approve", tags=["approvals"], status_code=202)
    def approve(run_id: str, who: Caller, body: DecisionBody | None = None) -> JSONResponse:
        """Approve a run waiting at an approval (as one of its repo's approvers)."""
        return decide(run_id, who, body, reject=False)

    @app.post("/api/runs/{run_id}/reject", tags=["approvals"], status_code=202)
    def reject(run_id: str, who: Caller, body: DecisionBody | None = None) -> JSONResponse:
        """Reject a run waiting at an approval; it fails unless its pipeline catches it."""
        return decide(run_id, who, body, reject=True)

    @app.get("/api/deliveries", tags=["server"])
    def deliveries(
        who: Caller, repo: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[dict[str, Any]]:
        """Recent webhook deliveries, newest first, and what became of each: ``outcome``
        is accepted (its run will start), started (``run_id``), superseded, failed,
        ignored (authenticated, starts nothing) or refused (``http_status``), with a
        ``reason``. A refused delivery is kept from its headers only, never its body.
        A user's token gets those of the repos its user approves (so no unsigned ones)."""
        from ci_runner.store import deliveries as store

        conn = db.conn()
        if access.sees_all(who):
            stored = store.recent(conn, repo=repo, limit=limit)
            noted = store.recent_log(conn, repos=None if repo is None else [repo],
                                     limit=limit)
        else:
            names = sorted({r.name for r in access.readable_repos(who)
                            if repo in (None, r.name)})
            stored = [d for name in names for d in store.recent(conn, repo=name, limit=limit)]
            noted = store.recent_log(conn, repos=names, limit=limit)
            stored = [d for d in stored if access.may_read_delivery(who, d)]
            noted = [d for d in noted if access.may_read_delivery(who, d)]
        found = [_stored_delivery(r) for r in stored] + [_noted_delivery(r) for r in noted]
        found.sort(key=lambda d: float(d["received_at"]), reverse=True)
        return found[:limit]

    # The web view of runs (ci_runner/server/pages.py): sign-in, pages, live streams.
    from ci_runner.server import pages
    from ci_runner.server.pageaccess import TeamAccess

    pages.mount(app, TeamAccess(access, on_change=on_decision),
                public_url=config.server.public_url)
    return app


def _principal(request: Request) -> Principal:
    """Who is calling: the bearer token, compared in constant time with every token."""
    config: Config = request.app.state.config
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "send Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    given = token.strip().encode()
    found: Principal | None = None
    # Every token is compared, so the time taken does not tell which one matched.
    if config.server.api_token and hmac.compare_digest(given, config.server.api_token.encode()):
        found = Principal(None)
    for user_token, user in config.server.user_tokens.items():
        if hmac.compare_digest(given, user_token.encode()):
            found = Principal(user)
    if found is None:
        raise HTTPException(401, "the token is not valid", headers={"WWW-Authenticate": "Bearer"})
    return found


# At module level: FastAPI resolves the (postponed) annotations in the module's globals.
Caller = Annotated[Principal, Depends(_principal)]


def _hook_endpoint(forge: str, intake: Intake,
                   limit: int) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def receive(request: Request) -> JSONResponse:
        client = request.client.host if request.client is not None else None
        try:
            body = await _read_body(request, limit)
        except HookRejected as exc:  # too big, or not whole: refused before it is read
            intake.refused(forge, request.headers, exc, client=client)
            raise
        status, answer = await intake.receive(forge, request.headers, body, client=client)
        return JSONResponse(answer, status_code=status)

    receive.__name__ = f"hook_{forge}"
    return receive


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HookRejected(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise HookRejected(413, f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HookRejected(413, f"the body is over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:  # gone, or cut off by the request deadline
        raise HookRejected(408, "the body did not arrive whole") from exc
    return b"".join(chunks)


class _WriteProbe:
    """Whether the database takes a write now: what ``/health`` reports. Probed at
    most once every ``HEALTH_PROBE_EVERY_S``, and at once after a delivery could not
    be stored."""

    def __init__(self, path: Path | str, intake: Intake) -> None:
        self.path = path
        self.intake = intake
        self.reason: str | None = None  # why the last probe failed; None: it worked
        self._at = -math.inf
        self._conn: sqlite3.Connection | None = None

    def stale(self) -> bool:
        failed_at = self.intake.failed_at
        return (time.monotonic() - self._at >= HEALTH_PROBE_EVERY_S
                or (failed_at is not None and failed_at >= self._at))

    def probe(self) -> None:
        from ci_runner.store import deliveries as store

        try:
            if self._conn is None:
                self._conn = store.probe_connection(self.path)
            store.probe(self._conn)
            reason = None
        except Exception as exc:
            from ci_runner.store.db import storage_failure

            if not (storage_failure(exc) or isinstance(exc, sqlite3.Error | OSError)):
                raise
            if store.is_busy(exc):
                reason = (f"the database is locked: a write waited over"
                          f" {store.PROBE_BUSY_TIMEOUT_S:g}s for another writer, and"
                          " deliveries wait as long")
            else:
                reason = (f"the database cannot be written ({type(exc).__name__}: {exc});"
                          " check the disk's free space and the database file")
            if self._conn is not None:  # a fresh connection next time
                self._conn.close()
                self._conn = None
        if reason != self.reason:
            if reason is None:
                log.info("the database takes writes again: /health is ok")
            else:
                log.warning("/health is degraded: %s", reason)
        self.reason = reason
        self._at = time.monotonic()


def request_timeout_s(
    environ: Mapping[str, str] = os.environ, *, default: float = REQUEST_TIMEOUT_S,
) -> float:
    """Seconds a client has to send a whole request: ``CI_RUNNER_REQUEST_TIMEOUT_S``,
    else ``default`` (the config's ``server.request_timeout``)."""
    raw = (environ.get(REQUEST_TIMEOUT_ENV) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= 3600:
        raise UsageError(f"{REQUEST_TIMEOUT_ENV}={raw!r} is not a number of seconds between 0"
                         f" and 3600: give how long a client has to send a request, such as"
                         f" {REQUEST_TIMEOUT_S:g}")
    return value


def http_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's ``http=`` protocol: h11 with each request due whole in ``timeout_s``."""
    return type("DeadlineH11Protocol", (_DeadlineH11Protocol,),
                {"timeout_s": timeout_s, "cut_offs": _CutOffs(timeout_s)})


class _CutOffs:
    """Counts the connections cut off, logged in one line a minute at most: a flood of
    slow clients is worth knowing about, not worth a line each."""

    EVERY_S = 60.0

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.count = 0
        self._logged_at = -math.inf

    def note(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._logged_at >= self.EVERY_S:
            log.warning("cut off %d connection(s) that did not send a whole request within"
                        " %gs (slow or stalled clients)", self.count, self.timeout_s)
            self.count = 0
            self._logged_at = now


_TIMEOUT_BODY = json.dumps({"error": "the request did not arrive whole in time"}).encode()
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
              % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class _DeadlineH11Protocol(H11Protocol):
    """A request must arrive whole (headers and body) within ``timeout_s`` of its first
    byte, or of the connection opening; each byte of it buys ``1/MIN_BODY_RATE``
    seconds more. Between requests uvicorn's keep-alive timeout applies, and while the
    app works on a request nothing does."""

    timeout_s: float = REQUEST_TIMEOUT_S
    cut_offs: _CutOffs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._received = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._receiving():
            self._arm()  # the first byte of the next request on a kept-alive connection
        self._received += len(data)
        super().data_received(data)
        if not self._receiving():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _receiving(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _arm(self) -> None:
        self._disarm()
        self._started = self.loop.time()
        self._received = 0
        self._deadline = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._receiving():
            return
        left = self._started + self.timeout_s + self._received / MIN_BODY_RATE - self.loop.time()
        if left > 0.01:  # a body still coming at a working rate
            self._deadline = self.loop.call_later(left, self._expire)
            return
        self.cut_offs.note()
        answered = (self.conn.their_state is h11.SEND_BODY and self.cycle is not None
                    and self.cycle.response_started)
        if not answered:
            self.transport.write(_TIMED_OUT)
        self.transport.close()


def _found(fetch: Callable[[], Any]) -> Any:
    try:
        return fetch()
    except RunNotFound as exc:
        raise HTTPException(404, exc.message) from exc


def _no_run(run_id: str) -> str:
    # Word for word what the store says of a run that does not exist.
    return f"no run {run_id!r}: `ci-runner runs` lists the runs"


def _not_theirs(user: str, run_id: str) -> str:
    return f"{user} approves no run {run_id!r}: a user's token decides only their repos' runs"


def _still_readable(conn: sqlite3.Connection, access: Access, who: Principal,
                    run_id: str) -> bool:
    try:
        return access.may_read_run(who, j.get_instance(conn, run_id))
    except RunNotFound:  # pruned since it was listed
        return False


def _metadata(row: sqlite3.Row) -> dict[str, Any]:
    payload = json.loads(row["payload"])
    meta = payload.get("__dispatcherMetadata") if isinstance(payload, dict) else None
    return meta if isinstance(meta, dict) else {}


def _with_webhook(conn: sqlite3.Connection, record: dict[str, Any]) -> dict[str, Any]:
    """The run record plus, for a webhook run, where it came from."""
    if record.get("trigger") != "webhook":
        return record
    meta = _metadata(j.get_instance(conn, record["run_id"]))
    record["webhook"] = {k: meta.get(k) for k in ("forge", "delivery", "repo_name", "event",
                                                  "branch", "pr", "sender", "untrusted")}
    return record


# What a stored delivery's state says, for /api/deliveries.
_STATE_REASONS = {
    "accepted": "stored: its run starts as soon as the repo's concurrency allows",
    "started": None,
    "superseded": "a newer delivery of the same branch or pull request came before its"
                  " run started",
}


def _stored_delivery(row: sqlite3.Row) -> dict[str, Any]:
    """A row of ``deliveries`` (taken in for a run) as /api/deliveries shows it."""
    entry = {k: (j.loads(row[k]) if k == "error" else row[k]) for k in row.keys()}  # noqa: SIM118
    state = str(row["state"])
    error = entry.get("error")
    reason = (error.get("message") if isinstance(error, dict) and error.get("message")
              else _STATE_REASONS.get(state))
    return {**entry, "outcome": state, "reason": reason, "http_status": 202, "signed": True,
            "client": None}


def _noted_delivery(row: sqlite3.Row) -> dict[str, Any]:
    """A row of ``delivery_log`` (ignored or refused) in the same shape; ``id`` is None:
    it names a row of ``deliveries`` only."""
    entry = {k: row[k] for k in row.keys()}  # noqa: SIM118
    entry["id"] = None
    entry["signed"] = bool(row["signed"])
    return {"state": row["outcome"], "run_id": None, "error": None, "lane": None,
            "source_ref": None, "is_fork": None, **entry}


def _tenant(forge: str, name: str) -> str:
    from ci_runner.workspace.mirror import mirror_path

    return "local:" + str(mirror_path(forge, name).resolve())


def _step_log_path(conn: sqlite3.Connection, run_id: str, step: str) -> Path:
    from ci_runner.cli.report import step_label

    rows = j.steps_of(conn, run_id, results=False)
    for r in rows:
        if step_label(r["name"], r["occurrence"]) == step:
            return paths.step_log(run_id, r["name"], r["occurrence"])
    if step == "pipeline":  # as `ci-runner logs RUN pipeline`: a step of that name first
        return paths.pipeline_log(run_id)
    known = ", ".join(step_label(r["name"], r["occurrence"]) for r in rows) or "none yet"
    raise HTTPException(404, f"run {run_id} has no step {step!r} (steps: {known})")


def _statuses(words: str | None) -> tuple[str, ...] | None:
    """``failed,cancelled`` -> the engine's words for them; 400 for a word it is not."""
    if words is None:
        return None
    from ci_runner.statuses import engine_words_of

    try:
        return engine_words_of(words)
    except ValueError as exc:
        raise HTTPException(400, f"status: {exc}") from exc


async def _follow(db: _Db, run_id: str, path: Path, follow: bool,
                  offset: int = 0) -> AsyncIterator[bytes]:
    while True:
        # Read the status before the file: output written before the run stopped is
        # then always in the last read.
        status = await asyncio.to_thread(lambda: j.get_instance(db.conn(), run_id)["status"])
        while data := await asyncio.to_thread(_read_from, db, run_id, path, offset):
            offset += len(data)
            yield data
        if not follow or status in j.TERMINAL or status in j.HIBERNATING:
            return
        await asyncio.sleep(LOG_POLL_S)


def _log_exists(conn: sqlite3.Connection, run_id: str, path: Path) -> bool:
    from ci_runner.store.db import is_postgres

    if is_postgres(conn):  # a fleet: whichever host drove the step wrote its log here
        from ci_runner.store import steplogs

        return steplogs.size(conn, run_id, path.name) > 0
    return path.exists()


def _read_from(db: _Db, run_id: str, path: Path, offset: int) -> bytes:
    from ci_runner.store.db import is_postgres

    conn = db.conn()
    if is_postgres(conn):
        from ci_runner.store import steplogs

        return (steplogs.read(conn, run_id, path.name, offset) or b"")[:1 << 20]
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""
