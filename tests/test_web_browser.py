"""The web view in a real browser: Debian's chromium driven by Playwright, against the
real `ci-runner serve` on loopback. Sign in, watch a running run's steps turn done and
its log lines arrive without a reload, approve at the gate and see the run finish,
reject, re-run from a step; someone who approves nothing sees no Approve button and is
refused when they post anyway. A screenshot of the run page is written for a reviewer.

Playwright's own browser download cannot work offline: the tests use the chromium that
`scripts/browser-tools.sh` installs (CI_RUNNER_CHROMIUM names another). Without it they
skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import serverkit as kit
from tests.webkit import TOKENS, WebServer

CHROMIUM = os.environ.get("CI_RUNNER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 30_000


def _missing(what: str) -> None:
    message = f"{what}: run scripts/browser-tools.sh (installs chromium and Playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    if not Path(CHROMIUM).is_file():
        _missing(f"no chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    server = WebServer(tmp_path_factory.mktemp("browser"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, web: WebServer, user: str, path: str = "/runs") -> None:
    page.goto(web.url + path)
    assert "/sign-in?next=" in page.url  # no session: the page sends to the sign-in
    page.fill("#token", TOKENS[user])
    page.click("button[type=submit]")
    page.wait_for_url(web.url + path)


def step(page: Any, name: str) -> Any:
    return page.locator(f'li.step[data-step="{name}"]')


def test_sign_in_and_see_the_runs(page: Any, web: WebServer):
    from playwright.sync_api import expect

    run_id = web.push("listed")
    web.wait_status(run_id, "waiting_for_event")
    sign_in(page, web, "alice")
    row = page.locator(f'tr.run[data-run="{run_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge.approval")).to_have_text("waiting for approval")
    # The list is live: a new run appears without a reload.
    page.evaluate("window.notReloaded = true")
    second = web.push("listed-too")
    expect(page.locator(f'tr.run[data-run="{second}"]')).to_be_visible()
    assert page.evaluate("window.notReloaded") is True
    page.select_option("select[name=status]", "complete")
    page.click(".filters button[type=submit]")
    expect(page.locator(f'tr.run[data-run="{run_id}"]')).to_have_count(0)


def test_watch_a_run_live_then_approve_it(page: Any, web: WebServer,
                                          tmp_path_factory: pytest.TempPathFactory,
                                          capsys: pytest.CaptureFixture[str]):
    from playwright.sync_api import expect

    run_id = web.push("live-watch")
    kit.wait_for(lambda: _step_status(web, run_id, "stream") == "running", timeout=60,
                 what="the held step to run")
    sign_in(page, web, "alice", f"/runs/{run_id}?step=stream")
    page.evaluate("window.notReloaded = true")
    log = page.locator("#log")
    expect(log).to_contain_text("first line")
    expect(step(page, "stream")).to_have_attribute("data-status", "running")
    expect(step(page, "build")).to_have_attribute("data-status", "complete")
    web.release("live-watch")
    expect(log).to_contain_text("second line")
    expect(step(page, "stream")).to_have_attribute("data-status", "complete")
    expect(step(page, "ship")).to_have_attribute("data-status", "waiting")
    expect(page.locator("#run-status")).to_contain_text("waiting for approval")
    assert page.evaluate("window.notReloaded") is True  # all of it came by the stream

    page.fill("#comment", "looks good")
    page.click("button.approve")
    expect(page.locator(".flash")).to_contain_text("approved run")
    expect(page.locator("#run-status")).to_contain_text("complete")
    expect(step(page, "deploy")).to_have_attribute("data-status", "complete")
    expect(page.locator(".decision.approve")).to_contain_text("looks good")
    expect(page.locator("#run-waterfall .wf-row")).to_have_count(4)
    shot = tmp_path_factory.getbasetemp() / "screenshots" / "run-page.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nscreenshot of the run page: {shot}")


def test_reject_at_the_gate(page: Any, web: WebServer):
    from playwright.sync_api import expect

    run_id = web.push("to-reject")
    web.wait_status(run_id, "waiting_for_event")
    sign_in(page, web, "alice", f"/runs/{run_id}")
    page.fill("#comment", "not today")
    page.click("button.reject")
    expect(page.locator("#run-status")).to_contain_text("failed")
    expect(step(page, "ship")).to_have_attribute("data-status", "rejected")
    expect(step(page, "ship")).to_contain_text("rejected by alice: not today")
    expect(step(page, "deploy")).to_have_count(0)


def test_rerun_from_a_step(page: Any, web: WebServer):
    from playwright.sync_api import expect

    run_id = web.push("to-rerun")
    web.wait_status(run_id, "waiting_for_event")
    web.server.api("POST", f"/api/runs/{run_id}/approve", json={"by": "alice"})
    web.wait_status(run_id, "complete")
    before = _generation(web, run_id)
    sign_in(page, web, "alice", f"/runs/{run_id}")
    page.select_option("#rerun-step", "deploy")
    page.click("button.retry")
    expect(page.locator(".flash")).to_contain_text("from step deploy")
    expect(page.locator("#run-status")).to_contain_text("complete")
    expect(step(page, "deploy")).to_have_attribute("data-status", "complete")
    assert _generation(web, run_id) == before + 1
    # The steps before it kept their results: build ran once.
    assert kit.rows(web.home, "SELECT attempts FROM steps WHERE instance_id = ? AND"
                              " name = 'build'", run_id)[0][0] == 1


def test_someone_who_approves_nothing_gets_no_button_and_a_refusal(page: Any,
                                                                   web: WebServer):
    from playwright.sync_api import expect

    run_id = web.push("not-daves")
    web.wait_status(run_id, "waiting_for_event")
    sign_in(page, web, "dave")
    expect(page.locator("tr.empty")).to_be_visible()  # none of the runs is his to see
    answer = page.goto(f"{web.url}/runs/{run_id}")
    assert answer is not None and answer.status == 404
    expect(page.locator("button.approve")).to_have_count(0)
    # He posts the approval anyway, with his own session's form token.
    status = page.evaluate("""async ([runId]) => {
        const csrf = document.querySelector('input[name=csrf]').value;
        const body = new URLSearchParams({csrf: csrf, comment: 'me'});
        const answer = await fetch('/runs/' + runId + '/approve', {method: 'POST', body});
        return answer.status;
    }""", [run_id])
    assert status == 403
    assert web.status(run_id) == "waiting_for_event"


def _step_status(web: WebServer, run_id: str, name: str) -> str | None:
    found = kit.rows(web.home, "SELECT status FROM steps WHERE instance_id = ? AND name = ?",
                     run_id, name)
    return str(found[0][0]) if found else None


def _generation(web: WebServer, run_id: str) -> int:
    return int(kit.rows(web.home, "SELECT generation FROM instances WHERE id = ?",
                        run_id)[0][0])
