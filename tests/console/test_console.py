"""The console's pages and rules over a real Redis: sign-in, roles, CSRF, levers, publish, history, rollback."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from nba_service.api.auth import AuthFile
from nba_service.api.event_log import parse_line, request_to_line, to_timed_request
from nba_service.console.app import ConsoleConfig, create_app
from nba_service.domain import TimedRequest
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.customer_import import import_customers
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.traffic import ScenarioMix
from tests.conftest import SAMPLE_POLICIES, atm_decline, profile, wait_until
from tests.console.helpers import auth_file, csrf_of, sign_in

PAGES = ("/", "/overview/live", "/offers", "/levers", "/history", "/history/1", "/learning", "/customer")


def moments(count: int = 300) -> list[TimedRequest]:
    """Simulated moments of the sample customers, as a recorded event file holds them."""
    mix = ScenarioMix([f"c{i:05d}" for i in range(1, 201)], seed=3)
    return [to_timed_request(parse_line(request_to_line(mix.next().request, 1781092800.0 + i))) for i in range(count)]


@pytest.fixture
def console(redis_client: redis.Redis, published: int) -> Iterator[Any]:
    """make(auth=True, moments=()) -> a TestClient of a console on the test Redis (sample policy live)."""
    clients: list[TestClient] = []

    def make(auth: bool = True, events: list[TimedRequest] | None = None) -> TestClient:
        config = ConsoleConfig(client=redis_client, auth=auth_file() if auth else None, moments=events or [])
        client = TestClient(create_app(config))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_without_an_auth_file_everyone_is_the_local_admin_and_every_page_renders(console):
    client = console(auth=False)
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text)
    assert "you are the local admin" in client.get("/").text
    assert "Publish as a new version" in client.get("/levers").text


def test_sign_in_with_a_token_of_the_auth_file(console):
    client = console()
    assert client.get("/levers", follow_redirects=False).headers["location"] == "/login?next=/levers"
    page = client.get("/login")
    wrong = client.post("/login", data={"csrf": csrf_of(page.text), "token": "nope"})
    assert wrong.status_code == 401 and "unknown token" in wrong.text
    refused = client.post("/login", data={"csrf": csrf_of(page.text), "token": "deci-token"})
    assert refused.status_code == 403 and "deci has no console role" in refused.text
    sign_in(client, "vera")
    for path in PAGES:
        assert client.get(path).status_code == 200, path
    assert "signed in as <strong>vera</strong> (viewer)" in client.get("/").text


def test_a_viewer_cannot_preview_publish_or_roll_back(console, redis_client):
    client = console()
    csrf = sign_in(client, "vera")
    levers = client.get("/levers").text
    assert "Publish as a new version" not in levers and "disabled" in levers
    assert "roll back to" not in client.get("/history").text
    form = {"csrf": csrf, "cat:lending": "2", "message": "more credit"}
    assert client.post("/levers/publish", data=form).status_code == 403
    assert client.post("/levers/preview", data=form).status_code == 403
    assert client.post("/history/1/rollback", data={"csrf": csrf, "confirm": "yes"}).status_code == 403
    assert PolicyStore(redis_client).live() == 1 and len(PolicyStore(redis_client).history()) == 1


def test_a_marketer_previews_but_cannot_publish(console, redis_client):
    client = console(events=moments())
    csrf = sign_in(client, "mark")
    preview = client.post("/levers/preview", data={"csrf": csrf, "cat:lending": "5"})
    assert preview.status_code == 200
    assert "settings.levers.categories.lending: 1 -&gt; 5" in preview.text
    assert "Publish as a new version" not in client.get("/levers").text
    assert client.post("/levers/publish", data={"csrf": csrf, "cat:lending": "5", "message": "m"}).status_code == 403


def test_every_post_needs_the_csrf_token(console, redis_client):
    client = console()
    csrf = sign_in(client, "alice")
    for path in ("/levers/preview", "/levers/publish", "/history/1/rollback", "/logout"):
        assert client.post(path, data={"cat:lending": "2", "message": "m", "confirm": "yes"}).status_code == 403, path
        bad = client.post(path, data={"csrf": csrf + "x", "cat:lending": "2", "message": "m", "confirm": "yes"})
        assert bad.status_code == 403, path
    assert PolicyStore(redis_client).live() == 1
    other = console()
    assert other.post("/login", data={"token": "alice-token"}).status_code == 403


def test_publish_from_the_levers_form_makes_a_new_version_by_the_person(console, redis_client):
    client = console(events=moments())
    csrf = sign_in(client, "alice")
    preview = client.post("/levers/preview", data={"csrf": csrf, "cat:lending": "5", "weight:micro_loan": "2"})
    assert "micro_loan.weight: 1 -&gt; 2" in preview.text
    changed = int(re.search(r'id="changed">(\d+)<', preview.text).group(1))
    assert changed > 0 and "<svg" in preview.text
    answer = client.post(
        "/levers/publish",
        data={"csrf": csrf, "base": "1", "cat:lending": "5", "weight:micro_loan": "2", "message": "push credit"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/history?published=2"
    store = PolicyStore(redis_client)
    assert store.live() == 2
    version = store.load(2)
    assert (version.author, version.message) == ("alice", "push credit")
    settings = version.files["settings.yaml"]
    assert "      lending: 5.0             # micro-loans" in settings  # the comment stays
    assert "- weight: 2.0" not in version.files["bank.yaml"] and "    weight: 2.0\n" in version.files["bank.yaml"]
    history = client.get("/history?published=2").text
    assert "Published policy version 2" in history and '<td class="who">alice</td>' in history
    assert "settings.levers.categories.lending: 1 -&gt; 5" in client.get("/history/2").text


def test_a_bad_lever_is_refused_at_its_field_and_nothing_is_written(console, redis_client):
    client = console()
    csrf = sign_in(client, "alice")
    form = {"csrf": csrf, "cat:lending": "abc", "weight:micro_loan": "-1", "message": "oops"}
    answer = client.post("/levers/publish", data=form)
    assert answer.status_code == 422
    assert re.search(r'id="f-cat--lending-error">&#39;abc&#39; is not a number<', answer.text)
    assert re.search(r'id="f-weight--micro_loan-error">-1: must be a number &gt;= 0<', answer.text)
    # a number the policy's own validation refuses: shown at the field with the validator's message
    answer = client.post("/levers/publish", data={"csrf": csrf, "budget:credit_line_raise": "0", "message": "oops"})
    assert answer.status_code == 422
    assert re.search(
        r'id="f-budget--credit_line_raise-error">offers\[1\] \(credit_line_raise\)\.budget\.max: expected a whole '
        r"number &gt;= 1, got 0<",
        answer.text,
    )
    # a publish without a message
    answer = client.post("/levers/publish", data={"csrf": csrf, "cat:lending": "2", "message": " "})
    assert answer.status_code == 422 and "say what changes and why" in answer.text
    store = PolicyStore(redis_client)
    assert store.live() == 1 and [p.version for p in store.history()] == [1]


def test_an_htmx_preview_answers_the_result_with_the_field_errors_out_of_band(console):
    client = console()
    csrf = sign_in(client, "mark")
    answer = client.post("/levers/preview", data={"csrf": csrf, "threshold": "x"}, headers={"HX-Request": "true"})
    assert answer.status_code == 200 and "<html" not in answer.text
    assert '<span class="field-error" id="f-threshold-error" hx-swap-oob="true">&#39;x&#39; is not a number</span>' in (
        answer.text
    )


def test_a_publish_over_a_newer_live_version_is_refused(console, redis_client):
    client = console()
    csrf = sign_in(client, "alice")
    store = PolicyStore(redis_client)
    store.publish(store.load(1).files, author="bob", message="meanwhile")
    answer = client.post("/levers/publish", data={"csrf": csrf, "base": "1", "cat:lending": "2", "message": "m"})
    assert answer.status_code == 422 and "policy version 2 became live while you edited version 1" in answer.text
    assert store.live() == 2


def test_the_same_publish_sent_twice_at_once_makes_one_version(console, redis_client):
    """A double submit (two clicks, or a form request racing the button's): the publish is checked against the
    live version in the same Redis transaction that makes it live, so one goes live and the other is refused."""
    client = console()
    csrf = sign_in(client, "alice")
    form = {"csrf": csrf, "base": "1", "cat:lending": "3", "message": "more credit"}
    start = threading.Barrier(2)
    answers: list[Any] = []

    def publish() -> None:
        start.wait(timeout=30)
        answers.append(client.post("/levers/publish", data=form, follow_redirects=False))

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(a.status_code for a in answers) == [303, 422]
    refused = next(a for a in answers if a.status_code == 422)
    assert "policy version 2 became live while you edited version 1" in refused.text
    store = PolicyStore(redis_client)
    assert store.live() == 2 and [p.version for p in store.history()] == [1, 2]


def test_rollback_asks_once_and_records_the_person(console, redis_client):
    client = console()
    csrf = sign_in(client, "alice")
    client.post("/levers/publish", data={"csrf": csrf, "cat:lending": "2", "message": "more credit"})
    assert PolicyStore(redis_client).live() == 2
    confirm = client.get("/history/1/rollback")
    assert "Roll back to policy version 1?" in confirm.text and "alice" in confirm.text
    done = client.post("/history/1/rollback", data={"csrf": csrf, "confirm": "yes", "message": "too much"})
    assert done.status_code == 200 and "Policy version 1 is live again" in done.text
    store = PolicyStore(redis_client)
    assert store.live() == 1
    last = store.changes()[-1]
    assert (last.kind, last.version, last.previous, last.who, last.message) == ("rollback", 1, 2, "alice", "too much")
    assert client.get("/history/9/rollback").status_code == 404


def test_customer_lookup_is_role_gated_and_hides_sensitive_attributes_without_pii(console, redis_client):
    import_customers(redis_client, SAMPLE_POLICIES / "customers.jsonl", progress=False)
    client = console()
    sign_in(client, "vera")
    assert client.get("/customer?id=c00001").status_code == 403
    client = console()
    sign_in(client, "alice")
    page = client.get("/customer?id=c00001&event=atm_decline&fields=amount%3D100%0Abalance%3D20")
    assert page.status_code == 200
    assert 'data-name="credit_score">hidden (needs the pii role)<' in page.text
    assert 'data-name="city">Berlin<' in page.text
    assert "micro_loan" in page.text and "nba explain: atm_decline now" in page.text
    assert "704" not in page.text  # c00001's credit score: in no content, script or explain detail either
    assert "Decided and explained without birthday, credit_score, income" in page.text
    client = console()
    sign_in(client, "paula")
    page = client.get("/customer?id=c00001")
    assert 'data-name="credit_score">704<' in page.text
    assert "Decided and explained without" not in page.text


def test_the_overview_and_offers_show_the_running_servers_numbers(console, server_with_metrics, redis_client):
    stub = server_with_metrics.stub
    stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", credit_score="700")), timeout=5)
    decided = [stub.Decide(atm_decline("c1"), timeout=5) for _ in range(3)]
    acted = [d for d in decided if not d.no_action]
    assert acted, "the sample policy acts on an ATM decline of a known customer"
    stub.ReportOutcome(pb.OutcomeRequest(decision_id=acted[0].decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    metrics = server_with_metrics.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    offer, channel = acted[0].action.offer_id, acted[0].channel
    line = f'nba_offer_outcomes_total{{channel="{channel}",offer="{offer}",outcome="accepted"}} 1.0'
    assert line in text
    client = console(auth=False)
    wait_until(lambda: 'id="decisions-total">3<' in client.get("/overview/live").text, what="3 decisions shown")
    live = client.get("/overview/live").text
    assert 'id="live-versions">v1 ·' in live and "1</div><div class=\"l\">servers scraped" in live
    offers = client.get("/offers").text
    assert f'id="offer-{acted[0].action.offer_id}"' in offers


def test_the_learning_page_shows_the_shadow_report_computed_in_the_background(console):
    client = console(auth=False)
    first = client.get("/learning")
    assert first.status_code == 200 and 'id="shadow-panel"' in first.text
    wait_until(lambda: "Computed " in client.get("/learning/shadow").text, what="the shadow report to be computed")
    panel = client.get("/learning/shadow").text
    assert "No settled decision logged a shadow choice yet" in panel and 'hx-get="/learning/shadow"' not in panel
    assert "No settled decision logged a shadow choice yet" in client.get("/learning").text


def test_a_session_ends_when_its_token_is_rotated_even_with_the_same_cookie_key(redis_client, published):
    """A console restarted with the same NBA_CONSOLE_SECRET and an auth file where alice's token changed: her
    old cookie, still validly signed, no longer signs her in."""
    first = TestClient(create_app(ConsoleConfig(client=redis_client, auth=auth_file(), secret_key="k")))
    sign_in(first, "alice")
    assert first.get("/levers").status_code == 200
    rotated = AuthFile.parse(
        "clients:\n  - {name: alice, token_sha256: '"
        + hashlib.sha256(b"alice-new-token").hexdigest()
        + "', roles: [publisher, marketing]}\n",
        "auth.yaml",
    )
    again = TestClient(create_app(ConsoleConfig(client=redis_client, auth=auth_file(), secret_key="k")))
    again.cookies = first.cookies
    assert again.get("/levers").status_code == 200  # same key, same token: still signed in
    second = TestClient(create_app(ConsoleConfig(client=redis_client, auth=rotated, secret_key="k")))
    second.cookies = first.cookies
    answer = second.get("/levers", follow_redirects=False)
    assert answer.status_code in (303, 401) and "alice" not in answer.text
    for client in (first, again, second):
        client.close()
