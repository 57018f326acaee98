"""The console in a real browser: Playwright drives Debian's chromium (``make install`` installs it) against a
console served by uvicorn, a running server and the test Redis."""

from __future__ import annotations

import os
import pathlib
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from nba_service.console.app import ConsoleConfig, create_app
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.customer_import import import_customers
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.traffic import ScenarioMix
from tests.conftest import SAMPLE_POLICIES, atm_decline, profile, wait_until
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


def sign_in(page: Page, base: str, name: str, path: str = "/levers") -> None:
    page.goto(f"{base}{path}")
    page.fill("input[name=token]", f"{name}-token")
    page.click("button:has-text('Sign in')")
    expect(page.locator("#who")).to_contain_text(f"signed in as {name}")


@pytest.fixture
def shots(tmp_path: pathlib.Path) -> pathlib.Path:
    """Where the pages' screenshots go: the directory NBA_CONSOLE_SCREENSHOTS names (``docs/console`` for the
    images of docs/console.md), else the test's temporary directory."""
    target = pathlib.Path(os.environ.get("NBA_CONSOLE_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


def shoot(page: Page, shots: pathlib.Path, name: str, height: int = 960) -> None:
    """The top of the page, 1280 px wide and at most ``height`` high (less when the page is shorter), as
    ``shots/name.png``."""
    bottom = int(page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)"))
    clip = {"x": 0, "y": 0, "width": 1280, "height": min(bottom, height)}
    page.screenshot(path=shots / f"{name}.png", full_page=True, clip=clip, animations="disabled", caret="hide")


class Traffic:
    """Decide calls of the sample customers' moments over gRPC, in a thread, until stopped (at most ``limit``);
    with ``accept`` a share of the actions is reported accepted."""

    def __init__(self, stub: Any, limit: int = 20_000, accept: float = 0.0) -> None:
        self.stub = stub
        self.limit = limit
        self.accept = accept
        self.sent = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        mix = ScenarioMix([f"c{i:05d}" for i in range(1, 201)], seed=11)
        rng = random.Random(11)
        try:
            while self.sent < self.limit and not self._stop.is_set():
                answer = self.stub.Decide(mix.next().request, timeout=10)
                self.sent += 1
                if not answer.no_action and rng.random() < self.accept:
                    outcome = pb.OutcomeRequest(decision_id=answer.decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED)
                    self.stub.ReportOutcome(outcome, timeout=10)
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the traffic thread did not stop"
        assert not self.errors, self.errors


def decisions_shown(page: Page) -> int:
    return int(page.locator("#decisions-total").inner_text())


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


LENDING = (
    "micro_loan", "credit_line_raise", "overdraft_protection", "atm_open_account", "personal_loan",
    "agent_overdraft_followup",
)  # fmt: skip
"""The sample policies' offers of the category ``lending``."""


def preview_rows(page: Page) -> dict[str, tuple[float, float]]:
    """The preview chart's rows: label -> (live, candidate), read from the bars' tooltips."""
    titles = page.locator("#preview-result svg rect title").all_text_contents()
    rows: dict[str, list[float]] = {}
    for title in titles:
        label, _, value = title.rpartition(": ")
        rows.setdefault(label, []).append(float(value))
    assert rows and all(len(values) == 2 for values in rows.values()), rows
    return {label: (values[0], values[1]) for label, values in rows.items()}


def test_a_marketer_watches_live_decisions_raises_a_weight_previews_publishes_and_the_server_follows(
    page, console_url, server_with_metrics, redis_client, shots
):
    stub = server_with_metrics.stub
    import_customers(redis_client, SAMPLE_POLICIES / "customers.jsonl", progress=False)
    for customer in ("c1", "c2", "c3"):
        stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(customer, credit_score="700")), timeout=5)
    before = stub.Decide(atm_decline("c1"), timeout=5)
    offer = before.action.offer_id
    assert before.policy_version == "1" and offer in LENDING, before

    # the overview shows the decisions arrive while traffic runs
    sign_in(page, console_url, "alice", path="/")
    total = page.locator("#decisions-total")
    expect(total).to_have_text("1")
    with Traffic(stub):
        expect(total).not_to_have_text("1")
        first = decisions_shown(page)
        expect(total).not_to_have_text(str(first))
        assert decisions_shown(page) > first > 1
        expect(page.locator("#decisions-per-minute")).not_to_have_text("-")

    # a category's weight raised: the diff, and a preview whose candidate bars differ from the live ones
    page.click("header nav >> text=Levers")
    page.fill("#f-cat--lending", "5")
    page.click("#preview")
    expect(page.locator("#diff")).to_contain_text("settings.levers.categories.lending: 1 -> 5")
    expect(page.locator("#preview-result svg")).to_be_visible()
    expect(page.locator("#changed")).not_to_have_text("0")
    rows = preview_rows(page)
    gained = [label for label, (live, candidate) in rows.items() if candidate > live and label != "(no action)"]
    assert gained and all(label.split(" on ")[0] in LENDING for label in gained), rows
    shoot(page, shots, "levers")

    page.fill("#message", "push credit this week")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#publish")
    expect(page.locator("#flash")).to_contain_text("Published policy version 2")
    version = PolicyStore(redis_client).load(2)
    assert (version.author, version.message) == ("alice", "push credit this week")

    # the running server answers with version 2: the same lending offer, its priority five times higher
    def server_decides_with(version: str) -> bool:
        return bool(stub.Decide(atm_decline("walk-in"), timeout=5).policy_version == version)

    wait_until(lambda: server_decides_with("2"), what="the running server to decide with version 2")
    after = stub.Decide(atm_decline("c2"), timeout=5)
    assert (after.policy_version, after.action.offer_id) == ("2", offer)
    assert after.score == pytest.approx(5 * before.score)

    page.click("text=roll back to v1")
    page.click("#confirm-rollback")
    expect(page.locator("#flash")).to_contain_text("Policy version 1 is live again")
    expect(page.locator("#changes tr.change").first).to_contain_text("rollback")
    shoot(page, shots, "history")
    assert PolicyStore(redis_client).live() == 1
    wait_until(lambda: server_decides_with("1"), what="the running server to decide with version 1 again")
    again = stub.Decide(atm_decline("c3"), timeout=5)
    assert (again.policy_version, again.action.offer_id) == ("1", offer)
    assert again.score == pytest.approx(before.score)


def test_an_invalid_value_is_refused_at_the_field_and_a_viewer_may_not_publish(page, console_url, redis_client):
    sign_in(page, console_url, "alice")
    page.fill("#f-weight--micro_loan", "lots")
    page.click("#preview")
    expect(page.locator("#f-weight--micro_loan-error")).to_have_text("'lots' is not a number")
    expect(page.locator("#diff")).to_have_count(0)
    page.click("button:has-text('sign out')")
    sign_in(page, console_url, "vera")
    expect(page.locator("#publish")).to_have_count(0)
    expect(page.locator("#f-cat--lending")).to_be_disabled()
    # the form posted by hand, with the session's cookie and CSRF token: refused
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    form = {"csrf": csrf or "", "base": "1", "cat:lending": "5", "message": "sneaking credit in"}
    answer = page.request.post(f"{console_url}/levers/publish", form=form)
    assert answer.status == 403
    assert "vera may not do this: it needs the role publisher" in answer.text()
    assert PolicyStore(redis_client).live() == 1 and len(PolicyStore(redis_client).history()) == 1


TABLET = {"width": 768, "height": 1024}


def test_every_page_at_a_desktop_and_a_tablet_width(page, console_url, server_with_metrics, redis_client, shots):
    import_customers(redis_client, SAMPLE_POLICIES / "customers.jsonl", progress=False)
    sign_in(page, console_url, "alice", path="/")
    with Traffic(server_with_metrics.stub, accept=0.3):
        expect(page.locator("#acceptance")).not_to_have_text("-")
        expect(page.locator("#decisions-per-minute")).not_to_have_text("-")
        shoot(page, shots, "overview")
    page.click("header nav >> text=Offers")
    expect(page.locator("#offer-micro_loan")).to_be_visible()
    decided = page.locator("#offer-micro_loan td.num").first
    expect(decided).not_to_have_text("0")
    shoot(page, shots, "offers")
    page.click("header nav >> text=Learning")
    expect(page.locator("#models")).to_be_visible()
    expect(page.locator("#shadow-panel")).to_contain_text("Computed")  # in the background, the panel polls
    shoot(page, shots, "learning")
    page.click("header nav >> text=Customer")
    page.fill("#customer-id", "c00001")
    page.select_option("select[name=event]", "atm_decline")
    page.click("summary:has-text('event fields')")
    page.fill("textarea[name=fields]", "amount=100\nbalance=20\ncurrency=EUR")
    page.click("button:has-text('Look up and explain')")
    expect(page.locator("#explain h2")).to_have_text("nba explain: atm_decline now")
    expect(page.locator("#profile")).to_contain_text("Hannah")
    shoot(page, shots, "customer")

    page.set_viewport_size(TABLET)
    for path in ("/", "/offers", "/levers", "/history", "/history/1", "/learning", "/customer?id=c00001"):
        page.goto(f"{console_url}{path}")
        for link in ("Overview", "Offers", "Levers", "History", "Learning", "Customer"):
            expect(page.locator("header nav").get_by_role("link", name=link, exact=True)).to_be_in_viewport()
        assert no_horizontal_scroll(page), f"{path} scrolls sideways at 768 px"
    page.goto(f"{console_url}/levers")
    form = page.locator("#levers-form")
    expect(form).to_be_visible()
    box = form.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= TABLET["width"]
    expect(page.locator("#f-cat--lending")).to_be_in_viewport()
