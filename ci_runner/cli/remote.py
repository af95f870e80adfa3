"""The terminal against a team's `ci-runner serve`, as `gh` works against GitHub.

``ci-runner login URL`` checks a token with the server (``GET /api/me``) and keeps it
in a 0600 file (``servers.json`` under ``$XDG_CONFIG_HOME/ci-runner``, else
``~/.config/ci-runner``; ``$CI_RUNNER_CONFIG`` names another file). Then ``--server
URL`` (or ``CI_RUNNER_SERVER``) makes ``runs``, ``show``, ``logs``, ``pending``,
``approve``, ``reject``, ``retry`` and ``cancel`` act on the server's runs through its
API: this module fetches the records, the commands print them as they print local
ones. What a token may see and do is the server's rule, never the client's.

The token travels only in an ``Authorization: Bearer`` header, never in a URL, and
never over plain ``http://`` to a host other than this machine unless the login said
``--insecure``; redirects are refused rather than followed, so a token is never
replayed to another host. Only the standard library is used (``urllib``), and the CLI
imports this module only when a server is named, so local commands start as before.

Errors, each one line: the server unreachable, a token it refuses (401: log in
again), an action it forbids (403), a run it does not show (404, exit 2 as locally).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_runner.errors import CIRunnerError, InvalidState, RunNotFound, UsageError

SERVER_ENV = "CI_RUNNER_SERVER"
CONFIG_ENV = "CI_RUNNER_CONFIG"
TIMEOUT_S = 30.0
POLL_S = 0.2
LOOPBACK_NAMES = ("localhost",)
# A run's user words while the server still drives it on by itself.
MOVING = ("queued", "running")
# A step's user words while it may still write to its log.
UNFINISHED = ("pending", "queued", "running", "retrying", "waiting", "sleeping",
              "interrupted")
PIPELINE = "pipeline"  # the label of the pipeline's own output, when no step has it


class ServerError(CIRunnerError):
    """The server could not be reached, refused the token, or forbade the action."""

    exit_code = 1


# -- where the tokens are kept --------------------------------------------------------


def servers_file() -> Path:
    """The file of saved logins: ``$CI_RUNNER_CONFIG``, else ``servers.json`` in the
    user's config folder."""
    named = os.environ.get(CONFIG_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "ci-runner" / "servers.json"


def _saved() -> dict[str, dict[str, Any]]:
    path = servers_file()
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the saved logins in {path} ({exc}): fix or delete it,"
                         " then `ci-runner login URL`") from exc
    if mode & 0o077:
        # Tokens others can read are tokens others hold: not used until that is fixed.
        raise UsageError(f"{path} holds API tokens but others may read it (mode"
                         f" {mode & 0o777:o}): `chmod 600 {path}`")
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise UsageError(f"{path} is not a file of saved logins: delete it, then"
                         " `ci-runner login URL`")
    return {str(k): v for k, v in servers.items() if isinstance(v, dict)}


def _save(servers: dict[str, dict[str, Any]]) -> Path:
    """Write the logins readable by this user only, replacing the file whole."""
    path = servers_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"servers": servers}, f, indent=2, sort_keys=True)
            f.write("\n")
        tmp.chmod(0o600)  # an existing file of that name kept its own mode
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def server_url(raw: str) -> str:
    """``raw`` as the key its login is saved under: scheme and host lower-cased, no
    trailing slash. A URL that cannot be a server's is a usage error."""
    text = raw.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{raw!r} is not a server's URL: give one like https://ci.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"{raw!r}: give the server's URL alone, without a query, fragment or"
                         " credentials (the token is asked for, never put in a URL)")
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{raw!r} is not a server's URL: {exc}") from exc
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _loopback(url: str) -> bool:
    import ipaddress

    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_transport(url: str, *, insecure: bool) -> None:
    if url.startswith("http://") and not insecure and not _loopback(url):
        raise UsageError(f"refusing to send a token in clear text to {url}: use https://, or"
                         " `ci-runner login --insecure` on a network you trust")


# -- the client -------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Client:
    """The server's API with one token."""

    url: str
    token: str

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None) -> tuple[bytes, dict[str, str]]:
        """The answer's bytes and headers; every failure as one-line errors."""
        target = self.url + path
        wanted = {k: v for k, v in (query or {}).items() if v is not None}
        if wanted:
            target += "?" + urllib.parse.urlencode(wanted)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # The scheme is http or https: server_url() let no other through.
        req = urllib.request.Request(  # noqa: S310
            target, data=data, headers=headers, method=method)
        opener = urllib.request.build_opener(_NoRedirects)
        try:
            with opener.open(req, timeout=TIMEOUT_S) as answer:
                return answer.read(), {k.lower(): v for k, v in answer.headers.items()}
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the server at {self.url} ({reason}): is it up?"
                              ) from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        raw, _ = self.request(method, path, **kwargs)
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"{self.url}{path} did not answer JSON: is {self.url} a"
                              " ci-runner server?") from None

    def _refusal(self, exc: urllib.error.HTTPError) -> CIRunnerError:
        detail = _detail(exc)
        code = exc.code
        if code == 401:
            return ServerError(f"the server at {self.url} refused the token ({detail}): log in"
                               f" again: `ci-runner login {self.url}`")
        if code == 403:
            return ServerError(f"refused by the server: {detail}")
        if code == 404:
            return RunNotFound(detail)
        if code in (400, 422):
            return UsageError(detail)
        if code == 409:
            return InvalidState(detail)
        if 300 <= code < 400:
            return ServerError(f"the server at {self.url} redirects to"
                               f" {exc.headers.get('location')!r}: log in to that URL instead")
        return ServerError(f"the server at {self.url} answered {code}: {detail}")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"null")
    except (ValueError, OSError):
        body = None
    detail = body.get("detail", body.get("error")) if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}"
                           for d in detail if isinstance(d, dict))
    return str(detail) if detail else f"HTTP {exc.code} {exc.reason}"


def client(server: str) -> Client:
    """The saved login for ``server`` (``--server`` or ``CI_RUNNER_SERVER``)."""
    url = server_url(server)
    saved = _saved().get(url)
    if saved is None or not saved.get("token"):
        raise UsageError(f"not logged in to {url}: `ci-runner login {url}` first")
    _check_transport(url, insecure=bool(saved.get("insecure")))
    return Client(url, str(saved["token"]))


# -- login and logout -------------------------------------------------------------------


def read_token() -> str:
    """From a hidden prompt on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        import getpass

        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise UsageError("no token given: paste it at the prompt, or pipe it in"
                         " (`ci-runner login URL < token-file`)")
    return token


def login(server: str, token: str, *, insecure: bool) -> tuple[str, str | None, Path]:
    """Check ``token`` with the server, then keep it; (url, its user, the file)."""
    url = server_url(server)
    _check_transport(url, insecure=insecure)
    me = Client(url, token).json("GET", "/api/me")
    user = me.get("user") if isinstance(me, dict) else None
    servers = _saved()
    servers[url] = {"token": token, "user": user, "insecure": insecure}
    return url, user, _save(servers)


def logout(server: str | None) -> str:
    """Forget a server's token here; the one saved, when ``server`` is None."""
    servers = _saved()
    if server is None:
        if not servers:
            raise UsageError("not logged in to any server")
        if len(servers) > 1:
            raise UsageError(f"logged in to {len(servers)} servers ({', '.join(sorted(servers))}):"
                             " name one: `ci-runner logout URL`")
        url = next(iter(servers))
    else:
        url = server_url(server)
        if url not in servers:
            raise UsageError(f"not logged in to {url}")
    del servers[url]
    _save(servers)
    return url


# -- runs --------------------------------------------------------------------------------


def _run_path(run_id: str) -> str:
    return "/api/runs/" + urllib.parse.quote(run_id, safe="")


def list_runs(api: Client, *, repo: str | None, statuses: str | None, branch: str | None,
              limit: int) -> list[dict[str, Any]]:
    found = api.json("GET", "/api/runs", query={"repo": repo, "status": statuses,
                                                "branch": branch, "limit": min(limit, 500)})
    return list(found)


def latest(api: Client, repo: str | None) -> str:
    found = list_runs(api, repo=repo, statuses=None, branch=None, limit=1)
    if not found:
        where = f" of {repo}" if repo else ""
        raise RunNotFound(f"no run{where} on {api.url} that you may see")
    return str(found[0]["run_id"])


def record(api: Client, ref: str | None, repo: str | None = None) -> dict[str, Any]:
    """The run ``ref`` names (an id, a unique prefix, or ``latest``) as the server has it."""
    if ref is not None and not ref.strip():
        raise UsageError("the run is empty: give a run id, a unique prefix of one, or latest")
    run_id = latest(api, repo) if ref in (None, "latest") else str(ref)
    found: dict[str, Any] = api.json("GET", _run_path(run_id))
    return found


def pending(api: Client) -> list[dict[str, Any]]:
    return list(api.json("GET", "/api/pending"))


def awaiting_approval(api: Client) -> str:
    """The one run waiting for an approval that this token sees."""
    from ci_runner import runnames

    found = runnames.awaiting_approval(pending(api), f" on {api.url}")
    if found is not None:
        return found
    raise UsageError(f"no run on {api.url} that you may see waits for an approval")


def decide(api: Client, ref: str | None, *, comment: str | None,
           reject: bool) -> tuple[str, str]:
    """Approve or reject as the token's user: the run's id and the name recorded."""
    run_id = awaiting_approval(api) if ref is None else ref
    verb = "reject" if reject else "approve"
    answer = api.json("POST", f"{_run_path(run_id)}/{verb}", body={"comment": comment})
    return str(answer["run_id"]), str(answer["by"])


def retry(api: Client, ref: str | None, step: str | None) -> str:
    run_id = latest(api, None) if ref in (None, "latest") else str(ref)
    answer = api.json("POST", f"{_run_path(run_id)}/retry", body={"from": step})
    return str(answer["run_id"])


def cancel(api: Client, ref: str) -> str:
    run_id = latest(api, None) if ref == "latest" else ref
    answer = api.json("POST", f"{_run_path(run_id)}/cancel")
    return str(answer["run_id"])


# -- logs ------------------------------------------------------------------------------


def step_log(api: Client, run_id: str, label: str, offset: int = 0) -> tuple[bytes, bool]:
    """A step's log from byte ``offset`` (``pipeline``: the pipeline's own output), and
    whether the step wrote one at all."""
    raw, headers = api.request(
        "GET", f"{_run_path(run_id)}/logs/{urllib.parse.quote(label, safe='')}",
        query={"offset": offset or None})
    return raw, headers.get("x-log-exists", "1") != "0"


def stopped(found: dict[str, Any]) -> bool:
    """Whether the server has stopped driving the run (a record of it): it ended, or
    hibernated at a wait; an approval given but not taken yet means it is about to move."""
    taken = all(a.get("step") is not None for a in found.get("approvals") or [])
    return found["status"] not in MOVING and taken


def labels(found: dict[str, Any]) -> list[str]:
    return [str(s["name"]) for s in found.get("steps") or []]


# -- watching a run ----------------------------------------------------------------------


def watch(api: Client, run_id: str, observe: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Feed ``observe`` (a run view) the events a local driver would, from the server's
    records and logs, from now until the run stops; returns its last record. What the
    run did before is not told again."""
    found = record(api, run_id)
    seen = {str(s["name"]): str(s["status"]) for s in found.get("steps") or []}
    offsets = {label: len(step_log(api, run_id, label)[0]) for label in seen}
    read_whole = {label for label, status in seen.items() if status not in UNFINISHED}
    own = 0 if PIPELINE in seen else len(step_log(api, run_id, PIPELINE)[0])
    while True:
        found = record(api, run_id)
        done = stopped(found)  # before the logs are read: all it wrote is then in them
        for step in found.get("steps") or []:
            label, status = str(step["name"]), str(step["status"])
            changed = seen.get(label) != status
            if label not in seen and status in ("complete", "failed", "retrying"):
                # Begun and ended between two looks: said to have run, as locally.
                observe({**_step_event(step, found), "status": "running"})
            if changed and status == "running":  # its lines come after the line saying so
                observe(_step_event(step, found))
            if label not in read_whole:
                data = step_log(api, run_id, label, offsets.get(label, 0))[0]
                offsets[label] = offsets.get(label, 0) + len(data)
                if data:
                    name, occurrence = _name_of(label)
                    observe({"type": "output", "name": name, "occurrence": occurrence,
                             "text": data.decode("utf-8", errors="replace")})
                if status not in UNFINISHED:  # ended before this read: all of it is read
                    read_whole.add(label)
            if changed and status != "running":
                observe(_step_event(step, found))
            seen[label] = status
        if PIPELINE not in seen:
            data = step_log(api, run_id, PIPELINE, own)[0]
            own += len(data)
            if data:
                observe({"type": "pipeline_output",
                         "text": data.decode("utf-8", errors="replace")})
        flush = getattr(observe, "flush", None)
        if flush is not None:
            flush()  # what this look found is shown before the next wait
        if done:
            return found
        time.sleep(POLL_S)


def _name_of(label: str) -> tuple[str, int]:
    """``name#2`` -> (``name``, 2): a step's label back to what the view labels again."""
    name, sep, number = label.rpartition("#")
    if sep and number.isdigit() and int(number) > 1:
        return name, int(number)
    return label, 1


def _step_event(step: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A step of a record as the engine's observer event about it."""
    from ci_runner.engine.policy import APPROVAL_EVENT

    name, occurrence = _name_of(str(step["name"]))
    status = str(step["status"])
    event: dict[str, Any] = {
        "type": "step", "name": name, "occurrence": occurrence, "kind": step.get("kind", ""),
        "status": status, "attempt": step.get("attempts") or 1, "max_attempts": 1,
    }
    if status != "running":
        event["duration_s"] = step.get("duration_s")
    if step.get("exit_code") is not None:
        event["result"] = {"exit_code": step["exit_code"]}
    if step.get("error"):
        event["error"] = {"message": step["error"]}
    waits = step.get("waiting_for")
    if waits is not None:
        event["event_type"] = APPROVAL_EVENT if waits == "approval" else waits
    if status == "sleeping":
        until = [w.get("sleep_until") for w in run.get("waits") or []
                 if w.get("step") == step["name"] and w.get("sleep_until")]
        event["wake_at"] = until[0] if until else time.time()
    return event
