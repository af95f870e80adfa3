"""For the webhook server's tests: the real `ci-runner serve` in a subprocess on a free
loopback port, forge fixtures rewritten to local commits and signed as each forge
signs them, and a fake forge API that records the commit statuses it is sent."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT
from tests.gitrepos import ISOLATED_GIT_ENV

# Real forge bodies, copied into the repo (tests/fixtures/webhooks/README.txt says whence).
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
LOOPBACK = "127.0.0.1"
TOKEN = "api-token-for-tests"
SECRETS = {"github": "gh-hook-secret", "gitea": "gitea-hook-secret",
           "forgejo": "forgejo-hook-secret", "gitlab": "gitlab-hook-token"}


def fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.is_file():
        raise AssertionError(f"webhook fixture {path} is missing from the repo")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- bodies as the forges send them ---------------------------------------------------


def github_push(sha: str, *, branch: str = "master") -> dict[str, Any]:
    body = fixture("github-push-new-branch.json")
    body["after"] = sha
    body["ref"] = f"refs/heads/{branch}"
    body["head_commit"]["id"] = sha
    return body


def github_pr(sha: str, *, name: str = "github-pull_request-opened.json", number: int = 2,
              fork: str | None = None) -> dict[str, Any]:
    body = fixture(name)
    body["number"] = body["pull_request"]["number"] = number
    body["pull_request"]["head"]["sha"] = sha
    if "after" in body:
        body["after"] = sha
    if fork is not None:  # the head branch lives in someone else's repository
        head = body["pull_request"]["head"]
        head["repo"] = copy.deepcopy(head["repo"])
        head["repo"]["full_name"] = fork
        head["repo"]["fork"] = True
        head["label"] = fork.split("/")[0] + ":" + head["ref"]
    return body


def gitea_push(sha: str) -> dict[str, Any]:
    body = fixture("gitea-push.json")
    body["after"] = sha
    body["commits"][0]["id"] = sha
    return body


def gitea_pr(sha: str) -> dict[str, Any]:
    body = fixture("gitea-pull_request-synchronized.json")
    body["pull_request"]["head"]["sha"] = sha
    return body


def gitlab_push(sha: str) -> dict[str, Any]:
    body = fixture("gitlab-push.json")
    body["after"] = body["checkout_sha"] = sha
    return body


def gitlab_mr(sha: str, *, iid: int = 7, action: str = "open") -> dict[str, Any]:
    """A Merge Request Hook body in GitLab's documented shape (the fixtures have none),
    about the project of gitlab-push.json."""
    project = fixture("gitlab-push.json")["project"]
    return {
        "object_kind": "merge_request", "event_type": "merge_request",
        "user": {"username": "sytses", "name": "Sid"}, "project": project,
        "object_attributes": {
            "iid": iid, "action": action, "state": "opened", "source_branch": "feature",
            "target_branch": "master", "source_project_id": project.get("id", 15),
            "target_project_id": project.get("id", 15), "title": "Add a feature",
            "last_commit": {"id": sha, "message": "feature"},
            **({"oldrev": "0" * 40} if action == "update" else {}),
        },
    }


def signed(forge: str, body: bytes, *, event: str, delivery: str | None = None,
           secret: str | None = None) -> dict[str, str]:
    """The headers ``forge`` sends with ``body``, signed with the test secret."""
    key = (secret or SECRETS[forge]).encode()
    delivery = delivery or str(uuid.uuid4())
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    base = {"Content-Type": "application/json"}
    if forge == "github":
        return {**base, "User-Agent": "GitHub-Hookshot/0c8fc6f", "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": "sha256=" + digest}
    if forge in ("gitea", "forgejo"):
        # Gitea also sends GitHub's and Gogs' headers; Forgejo also sends Gitea's.
        headers = {**base, "X-Gitea-Event": event, "X-Gitea-Delivery": delivery,
                   "X-Gitea-Signature": digest, "X-GitHub-Event": event,
                   "X-GitHub-Delivery": delivery, "X-Gogs-Event": event,
                   "X-Hub-Signature-256": "sha256=" + digest}
        if forge == "forgejo":
            headers |= {"X-Forgejo-Event": event, "X-Forgejo-Delivery": delivery,
                        "X-Forgejo-Signature": digest}
        return headers
    return {**base, "X-Gitlab-Event": event, "X-Gitlab-Token": key.decode(),
            "Idempotency-Key": delivery, "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Instance": "https://gitlab.example"}


# -- the server ---------------------------------------------------------------------------


def write_config(path: Path, repos: list[dict[str, Any]], **server: Any) -> Path:
    config = {"server": {"workers": 4, "api_token_env": "CI_RUNNER_API_TOKEN", "poll_s": 0.1,
                         "grace_s": 5, **server},
              "repos": repos}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def repo_entry(forge: str, name: str, clone_url: Path, **more: Any) -> dict[str, Any]:
    return {"name": name, "forge": forge, "clone_url": str(clone_url),
            "webhook_secret_env": f"HOOK_SECRET_{forge.upper()}",
            "branches": ["main", "master"], "concurrency": 2, **more}


class Server:
    """`ci-runner serve` as a real process; ``post`` sends a signed fixture to it."""

    def __init__(self, config: Path, home: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.home = home
        self.port = free_port()
        self.log = home.parent / f"serve-{self.port}.log"
        self.env = {**os.environ, **ISOLATED_GIT_ENV, "CI_RUNNER_HOME": str(home),
                    "PYTHONPATH": str(ROOT), "CI_RUNNER_API_TOKEN": TOKEN,
                    **{f"HOOK_SECRET_{f.upper()}": s for f, s in SECRETS.items()},
                    **(env or {})}
        if self.env.get("CI_RUNNER_DB"):  # a PostgreSQL database: rows() reads it there
            DATABASES[home] = self.env["CI_RUNNER_DB"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://{LOOPBACK}:{self.port}", timeout=30)

    def start(self, *extra: str, timeout: float = 30) -> Server:
        """Start `ci-runner serve` (with ``extra`` arguments) and wait for /health."""
        home_log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ci_runner", "serve", "--config", str(self.config),
             "--host", LOOPBACK, "--port", str(self.port), *extra],
            env=self.env, stdin=subprocess.DEVNULL, stdout=home_log, stderr=subprocess.STDOUT,
        )
        home_log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.output()}")
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=timeout, what="the server to answer /health")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def post(self, forge: str, body: dict[str, Any] | bytes, *, event: str,
             delivery: str | None = None, path: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {**signed(forge, raw, event=event, delivery=delivery), **(headers or {})}
        return self.http.post(path or f"/hooks/{forge}", content=raw, headers=sent)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the server did not stop:\n{self.output()}") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


# -- the database, read as it is ---------------------------------------------------------


# The servers' homes whose database is PostgreSQL (CI_RUNNER_DB), with its URL.
DATABASES: dict[Path, str] = {}


def rows(home: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    if home in DATABASES:
        from ci_runner.store import connect

        pg = connect(DATABASES[home])
        try:
            return list(pg.execute(sql, args).fetchall())
        finally:
            pg.close()
    db = home / "ci-runner.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def runs(home: Path) -> list[dict[str, Any]]:
    """Every run with its metadata, oldest first."""
    found = []
    for r in rows(home, "SELECT * FROM instances ORDER BY created_at"):
        meta = json.loads(r["payload"])["__dispatcherMetadata"]
        found.append({"id": r["id"], "status": r["status"], "meta": meta,
                      "params": json.loads(r["payload"])["params"]})
    return found


def settled(home: Path, count: int) -> Callable[[], list[dict[str, Any]] | None]:
    """A check: ``count`` runs exist and every one has ended."""
    def check() -> list[dict[str, Any]] | None:
        found = runs(home)
        ended = ("complete", "errored", "terminated")
        if len(found) == count and all(r["status"] in ended for r in found):
            return found
        return None

    return check


# -- a forge's API, for commit statuses -------------------------------------------------


class FakeForge:
    """Records every request; answers 201, or 500 to the first ``fail_first`` ones."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                outer.calls.append({"path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body})
                failing = len(outer.calls) <= outer.fail_first
                self.send_response(500 if failing else 201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeForge:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- several tenants ----------------------------------------------------------------------


def about_repo(body: dict[str, Any], name: str) -> dict[str, Any]:
    """A GitHub body (the fixtures are about Codertocat/Hello-World) about repository
    ``name`` instead; a pull request's head stays a fork's when it is one."""
    body["repository"]["full_name"] = name
    pull = body.get("pull_request")
    if pull is not None:
        pull["base"]["repo"]["full_name"] = name
        if not pull["head"]["repo"].get("fork"):
            pull["head"]["repo"]["full_name"] = name
    return body


def step_row(home: Path, run_id: str, name: str) -> dict[str, Any] | None:
    """A run's step as stored, ``result``, ``detail`` and ``error`` decoded."""
    found = rows(home, "SELECT * FROM steps WHERE instance_id = ? AND name = ?", run_id, name)
    if not found:
        return None
    step = dict(found[0])
    for key in ("result", "detail", "error"):
        step[key] = json.loads(step[key]) if step[key] else None
    return step
