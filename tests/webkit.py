"""For the web view's tests: a real `ci-runner serve` with people who sign in (alice
approves the repo, dave approves nothing), a pipeline whose runs stop at an approval,
one branch whose run holds a step open until the test lets it go, and sign-in over
HTTP as a browser does it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests import serverkit as kit
from tests.gitrepos import git, make_repo

TOKENS = {"alice": "alices-web-token", "dave": "daves-web-token"}
REPO = "Codertocat/Hello-World"

PIPELINE = """
from ci_runner import Pipeline

HOLD = {hold!r}

class CI(Pipeline):
    async def run(self, event, step):
        branch = event.payload.get("branch") or ""
        await step.run("build", ["sh", "-c",
                                 "printf '\\\\033[1;31mred\\\\033[0m <b>not bold</b>\\\\n'"],
                       artifacts=[".ci/pipeline.py"])
        if branch.startswith("live"):
            await step.run("stream", ["sh", "-c",
                "echo first line; while [ ! -e " + HOLD + "/" + branch + " ]; do sleep 0.05;"
                " done; echo second line"])
        await step.wait_for_approval("ship", message="ship it?")
        await step.run("deploy", ["sh", "-c", "echo deployed"])
"""


class WebServer:
    """The server, the source repo it fetches, and the folder whose files let a held
    step go on (``release``)."""

    def __init__(self, root: Path, *, status_api: str | None = None) -> None:
        self.hold = root / "hold"
        self.hold.mkdir(parents=True)
        source = make_repo(root / "source", {".ci/pipeline.py": PIPELINE.format(
            hold=str(self.hold))})
        self.sha = git(source, "rev-parse", "HEAD")
        self.home = root / "home"
        config = root / "ci-runner.yml"
        status = ({"status": {"api_url": status_api, "token_env": "STATUS_TOKEN"}}
                  if status_api else {})
        env = {f"{u.upper()}_WEB_TOKEN": t for u, t in TOKENS.items()}
        self.server = kit.Server(config, self.home, env={**env, "STATUS_TOKEN": "st"})
        self.url = f"http://{kit.LOOPBACK}:{self.server.port}"
        kit.write_config(config, [kit.repo_entry("github", REPO, source, approvers=["alice"],
                                                 branches=["*"], **status)],
                         users={u: f"{u.upper()}_WEB_TOKEN" for u in TOKENS},
                         sandbox="off", public_url=self.url)
        self.pushes = 0
        self._clients: list[httpx.Client] = []

    def start(self) -> WebServer:
        self.server.start()
        return self

    def push(self, branch: str = "main") -> str:
        """A push of ``branch``: the id of the run it starts."""
        self.pushes += 1
        delivery = f"web-{self.pushes}"
        answer = self.server.post("github", kit.github_push(self.sha, branch=branch),
                                  event="push", delivery=delivery)
        assert answer.status_code == 202, answer.text

        def started() -> str | None:
            return next((r["id"] for r in kit.runs(self.home)
                         if r["meta"].get("delivery") == delivery), None)

        return str(kit.wait_for(started, timeout=60, what=f"the run of {delivery}"))

    def release(self, branch: str) -> None:
        (self.hold / branch).write_text("go")

    def status(self, run_id: str) -> str:
        return str(kit.rows(self.home, "SELECT status FROM instances WHERE id = ?",
                            run_id)[0][0])

    def wait_status(self, run_id: str, *wanted: str, timeout: float = 60) -> str:
        return str(kit.wait_for(lambda: self.status(run_id) in wanted and self.status(run_id),
                                timeout=timeout, what=f"run {run_id} to be {wanted}"))

    def browser(self) -> httpx.Client:
        """An HTTP client that keeps cookies and sends this site's Origin, as a browser."""
        client = httpx.Client(base_url=self.url, timeout=30, follow_redirects=False,
                              headers={"Origin": self.url})
        self._clients.append(client)  # closed with the server
        return client

    def signed_in(self, user: str) -> httpx.Client:
        client = self.browser()
        answer = client.post("/sign-in", data={"token": TOKENS[user], "next": "/runs"})
        assert answer.status_code == 303, answer.text
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()
        self.server.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sse_events(client: httpx.Client, path: str, *, until: Any, limit: int = 200,
               timeout: float = 60) -> list[tuple[str, str]]:
    """The events of the stream at ``path`` until ``until(events)`` holds (read for at
    most ``timeout`` seconds, at most ``limit`` events)."""
    events: list[tuple[str, str]] = []
    name, data = "message", []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, timeout=httpx.Timeout(timeout, read=timeout)) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if time.monotonic() > deadline:  # keep-alive lines come every 15 s
                raise AssertionError(f"{path}: no such events in {timeout}s: {events}")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            elif not line and data:
                events.append((name, "\n".join(data)))
                name, data = "message", []
                if until(events) or len(events) >= limit:
                    break
    return events
