"""The web view of runs: pages rendered on the server (Jinja2), made live by one
Server-Sent Events stream per page and a small script of our own (``static/live.js``),
with no build step.

    /runs                      every run the person may see, newest first; filters
    /runs/ID                   one run: its steps lighting up, the selected step's log
                               streaming, artifacts, and the actions the person may take
    /runs/ID/live              that page's stream (``/runs/live`` the list's, ...)
    /runs/ID/{approve,reject,retry,cancel}   POST, from the page's forms
    /approvals                 every wait for an approval the person may see
    /deliveries                recent webhook deliveries (for debugging a hook)
    /sign-in, /sign-out        a team's server only (see ``sessions``)

Every view renders data the API returns (``pageaccess``), with the API's permission
rules; a stream sends a region of its page again only when its HTML changed, and the
page swaps it in. Mounted into `ci-runner serve`'s app by ``create_app`` (people sign
in) and served alone by `ci-runner ui` (``local_app``: this machine's runs, no sign-in).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.responses import StreamingResponse

from ci_runner import paths
from ci_runner.cli.report import ENDED, step_label
from ci_runner.errors import RunNotFound
from ci_runner.server import live
from ci_runner.server.ansi import render as render_ansi
from ci_runner.server.pageaccess import (
    LocalAccess,
    PageAccess,
    Person,
    Refused,
    act,
    deliveries,
    list_runs,
    pending,
    run_record,
    run_row,
)
from ci_runner.server.sessions import (
    COOKIE,
    SESSION_TTL_S,
    local_path,
    same_origin,
    same_token,
    user_of_token,
)
from ci_runner.statuses import USER_RUN_STATUSES, engine_words, said
from ci_runner.store import journal as j

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PIPELINE_LOG = "pipeline"
LOG_SHOWN = 256 * 1024  # bytes of a log a page shows at first; the rest is a download
RUNS_SHOWN = 50
RUNS_MAX = 500
LIST_EVERY_S = 0.5  # a list page is rendered again at most this often
RUN_EVERY_S = 0.1
IDLE_WAIT_S = 0.5  # how soon a stream with nothing to follow notices the server stopping
SESSION_CHECK_S = 5.0  # how often a stream checks that its session still holds
FLASH = "ci_runner_flash"
FORM_MAX = 64 * 1024
ICONS = {"pending": "·", "queued": "·", "running": "▶", "complete": "✓", "failed": "✗",
         "retrying": "↻", "skipped": "⊘", "waiting": "◷", "sleeping": "☾", "cached": "≡",
         "cancelled": "⊗", "rejected": "✗", "interrupted": "■", "paused": "❙❙"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
                               " img-src 'self'; connect-src 'self'; form-action 'self';"
                               " frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def mount(app: FastAPI, access: PageAccess, *, public_url: str | None = None) -> None:
    """Add the pages, their streams and static files to ``app``."""
    feed = live.ChangeFeed(paths.database())
    app.state.pages_access = access
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]
    app.include_router(_router(access, feed, public_url=public_url))


def local_app(user: str | None = None) -> FastAPI:
    """The app of `ci-runner ui`: the pages alone, for this machine's runs."""
    from ci_runner.store import connect

    connect(paths.database()).close()  # created and migrated before a page reads it
    app = FastAPI(title="ci-runner ui", openapi_url=None, docs_url=None, redoc_url=None)
    mount(app, LocalAccess(user))
    app.add_api_route("/health", lambda: {"status": "ok"}, include_in_schema=False)
    return app


# -- rendering --------------------------------------------------------------------------


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(duration=duration, unquote=unquote, short=lambda sha: (sha or "")[:10],
                       iso=_iso, said=lambda r: said(r["status"],
                                                    waiting_for=r.get("waiting_for")))
    env.globals.update(icons=ICONS, static=_static_url, branch_of=branch_of,
                       step_kind=step_kind, quote=quote)
    return env


def fragment(name: str, **context: Any) -> str:
    return _env().get_template(name).render(**context)


@cache
def _static_url(name: str) -> str:
    """``/static/NAME?v=...``: a changed file gets a new URL, so no cache serves it stale."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={digest}"


def _page(request: Request, template: str, context: dict[str, Any], *,
          status: int = 200) -> HTMLResponse:
    access: PageAccess = request.app.state.pages_access
    flash = request.cookies.get(FLASH)
    body = fragment(template, access=access, flash=flash, now=time.time(),
                    path=request.url.path, **context)
    response = HTMLResponse(body, status_code=status, headers=_HEADERS)
    if flash:
        response.delete_cookie(FLASH, path="/")
    return response


def _refused(request: Request, exc: Refused) -> Response:
    if isinstance(exc, _SignIn):
        return RedirectResponse(exc.location, status_code=303, headers=_HEADERS)
    person = None
    if exc.status != 421:
        try:
            person = request.app.state.pages_access.person(request)
        except Refused:
            person = None
    return _page(request, "error.html", {"person": person, "status": exc.status,
                                         "message": exc.message}, status=exc.status)


def duration(seconds: float | None) -> str:
    """12.3s, 4m 05s, 2h 10m; '' for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def branch_of(record: dict[str, Any]) -> str:
    """What a run ran on, as a person says it: PR #7, main, tag v1.2, or a sha's ref."""
    hook = record.get("webhook") or {}
    if hook.get("pr") is not None:
        return f"PR #{hook['pr']}"
    if hook.get("branch"):
        return str(hook["branch"])
    ref = str(record.get("ref") or "")
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/")
    if ref.startswith("refs/tags/"):
        return "tag " + ref.removeprefix("refs/tags/")
    return ref


def step_kind(step: dict[str, Any]) -> str:
    """light (a command on this machine, with its sandbox), heavy (in a container),
    python (``step.do``), approval, event or sleep."""
    kind = step["kind"]
    if kind == "run":
        sandbox = step.get("sandbox")
        if sandbox == "docker":
            return "heavy · docker"
        return f"light · {sandbox}" if sandbox else "light"
    if kind == "event":
        return "approval" if step.get("approval") else "event"
    return str({"do": "python", "sleep": "sleep"}.get(kind, kind))


# -- the run page's data ----------------------------------------------------------------


def _timed(conn: sqlite3.Connection, record: dict[str, Any]) -> dict[str, Any]:
    """The record's steps with when each started and ended (for the waterfall and the
    running steps' clocks: the record has durations only), and which waits are gates."""
    from ci_runner.engine.policy import APPROVAL_EVENT

    rows = {step_label(r["name"], r["occurrence"]): r
            for r in j.steps_of(conn, record["run_id"], results=False)}
    for step in record["steps"]:
        row = rows.get(step["name"])
        step["started_at"] = row["started_at"] if row is not None else None
        step["finished_at"] = row["finished_at"] if row is not None else None
        detail = (j.loads(row["detail"]) if row is not None else None) or {}
        step["approval"] = detail.get("event_type") == APPROVAL_EVENT
        step["log"] = (paths.step_log(record["run_id"], row["name"], row["occurrence"])
                       if row is not None else None)
        step["shown"] = "cached" if step["cached"] and step["status"] == "complete" else (
            step["status"])
    return record


def _log_labels(record: dict[str, Any]) -> list[str]:
    labels = [s["name"] for s in record["steps"]]
    own = paths.pipeline_log(record["run_id"])
    if PIPELINE_LOG not in labels and _size(own):
        labels.append(PIPELINE_LOG)
    return labels


def _log_path(run_id: str, record: dict[str, Any], label: str) -> Path | None:
    """The log file of step ``label`` (a ``_timed`` record's), or of the pipeline's own
    output; None for a step the run does not have."""
    for step in record["steps"]:
        if step["name"] == label:
            log: Path | None = step.get("log")
            return log
    return paths.pipeline_log(run_id) if label == PIPELINE_LOG else None


def _active(record: dict[str, Any]) -> str | None:
    """The step a page shows when none was chosen: the one running last, else the
    first that failed, else the last."""
    steps = record["steps"]
    for step in reversed(steps):
        if step["status"] in ("running", "retrying"):
            return str(step["name"])
    for step in steps:
        if step["status"] in ("failed", "rejected"):
            return str(step["name"])
    if steps:
        return str(steps[-1]["name"])
    return PIPELINE_LOG if PIPELINE_LOG in _log_labels(record) else None


def _size(path: Path) -> int:
    return live.log_size(path) or 0  # a fleet's: in its database


def _waterfall(record: dict[str, Any], now: float) -> dict[str, Any] | None:
    """Bars (x and width in 0..1000) of the steps that ran, on one time axis."""
    timed = [s for s in record["steps"] if s.get("started_at")]
    if not timed:
        return None
    start = min(float(s["started_at"]) for s in timed)
    ends = [float(s["finished_at"] or now) for s in timed]
    span = max(max(ends) - start, 0.001)
    bars = []
    for step, end in zip(timed, ends, strict=True):
        x = (float(step["started_at"]) - start) / span * 1000
        bars.append({"name": step["name"], "status": step["shown"], "x": round(x, 1),
                     "width": round(max((end - float(step["started_at"])) / span * 1000, 3),
                                    1),
                     "took": duration(end - float(step["started_at"]))})
    return {"bars": bars, "span": duration(span)}


def _run_context(conn: sqlite3.Connection, access: PageAccess, person: Person,
                 row: sqlite3.Row, selected: str | None) -> dict[str, Any]:
    from ci_runner.store import memo

    record = _timed(conn, run_record(conn, row))
    labels = _log_labels(record)
    if selected not in labels:
        selected = _active(record)
    return {
        "person": person, "run": record, "selected": selected, "labels": labels,
        "may_act": access.may_act(person, row), "ended": record["status"] in ENDED,
        "artifacts": [dict(a) for a in memo.artifacts_of(conn, record["run_id"])],
        "waterfall": _waterfall(record, time.time()),
        "ticking": record["status"] == "running",  # its clock runs in the page
        "started_at": row["started_at"],
        "gate": next((w for w in record["waits"] or () if isinstance(w, dict)
                      and w.get("approval")), None),
        # Re-running starts, as offered first, at the step that failed.
        "rerun_from": next((s["name"] for s in record["steps"]
                            if s["status"] in ("failed", "rejected", "cancelled")), None),
    }


_RUNS_REGIONS = ("runs/_rows.html",)
_RUN_REGIONS = ("run/_head.html", "run/_actions.html", "run/_steps.html",
                "run/_waterfall.html", "run/_artifacts.html", "run/_log_head.html")


def _regions(context: dict[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    return {name: fragment(name, **context) for name in names}


def _initial_log(path: Path | None, *, ended: bool) -> tuple[str, int, int]:
    """The log's HTML as a page shows it first, the offset its stream goes on from, and
    how many earlier bytes it leaves out (those past ``LOG_SHOWN``)."""
    if path is None:
        return "", 0, 0
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - LOG_SHOWN)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", 0, 0
    if start:  # from the first whole line
        cut = data.find(b"\n") + 1
        start, data = start + cut, data[cut:]
    if not ended:  # the line being written is streamed, whole
        data = data[:data.rfind(b"\n") + 1]
    return render_ansi(data), start + len(data), start


# -- the routes ----------------------------------------------------------------------------


def _router(access: PageAccess, feed: live.ChangeFeed, *,
            public_url: str | None) -> APIRouter:
    from ci_runner.server.app import _Db

    db = _Db(paths.database())
    router = APIRouter(include_in_schema=False)

    def signed_in(request: Request) -> Person:
        person = access.person(request)
        if person is None:
            raise _SignIn(request)
        return person

    def check_post(request: Request, person: Person, csrf: str | None) -> None:
        if not same_origin(request.headers, public_url=public_url):
            raise Refused(403, "this form was sent from another site; open the page here"
                               " and send it again")
        if not same_token(person.csrf, csrf):
            raise Refused(403, "the form's session token is missing or stale: reload the"
                               " page and send it again")

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/runs", status_code=303)

    @router.get("/sign-in")
    def sign_in_form(request: Request, next: str | None = None) -> Response:
        if not access.signs_in or access.person(request) is not None:
            return RedirectResponse(local_path(next), status_code=303)
        return _page(request, "sign_in.html", {"person": None, "next": local_path(next),
                                               "error": None})

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await _form(request)
        target = local_path(form.get("next"))
        if not access.signs_in:
            return RedirectResponse(target, status_code=303)
        if not same_origin(request.headers, public_url=public_url):
            raise Refused(403, "the sign-in form was sent from another site")
        from ci_runner.server.pageaccess import TeamAccess

        assert isinstance(access, TeamAccess)
        token = form.get("token", "")
        user = user_of_token(access.config.server.user_tokens, token)
        if user is None:
            shared = _is_shared(access.config.server.api_token, token)
            error = ("that is the shared API token, which is for scripts: sign in with your"
                     " own token (server.users)" if shared else "that token is not valid")
            return _page(request, "sign_in.html", {"person": None, "next": target,
                                                   "error": error}, status=401)
        response = RedirectResponse(target, status_code=303, headers=_HEADERS)
        response.set_cookie(COOKIE, access.signer.issue(user), max_age=int(SESSION_TTL_S),
                            path="/", httponly=True, samesite="strict",
                            secure=_https(request, public_url))
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        form = await _form(request)
        person = signed_in(request)
        check_post(request, person, form.get("csrf"))
        response = RedirectResponse("/sign-in", status_code=303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/runs")
    def runs_page(request: Request, repo: str | None = None, status: str | None = None,
                  branch: str | None = None, limit: int = RUNS_SHOWN) -> Response:
        person = signed_in(request)
        filters = _filters(repo, status, branch, limit)
        conn = db.conn()
        context = _runs_context(conn, access, person, filters)
        regions = _regions(context, _RUNS_REGIONS)
        query = {k: v for k, v in filters.items() if v not in (None, "")}
        return _page(request, "runs.html", {
            **context, "regions": regions, "filters": filters, "statuses": USER_RUN_STATUSES,
            "repos": access.repo_names(conn, person),
            "live": "/runs/live?" + urlencode({**query, "shown": _digest(regions)})})

    @router.get("/runs/live")
    async def runs_live(request: Request, repo: str | None = None, status: str | None = None,
                        branch: str | None = None, limit: int = RUNS_SHOWN,
                        shown: str | None = None) -> Response:
        person = _streaming_person(access, request)
        filters = _filters(repo, status, branch, limit)

        def regions() -> dict[str, str]:
            return _regions(_runs_context(db.conn(), access, person, filters), _RUNS_REGIONS)

        return _stream(request, access, feed, regions, every_s=LIST_EVERY_S, shown=shown)

    @router.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str, step: str | None = None) -> Response:
        person = signed_in(request)
        conn = db.conn()
        row = run_row(conn, access, person, run_id)
        if row["id"] != run_id:  # a prefix: the page's address is the run's own
            suffix = f"?step={quote(step)}" if step else ""
            return RedirectResponse(f"/runs/{row['id']}{suffix}", status_code=303)
        context = _run_context(conn, access, person, row, step)
        regions = _regions(context, _RUN_REGIONS)
        record = context["run"]
        path = (_log_path(record["run_id"], record, context["selected"])
                if context["selected"] else None)
        log_html, offset, left_out = _initial_log(path, ended=context["ended"])
        query = urlencode({"step": context["selected"] or "", "offset": offset,
                           "follow": "0" if step else "1", "shown": _digest(regions)})
        return _page(request, "run.html", {
            **context, "regions": regions, "log_html": log_html, "left_out": left_out,
            "live": f"/runs/{record['run_id']}/live?{query}"})

    @router.get("/runs/{run_id}/live")
    async def run_live(request: Request, run_id: str, step: str | None = None,
                       offset: int = 0, follow: int = 0,
                       shown: str | None = None) -> Response:
        person = _streaming_person(access, request)
        row = await asyncio.to_thread(lambda: run_row(db.conn(), access, person, run_id))
        state = _RunStream(db, access, person, row, step or None, offset, bool(follow))
        return _stream(request, access, feed, state.regions, every_s=RUN_EVERY_S,
                       extra=state.extra, busy=state.busy, shown=shown)

    @router.get("/runs/{run_id}/log/{step:path}")
    def raw_log(request: Request, run_id: str, step: str) -> Response:
        person = signed_in(request)
        conn = db.conn()
        row = run_row(conn, access, person, run_id)
        record = _timed(conn, run_record(conn, row))
        path = _log_path(str(row["id"]), record, step)
        if path is None:
            raise Refused(404, f"run {row['id']} has no step {step!r}")
        if not path.exists():
            return Response("", media_type="text/plain; charset=utf-8", headers=_HEADERS)
        return FileResponse(path, media_type="text/plain; charset=utf-8", headers=_HEADERS)

    @router.get("/runs/{run_id}/artifacts/{path:path}")
    def artifact(request: Request, run_id: str, path: str) -> Response:
        from ci_runner.dispatch.artifacts import object_path
        from ci_runner.store import memo

        person = signed_in(request)
        conn = db.conn()
        row = run_row(conn, access, person, run_id)
        for item in memo.artifacts_of(conn, str(row["id"])):
            if item["path"] == path:
                return FileResponse(object_path(item["sha256"]),
                                    filename=path.rsplit("/", 1)[-1],
                                    media_type="application/octet-stream")
        raise Refused(404, f"run {row['id']} kept no artifact {path!r}")

    @router.post("/runs/{run_id}/{action}")
    async def run_action(request: Request, run_id: str, action: str) -> Response:
        form = await _form(request)
        person = signed_in(request)
        check_post(request, person, form.get("csrf"))
        done = await asyncio.to_thread(
            lambda: act(db.conn(), access, person, run_id, action,
                        comment=form.get("comment"), step=form.get("step")))
        back = local_path(form.get("back"), f"/runs/{run_id}")
        response = RedirectResponse(back, status_code=303, headers=_HEADERS)
        response.set_cookie(FLASH, quote(done), max_age=60, path="/", httponly=True,
                            samesite="strict")
        return response

    @router.get("/approvals")
    def approvals_page(request: Request) -> Response:
        person = signed_in(request)
        regions = _approvals_regions(db.conn(), access, person)
        return _page(request, "approvals.html", {
            "person": person, "regions": regions,
            "live": "/approvals/live?" + urlencode({"shown": _digest(regions)})})

    @router.get("/approvals/live")
    async def approvals_live(request: Request, shown: str | None = None) -> Response:
        person = _streaming_person(access, request)
        return _stream(request, access, feed,
                       lambda: _approvals_regions(db.conn(), access, person),
                       every_s=LIST_EVERY_S, shown=shown)

    @router.get("/deliveries")
    def deliveries_page(request: Request, limit: int = RUNS_SHOWN) -> Response:
        person = signed_in(request)
        limit = max(1, min(limit, RUNS_MAX))
        regions = _deliveries_regions(db.conn(), access, person, limit)
        return _page(request, "deliveries.html", {
            "person": person, "regions": regions,
            "live": "/deliveries/live?" + urlencode({"limit": limit,
                                                    "shown": _digest(regions)})})

    @router.get("/deliveries/live")
    async def deliveries_live(request: Request, limit: int = RUNS_SHOWN,
                              shown: str | None = None) -> Response:
        person = _streaming_person(access, request)
        limit = max(1, min(limit, RUNS_MAX))
        return _stream(request, access, feed,
                       lambda: _deliveries_regions(db.conn(), access, person, limit),
                       every_s=LIST_EVERY_S, shown=shown)

    return router


class _SignIn(Refused):
    """No session: the page answers with the way to sign in."""

    def __init__(self, request: Request) -> None:
        super().__init__(303, "sign in first")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.location = "/sign-in?" + urlencode({"next": target})


async def _form(request: Request) -> dict[str, str]:
    """A form's fields (``application/x-www-form-urlencoded``, as the pages send them);
    bodies past ``FORM_MAX`` bytes are refused unread."""
    from urllib.parse import parse_qsl

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise Refused(413, f"a form is at most {FORM_MAX} bytes")
    if kind != "application/x-www-form-urlencoded" and body:
        raise Refused(415, "send the page's form (application/x-www-form-urlencoded)")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, "the form could not be read") from exc


def _https(request: Request, public_url: str | None) -> bool:
    return request.url.scheme == "https" or bool(public_url and
                                                 public_url.startswith("https://"))


def _is_shared(api_token: str | None, token: str) -> bool:
    import hmac

    return bool(api_token) and hmac.compare_digest(token.strip().encode(),
                                                   (api_token or "").encode())


def _streaming_person(access: PageAccess, request: Request) -> Person:
    person = access.person(request)
    if person is None:
        raise Refused(401, "sign in first")
    return person


def _approvals_regions(conn: sqlite3.Connection, access: PageAccess,
                       person: Person) -> dict[str, str]:
    return _regions({"person": person, "waits": pending(conn, access, person)},
                    ("approvals/_list.html",))


def _deliveries_regions(conn: sqlite3.Connection, access: PageAccess, person: Person,
                        limit: int) -> dict[str, str]:
    return _regions({"deliveries": deliveries(conn, access, person, limit=limit)},
                    ("deliveries/_rows.html",))


def _filters(repo: str | None, status: str | None, branch: str | None,
             limit: int) -> dict[str, Any]:
    return {"repo": (repo or "").strip() or None, "status": (status or "").strip() or None,
            "branch": (branch or "").strip() or None,
            "limit": max(1, min(limit, RUNS_MAX))}


def _runs_context(conn: sqlite3.Connection, access: PageAccess, person: Person,
                  filters: dict[str, Any]) -> dict[str, Any]:
    statuses = None
    if filters["status"]:
        try:
            statuses = engine_words(filters["status"])
        except ValueError as exc:
            raise Refused(400, str(exc)) from exc
    records = list_runs(conn, access, person, repo=filters["repo"], statuses=statuses,
                        branch=filters["branch"], limit=filters["limit"])
    return {"person": person, "runs": records, "limit": filters["limit"]}


class _RunStream:
    """What a run page's stream keeps between two looks: the step shown (``follow``:
    the active one, whichever that is now) and where its log was read to."""

    def __init__(self, db: Any, access: PageAccess, person: Person, row: sqlite3.Row,
                 step: str | None, offset: int, follow: bool) -> None:
        self.db, self.access, self.person = db, access, person
        self.run_id = str(row["id"])
        self.selected = step
        self.follow = follow
        self.offset = offset  # where the page's log ended
        self.tail: live.LogTail | None = None
        self.ended = False
        self._reset = False
        self._last: list[tuple[str, str]] = []  # the end of a log no longer shown

    def regions(self) -> dict[str, str]:
        conn = self.db.conn()
        row = j.get_instance(conn, self.run_id)
        context = _run_context(conn, self.access, self.person, row,
                               None if self.follow else self.selected)
        if context["selected"] != self.selected:
            # Another step is active now (or the one shown was dropped by a re-run): what
            # the one shown wrote last is sent first, then the other's log from its start.
            self._last = self._drain()
            self.selected, self.tail, self.offset, self._reset = (
                context["selected"], None, 0, True)
        self.ended = context["ended"]
        if self.tail is None and self.selected is not None:
            path = _log_path(self.run_id, context["run"], self.selected)
            self.tail = live.LogTail(path, self.offset) if path is not None else None
        return _regions(context, _RUN_REGIONS)

    def busy(self) -> bool:
        return not self.ended or (self.tail is not None and self.tail.grown())

    def extra(self) -> list[tuple[str, str]]:
        """The events besides regions: a new start of the log shown (another step, or
        the same one run again), then the log's new lines."""
        if self.tail is not None and self.tail.shrunk():  # written anew by a re-run
            self.tail, self._reset = live.LogTail(self.tail.path, 0), True
        events, self._last = self._last, []
        if self._reset:
            events.append(("log-reset", json.dumps({"step": self.selected})))
            self._reset = False
        if self.tail is not None:
            # Once the run ended, its logs are complete: nothing is left open.
            events += self._read(self.tail, final=self.ended)
        return events

    def _drain(self) -> list[tuple[str, str]]:
        """The rest of the log shown, before another is: the step has moved on."""
        return [] if self.tail is None else self._read(self.tail, final=True)

    @staticmethod
    def _read(tail: live.LogTail, *, final: bool) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        while len(events) < 8 and (read := tail.read(final=final)):
            done, open_line = read
            events.append(("log", json.dumps({"html": done, "open": open_line})))
        return events


def _stream(request: Request, access: PageAccess, feed: live.ChangeFeed,
            regions: Callable[[], dict[str, str]], *, every_s: float,
            extra: Callable[[], list[tuple[str, str]]] | None = None,
            busy: Callable[[], bool] = lambda: False,
            shown: str | None = None) -> StreamingResponse:
    """A page's SSE stream: ``swap`` events ({id, html}) for each region whose HTML
    changed since it was last sent, and ``extra``'s events (looked for every
    ``live.POLL_S`` while ``busy()``), until the page goes away, its session ends or
    the server stops. ``shown``: the digest of the regions the page was rendered with
    (``_digest``); if the first look finds them the same, none is sent again."""

    async def events() -> AsyncIterator[bytes]:
        expected = shown
        sent: dict[str, str] = {}
        seen = -1
        rendered_at = checked_at = -math.inf
        sent_at = time.monotonic()
        yield live.preamble()
        async with feed.listening():
            while not _stopping(request):
                now = time.monotonic()
                if now - checked_at >= SESSION_CHECK_S:
                    checked_at = now
                    if _gone_person(access, request):
                        yield live.event("signed-out", "{}")
                        return
                out: list[bytes] = []
                if feed.version != seen and now - rendered_at >= every_s:
                    seen, rendered_at = feed.version, now
                    try:
                        fresh = await asyncio.to_thread(regions)
                    except (Refused, RunNotFound) as exc:  # pruned meanwhile, say
                        yield live.event("gone", json.dumps({"message": str(exc)}))
                        return
                    if expected is not None and _digest(fresh) == expected:
                        sent = dict(fresh)
                    expected = None
                    for name, html in fresh.items():
                        if sent.get(name) != html:
                            sent[name] = html
                            out.append(live.event("swap", json.dumps(
                                {"id": _region_id(name), "html": html})))
                if extra is not None:
                    out += [live.event(n, d) for n, d in await asyncio.to_thread(extra)]
                if not out and now - sent_at >= live.KEEPALIVE_S:
                    out.append(live.KEEPALIVE)
                if out:
                    sent_at = now
                    yield b"".join(out)
                if feed.version != seen:  # changed, but rendered a moment ago: soon
                    await asyncio.sleep(min(every_s, live.POLL_S if busy() else every_s))
                else:
                    await feed.wait(seen, live.POLL_S if busy() else IDLE_WAIT_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**_HEADERS, "X-Accel-Buffering": "no"})


def _digest(regions: dict[str, str]) -> str:
    whole = hashlib.sha256()
    for name in sorted(regions):
        whole.update(name.encode() + b"\0" + regions[name].encode() + b"\0")
    return whole.hexdigest()[:16]


def _gone_person(access: PageAccess, request: Request) -> bool:
    try:
        return access.person(request) is None
    except Refused:
        return True


def _region_id(template: str) -> str:
    """``run/_steps.html`` -> ``run-steps``: the id of the element a region replaces."""
    folder, _, name = template.rpartition("/")
    return f"{folder}-{name.removeprefix('_').removesuffix('.html')}".replace("_", "-")


def _stopping(request: Request) -> bool:
    """Whether the server is shutting down: streams end so it need not wait for them."""
    server = getattr(request.app.state, "server", None)
    return bool(getattr(server, "should_exit", False))
