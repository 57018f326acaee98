"""The console's honest rates, no-action reasons, rendered content, sign-in limit and preview estimates."""

from __future__ import annotations

import html
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from nba_service.console.app import SIGN_IN_FAILURES, ConsoleConfig, create_app
from nba_service.console.live import LiveNumbers, Scrape
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.customer_import import import_customers
from tests.conftest import SAMPLE_POLICIES, atm_decline, profile, wait_until
from tests.console.helpers import auth_file, csrf_of, sign_in


@pytest.fixture
def console(redis_client: redis.Redis, published: int) -> Iterator[Any]:
    """make(auth=True, client=None, events=()) -> a TestClient of a console on the test Redis."""
    clients: list[TestClient] = []
    apps: dict[bool, Any] = {}

    def make(auth: bool = True, address: tuple[str, int] | None = None, events: Any = ()) -> TestClient:
        if auth not in apps or events:
            config = ConsoleConfig(client=redis_client, auth=auth_file() if auth else None, moments=list(events))
            apps[auth] = create_app(config)
        client = TestClient(apps[auth], client=address or ("testclient", 50000))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_the_decision_rate_is_counted_over_the_window_observed_and_says_so():
    live = LiveNumbers()
    first = Scrape(1000.0, servers=1)
    first.decisions[("none", "none")] = 90.0
    assert live.add(first)["per_minute"] == {}  # one scrape: nothing counted yet
    second = Scrape(1002.0, servers=1)
    second.decisions[("none", "none")] = 96.0
    per_minute = live.add(second)["per_minute"]
    assert (per_minute["count"], per_minute["window"], per_minute["decisions"]) == (6.0, 2.0, 180.0)
    later = Scrape(1061.0, servers=1)
    later.decisions[("none", "none")] = 150.0
    per_minute = live.add(later)["per_minute"]  # the first scrape is over a minute old: counted since the second
    assert (per_minute["count"], per_minute["window"]) == (54.0, 59.0)


def test_the_overview_shows_no_action_with_its_reasons_as_the_servers_count_them(console, server_with_metrics):
    stub = server_with_metrics.stub
    stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", credit_score="700")), timeout=5)
    for _ in range(2):  # no offer is allowed at a custom event "nothing": no action, nothing_allowed
        stub.Decide(
            pb.DecideRequest(customer_id="c1", event=pb.Event(custom=pb.CustomEvent(name="nothing"))), timeout=5
        )
    stub.Decide(atm_decline("c1"), timeout=5)
    metrics = server_with_metrics.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'nba_no_action_total{reason="nothing_allowed"} 2.0' in text
    client = console(auth=False)
    wait_until(lambda: 'id="decisions-total">3<' in client.get("/overview/live").text, what="3 decisions shown")
    page = client.get("/overview/live").text
    assert re.search(r'id="no-action-share">66\.7%<.*nothing_allowed 66\.7%', page), page
    assert 'id="no-action-reasons"' in page and ">nothing_allowed<" in page
    label = re.search(r'id="decisions-window">([^<]*)<', page).group(1)
    assert label.startswith("decisions in the last "), label


def test_offers_show_the_content_rendered_for_a_sample_or_a_looked_up_customer(console, redis_client):
    import_customers(redis_client, SAMPLE_POLICIES / "customers.jsonl", progress=False)
    client = console()
    sign_in(client, "vera")
    page = html.unescape(client.get("/offers").text)
    assert "a sample customer (first name Alex" in page
    overdraft = page[page.index('id="offer-overdraft_protection"') :]
    overdraft = overdraft[: overdraft.index("</table>\n</div>")]
    assert 'data-channel="push" data-language="en"' in overdraft and 'data-language="es"' in overdraft
    assert "Alex, never get declined again" in overdraft
    assert "Alex, que no te vuelvan a rechazar" in overdraft
    assert "bank://overdraft?source=push&lang=es" in overdraft
    assert "Rendering for a looked-up customer needs" in page
    assert client.get("/offers?customer=c00001").status_code == 403  # a viewer may not look up a customer

    def card_upgrade(who: str) -> str:
        c = console()
        sign_in(c, who)
        answer = c.get("/offers?customer=c00001")
        assert answer.status_code == 200
        text = html.unescape(answer.text)
        return text[text.index('id="offer-card_upgrade"') :][:3000]

    no_pii = card_upgrade("alice")  # the limit is computed from income, a sensitive attribute
    assert "Hannah, upgrade to the Gold card in one tap: 0 limit" in no_pii
    with_pii = card_upgrade("paula")
    assert "Hannah, upgrade to the Gold card in one tap: 2500 limit" in with_pii
    c = console()
    sign_in(c, "alice")
    assert "without the sensitive attributes birthday, credit_score, income" in c.get("/offers?customer=c00001").text
    assert 'id="delivered-note"' in page and "nba_campaign_deliveries_total" in page


def test_failed_sign_ins_are_limited_per_client_address(console):
    client = console(address=("10.0.0.1", 40000))
    for _ in range(SIGN_IN_FAILURES):
        page = client.get("/login")
        assert client.post("/login", data={"csrf": csrf_of(page.text), "token": "guess"}).status_code == 401
    page = client.get("/login")
    refused = client.post("/login", data={"csrf": csrf_of(page.text), "token": "alice-token"}, follow_redirects=False)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "too many failed sign-ins from 10.0.0.1" in refused.text
    other = console(address=("10.0.0.2", 40000))  # another address is not affected
    sign_in(other, "alice")


def test_the_preview_says_why_it_has_no_off_policy_estimate_for_events_never_decided(console):
    from tests.console.test_console import moments

    client = console(events=moments(50))
    csrf = sign_in(client, "mark")
    page = html.unescape(client.post("/levers/preview", data={"csrf": csrf, "cat:lending": "5"}).text)
    assert "0 of 50 events matched a logged decision (with its propensity), 0 of them settled: no estimate," in page
    assert "none of the recorded events matches a decision logged in Redis" in page


def test_the_preview_estimates_acceptance_off_policy_from_the_decisions_the_server_logged(console, server):
    from nba_service.api.event_log import parse_line, request_to_line, to_timed_request

    stub = server.stub
    events = []
    for i in range(12):
        customer = f"p{i}"
        stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(customer, credit_score="700")), timeout=5)
        request = atm_decline(customer, amount=100.0 + 10 * i)
        answer = stub.Decide(request, timeout=5)
        events.append(to_timed_request(parse_line(request_to_line(request, time.time()))))
        if not answer.no_action:  # every action settled: accepted for even customers, declined for odd ones
            kind = pb.OUTCOME_KIND_ACCEPTED if i % 2 == 0 else pb.OUTCOME_KIND_DECLINED
            stub.ReportOutcome(pb.OutcomeRequest(decision_id=answer.decision_id, outcome=kind), timeout=5)
    client = console(events=events)
    csrf = sign_in(client, "mark")
    page = html.unescape(client.post("/levers/preview", data={"csrf": csrf, "cat:lending": "5"}).text)
    # every event is joined to its logged decision; the replay, starting from the stored state that holds
    # those decisions' own contacts, sends on another channel than the logged one: the page says so
    assert "12 of 12 events matched a logged decision (with its propensity), 12 of them settled" in page
    assert "a side never takes the logged action on a settled row" in page


def test_the_off_policy_estimate_weighs_the_rows_where_a_side_takes_the_logged_action():
    from types import SimpleNamespace

    from nba_service.console.estimate import Logged, off_policy

    logged = [Logged("a", "push", 0.5, 1.0), Logged("a", "push", 0.5, 0.0), Logged("b", "sms", 0.25, 1.0), None,
              Logged("", "", 1.0, 0.0), Logged("b", "sms", 0.5, None)]  # fmt: skip
    live = [SimpleNamespace(offer_id=o, channel=c) for o, c in
            [("a", "push"), ("a", "push"), ("a", "push"), ("a", "push"), (None, ""), ("b", "sms")]]  # fmt: skip
    candidate = [SimpleNamespace(offer_id=o, channel=c) for o, c in
                 [("b", "sms"), ("b", "sms"), ("b", "sms"), ("b", "sms"), ("b", "sms"), ("b", "sms")]]  # fmt: skip
    result = off_policy(logged, live, candidate)  # type: ignore[arg-type]
    assert (result.events, result.matched, result.settled, result.why_not) == (6, 5, 4, "")
    # live takes the logged action on rows 0, 1 (weights 2, 2; rewards 1, 0) and the no action of row 4 (1, 0)
    assert result.live["snips"].value == 2 / 5 and result.live["ips"].value == 2 / 4
    # the candidate only on row 2 (weight 4, reward 1)
    assert result.candidate["snips"].value == 1.0 and result.candidate["ips"].value == 4 / 4
    assert result.live["snips"].ci_low < 0.4 < result.live["snips"].ci_high


def test_contexts_read_together_are_those_read_one_by_one(redis_client):
    from nba_service.store.context_reader import ContextReader

    import_customers(redis_client, SAMPLE_POLICIES / "customers.jsonl", progress=False)
    reader = ContextReader(redis_client)
    moments = [("c00001", 1781092800.0), ("c00002", 1781092900.0), ("nobody", 1781092800.0)]
    windows = {"contact_window": 86400.0, "suppression_window": 365 * 86400.0, "accepted_window": 365 * 86400.0}
    together = reader.read_contexts(moments, **windows)
    assert together == [reader.read_context(c, now, **windows) for c, now in moments]
    assert [ctx.profile.known for ctx in together] == [True, True, False]
