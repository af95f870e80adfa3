"""The web view over HTTP, against the real `ci-runner serve` on loopback: sign-in and
its cookie, pages that want a session, forms that other sites cannot send, the same
permissions as the API, live streams, and commit statuses that link to the run page."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import serverkit as kit
from tests.webkit import TOKENS, WebServer, csrf_of, sse_events


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("web")
    with kit.FakeForge() as forge:
        server = WebServer(root, status_api=forge.url)
        try:
            server.start()
            waiting = server.push()
            server.wait_status(waiting, "waiting_for_event")
            yield {"server": server, "waiting": waiting, "forge": forge}
        finally:
            server.close()


def test_every_page_wants_a_session(web: dict[str, Any]):
    server, run_id = web["server"], web["waiting"]
    client = server.browser()
    for path in ("/", "/runs", f"/runs/{run_id}?step=build", "/approvals", "/deliveries",
                 f"/runs/{run_id}/log/build", f"/runs/{run_id}/artifacts/.ci/pipeline.py"):
        answer = client.get(path)
        if path == "/":
            assert answer.headers["location"] == "/runs"
            continue
        assert answer.status_code == 303, path
        location = answer.headers["location"]
        assert location.startswith("/sign-in?next="), location
        assert httpx.URL(location).params["next"] == path
    assert client.get("/runs/live").status_code == 401
    assert client.get(f"/runs/{run_id}/live").status_code == 401
    refused = client.post(f"/runs/{run_id}/approve", data={"comment": "x"})
    assert refused.status_code == 303 and refused.headers["location"].startswith("/sign-in")
    assert server.status(run_id) == "waiting_for_event"


def test_sign_in_gives_a_strict_httponly_cookie_and_never_takes_a_token_in_the_url(
        web: dict[str, Any]):
    server = web["server"]
    client = server.browser()
    form = client.get("/sign-in?next=/approvals")
    assert form.status_code == 200 and 'type="password"' in form.text
    # A token in a URL signs nobody in.
    assert client.get(f"/runs?token={TOKENS['alice']}").status_code == 303
    assert client.get(f"/sign-in?token={TOKENS['alice']}").status_code == 200
    assert not client.cookies
    answer = client.post("/sign-in", data={"token": TOKENS["alice"], "next": "/approvals"})
    assert answer.status_code == 303 and answer.headers["location"] == "/approvals"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=" in cookie and TOKENS["alice"] not in cookie
    page = client.get("/approvals")
    assert page.status_code == 200 and "alice" in page.text
    # Another site's page cannot sign anyone in; next never leads off the site.
    away = server.browser()
    evil = away.post("/sign-in", data={"token": TOKENS["alice"]},
                     headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and not away.cookies
    off = away.post("/sign-in", data={"token": TOKENS["alice"], "next": "//evil.example/x"})
    assert off.headers["location"] == "/runs"


def test_a_wrong_or_shared_token_is_refused_in_words(web: dict[str, Any]):
    client = web["server"].browser()
    wrong = client.post("/sign-in", data={"token": "not-a-token"})
    assert wrong.status_code == 401 and "that token is not valid" in wrong.text
    shared = client.post("/sign-in", data={"token": kit.TOKEN})
    assert shared.status_code == 401 and "your own token" in shared.text
    assert not client.cookies


def test_signing_out_ends_the_session_in_this_browser(web: dict[str, Any]):
    server = web["server"]
    client = server.signed_in("alice")
    page = client.get("/runs")
    assert client.post("/sign-out", data={"csrf": csrf_of(page.text)}).status_code == 303
    assert client.get("/runs").status_code == 303


def test_the_run_page_shows_steps_log_and_artifacts(web: dict[str, Any]):
    server, run_id = web["server"], web["waiting"]
    client = server.signed_in("alice")
    page = client.get(f"/runs/{run_id}?step=build")
    assert page.status_code == 200
    html = page.text
    assert "content-security-policy" in page.headers
    assert "waiting for approval" in html and "ship it?" in html
    for step in ("build", "ship"):
        assert f'data-step="{step}"' in html
    assert "light · off" in html
    # Masked and escaped as stored, its colours as classes.
    assert '<span class="fg1 b">red</span> &lt;b&gt;not bold&lt;/b&gt;' in html
    assert 'class="approve"' in html and 'class="cancel"' in html
    raw = client.get(f"/runs/{run_id}/log/build")
    assert raw.status_code == 200 and "\x1b[1;31mred" in raw.text
    kept = client.get(f"/runs/{run_id}/artifacts/.ci/pipeline.py")
    assert kept.status_code == 200 and "wait_for_approval" in kept.text
    # A prefix of the id leads to the run's own address.
    short = client.get(f"/runs/{run_id[:-3]}")
    assert short.status_code == 303 and short.headers["location"] == f"/runs/{run_id}"
    listing = client.get("/runs")
    assert run_id in listing.text and "waiting for approval" in listing.text
    assert client.get("/runs?status=waiting").text.count('class="run-link"') >= 1
    assert run_id not in client.get("/runs?status=complete").text
    assert run_id not in client.get("/runs?branch=nope").text
    assert client.get("/runs?status=bogus").status_code == 400
    approvals = client.get("/approvals")
    assert run_id in approvals.text and "ship it?" in approvals.text


def test_forms_from_other_sites_or_without_the_token_are_refused(web: dict[str, Any]):
    server, run_id = web["server"], web["waiting"]
    client = server.signed_in("alice")
    csrf = csrf_of(client.get(f"/runs/{run_id}").text)
    evil = client.post(f"/runs/{run_id}/approve", data={"csrf": csrf},
                       headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.text
    for data in ({}, {"csrf": "forged"}):
        answer = client.post(f"/runs/{run_id}/cancel", data=data)
        assert answer.status_code == 403 and "session token" in answer.text
    as_json = client.post(f"/runs/{run_id}/cancel", json={"csrf": csrf})
    assert as_json.status_code == 415
    assert server.status(run_id) == "waiting_for_event"


def test_someone_who_approves_nothing_sees_no_run_and_is_refused_a_forged_decision(
        web: dict[str, Any]):
    server, run_id = web["server"], web["waiting"]
    dave = server.signed_in("dave")
    listing = dave.get("/runs")
    assert listing.status_code == 200 and run_id not in listing.text
    page = dave.get(f"/runs/{run_id}")
    assert page.status_code == 404 and "Approve" not in page.text
    assert run_id not in dave.get("/approvals").text
    assert dave.get(f"/runs/{run_id}/log/build").status_code == 404
    assert dave.get(f"/runs/{run_id}/live").status_code == 404
    csrf = csrf_of(listing.text)  # his own session's token, from a page he may open
    for action in ("approve", "reject", "cancel", "retry"):
        forged = dave.post(f"/runs/{run_id}/{action}", data={"csrf": csrf, "comment": "me"})
        assert forged.status_code == 403, action
        assert "dave approves no run" in forged.text
    assert server.status(run_id) == "waiting_for_event"
    record = server.server.api("GET", f"/api/runs/{run_id}").json()
    assert record["approvals"] == []


def test_a_decision_from_the_page_is_recorded_as_the_signed_in_user(web: dict[str, Any]):
    server = web["server"]
    run_id = server.push("decide")
    server.wait_status(run_id, "waiting_for_event")
    alice = server.signed_in("alice")
    page = alice.get(f"/runs/{run_id}")
    done = alice.post(f"/runs/{run_id}/approve",
                      data={"csrf": csrf_of(page.text), "comment": "ship it", "by": "mallory"})
    assert done.status_code == 303 and done.headers["location"] == f"/runs/{run_id}"
    assert "ci_runner_flash" in done.headers["set-cookie"]
    server.wait_status(run_id, "complete")
    record = server.server.api("GET", f"/api/runs/{run_id}").json()
    assert [(a["decision"], a["by"], a["comment"]) for a in record["approvals"]] == [
        ("approve", "alice", "ship it")]
    after = alice.get(f"/runs/{run_id}")
    assert "approved run" in after.text  # the flash, once
    assert "Approved by <strong>alice</strong>" in after.text
    assert "approved run" not in alice.get(f"/runs/{run_id}").text
    again = alice.post(f"/runs/{run_id}/approve", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 409 and "complete" in again.text


def test_the_run_stream_sends_what_changes(web: dict[str, Any]):
    server = web["server"]
    run_id = server.push("streamed")
    server.wait_status(run_id, "waiting_for_event")
    alice = server.signed_in("alice")
    page = alice.get(f"/runs/{run_id}")
    live_url = re.search(r'data-live="([^"]+)"', page.text)
    assert live_url is not None
    url = live_url.group(1).replace("&amp;", "&")
    csrf = csrf_of(page.text)

    def reject_soon() -> None:
        other = server.signed_in("alice")
        other.post(f"/runs/{run_id}/reject", data={"csrf": csrf_of(
            other.get(f"/runs/{run_id}").text), "comment": "not today"})

    rejecting = threading.Timer(1.0, reject_soon)
    rejecting.start()
    try:
        def ended(events: list[tuple[str, str]]) -> bool:
            swaps = _swapped(events)
            return ("rejected by" in swaps.get("run-steps", "")
                    and "Re-run" in swaps.get("run-actions", ""))

        events = sse_events(alice, url, until=ended)
    finally:
        rejecting.join()
    swaps = _swapped(events)
    assert "rejected by alice: not today" in swaps["run-steps"]
    assert 'class="approve"' not in swaps["run-actions"]  # nothing to decide any more
    assert "failed" in swaps["run-head"]
    assert csrf  # the page's forms kept their token


def _swapped(events: list[tuple[str, str]]) -> dict[str, str]:
    """Each region as the last swap of it left it."""
    return {json.loads(d)["id"]: json.loads(d)["html"] for n, d in events if n == "swap"}


def test_commit_statuses_link_to_the_run_page(web: dict[str, Any]):
    server, run_id, forge = web["server"], web["waiting"], web["forge"]
    kit.wait_for(lambda: forge.calls, what="a commit status")
    targets = {c["body"].get("target_url") for c in forge.calls}
    assert f"{server.url}/runs/{run_id}" in targets
    # A click from the pull request: the sign-in, then the run page.
    client = server.browser()
    first = client.get(f"/runs/{run_id}")
    assert first.status_code == 303
    signed = client.post("/sign-in", data={"token": TOKENS["alice"],
                                           "next": httpx.URL(first.headers["location"])
                                           .params["next"]})
    assert signed.headers["location"] == f"/runs/{run_id}"
    assert client.get(f"/runs/{run_id}").status_code == 200


def test_open_streams_do_not_hold_the_server_at_its_stop(tmp_path: Path):
    server = WebServer(tmp_path).start()
    try:
        alice = server.signed_in("alice")
        opened = threading.Event()
        ended: list[str] = []

        def listen() -> None:
            try:  # reads until the server ends the stream
                sse_events(alice, "/runs/live", until=lambda _e: opened.set(), timeout=60)
            except httpx.HTTPError as exc:
                ended.append(f"broken: {exc!r}")
            else:
                ended.append("ended")

        listener = threading.Thread(target=listen)
        listener.start()
        assert opened.wait(30)
        assert server.server.stop() == 0
        listener.join(timeout=60)
        assert ended == ["ended"]
        assert "graceful shutdown exceeded" not in server.server.output()
    finally:
        server.close()


def test_deliveries_show_what_became_of_each_hook_to_who_may_see_it(web: dict[str, Any]):
    server, run_id = web["server"], web["waiting"]
    forged = server.server.post("github", kit.github_push(server.sha), event="push",
                                headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert forged.status_code == 401
    alice = server.signed_in("alice")
    page = alice.get("/deliveries")
    assert page.status_code == 200
    assert f'href="/runs/{run_id}"' in page.text and "started" in page.text
    assert "refused" not in page.text  # an unsigned delivery names no repo of hers
    rows = re.findall(r'<tr class="delivery', page.text)
    assert len(rows) == len(server.server.api("GET", "/api/deliveries",
                                              params={"repo": "Codertocat/Hello-World"}
                                              ).json())
    dave = server.signed_in("dave")
    assert "No deliveries yet." in dave.get("/deliveries").text


def test_a_run_page_follows_the_active_step_until_one_is_chosen(web: dict[str, Any]):
    server = web["server"]
    run_id = server.push("live-follow")
    kit.wait_for(lambda: kit.step_row(server.home, run_id, "stream") is not None
                 and kit.step_row(server.home, run_id, "stream")["status"] == "running",
                 timeout=60, what="the held step to run")
    alice = server.signed_in("alice")
    page = alice.get(f"/runs/{run_id}")
    assert '<span class="log-step">stream</span>' in page.text
    url = re.search(r'data-live="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    assert "follow=1" in url
    threading.Timer(1.0, server.release, args=("live-follow",)).start()
    events = sse_events(alice, url, until=lambda evs: any(n == "log-reset" for n, _ in evs))
    logged = "".join(json.loads(d)["html"] + json.loads(d)["open"] for n, d in events
                     if n == "log")
    assert "second line" in logged  # the step's last lines, before the page moved on
    assert json.loads(events[-1][1]) == {"step": "ship"}
    pinned = alice.get(f"/runs/{run_id}?step=build")
    assert "follow=0" in pinned.text


def test_cancel_from_the_page_stops_a_running_step(web: dict[str, Any]):
    server = web["server"]
    run_id = server.push("live-cancel")
    kit.wait_for(lambda: (kit.step_row(server.home, run_id, "stream") or {}).get("status")
                 == "running", timeout=60, what="the held step to run")
    alice = server.signed_in("alice")
    page = alice.get(f"/runs/{run_id}")
    assert 'class="cancel"' in page.text and "Re-run" not in page.text
    done = alice.post(f"/runs/{run_id}/cancel", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 303
    server.wait_status(run_id, "terminated")
    assert kit.step_row(server.home, run_id, "stream")["status"] == "cancelled"
    held = str(server.hold / "live-cancel").encode()
    kit.wait_for(lambda: not _processes_with(held), what="the step's command to stop")
    after = alice.get(f"/runs/{run_id}")
    assert 'data-status="cancelled"' in after.text and "Re-run" in after.text


def _processes_with(text: bytes) -> list[int]:
    """Pids of the processes whose command line holds ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
