"""The console in a real browser: Playwright drives Debian's chromium (``make install`` installs it) against a
console served by uvicorn, a running server and the test Redis."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from nba_service.console.app import ConsoleConfig, create_app
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from tests.conftest import atm_decline, profile, wait_until
from tests.console.helpers import auth_file
from tests.console.test_console import moments

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 30_000
"""How long a page may take to show what a test expects: the tests share two cores with the suite's servers, and
Playwright's 5 s default is too short under that load (no timing is asserted: a slower page still passes)."""
expect.set_options(timeout=WAIT_MS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def console_url(redis_client, published) -> Iterator[str]:
    config = ConsoleConfig(client=redis_client, auth=auth_file(), secret_key="test", moments=moments(200))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="the console to listen")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        yield page
        browser.close()


def sign_in(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/levers")
    page.fill("input[name=token]", f"{name}-token")
    page.click("button:has-text('Sign in')")
    expect(page.locator("#who")).to_contain_text(f"signed in as {name}")


def test_a_marketer_raises_a_weight_previews_publishes_and_the_server_follows(page, console_url, server, redis_client):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", credit_score="700")), timeout=5)
    assert server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == "1"
    sign_in(page, console_url, "alice")
    page.fill("#f-cat--lending", "5")
    page.click("#preview")
    expect(page.locator("#diff")).to_contain_text("settings.levers.categories.lending: 1 -> 5")
    expect(page.locator("#preview-result svg")).to_be_visible()
    page.fill("#message", "push credit this week")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#publish")
    expect(page.locator("#flash")).to_contain_text("Published policy version 2")
    version = PolicyStore(redis_client).load(2)
    assert (version.author, version.message) == ("alice", "push credit this week")
    wait_until(
        lambda: server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == "2",
        what="the running server to decide with version 2",
    )
    page.click("text=roll back to v1")
    page.click("#confirm-rollback")
    expect(page.locator("#flash")).to_contain_text("Policy version 1 is live again")
    assert PolicyStore(redis_client).live() == 1


def test_an_invalid_value_is_refused_at_the_field_and_a_viewer_has_no_publish_button(page, console_url, redis_client):
    sign_in(page, console_url, "alice")
    page.fill("#f-weight--micro_loan", "lots")
    page.click("#preview")
    expect(page.locator("#f-weight--micro_loan-error")).to_have_text("'lots' is not a number")
    page.click("button:has-text('sign out')")
    sign_in(page, console_url, "vera")
    expect(page.locator("#publish")).to_have_count(0)
    expect(page.locator("#f-cat--lending")).to_be_disabled()
    assert PolicyStore(redis_client).live() == 1
