"""The decision service end to end: real gRPC server, real Redis, sample policies."""

from __future__ import annotations

import re

import grpc
import pytest
import redis

from nba_service.store import keys
from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import atm_decline, daytime_zone, profile, wait_until

LENDING = {"micro_loan", "credit_line_raise", "overdraft_protection"}


def test_atm_decline_offers_a_loan_on_push_or_atm_screen(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", timezone=daytime_zone())))

    response = server.stub.Decide(atm_decline("c1"), timeout=5)

    assert not response.no_action
    assert response.action.offer_id in LENDING
    assert response.action.category == "lending"
    assert response.channel in {"push", "atm_screen"}
    assert response.action.content  # rendered for the channel
    assert "{" not in response.action.content
    assert response.propensity == pytest.approx(1.0)  # exploration is off in this server
    assert response.policy_version == "1"
    assert response.model_version
    assert response.decision_id
    assert response.reasons[0].code == "chosen" and response.reasons[0].offer_id == response.action.offer_id
    assert [a.score for a in response.alternatives] == sorted((a.score for a in response.alternatives), reverse=True)
    assert all(a.score <= response.score for a in response.alternatives)


def test_customer_without_any_consent_gets_no_action(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c2", consent=False, timezone=daytime_zone())))

    response = server.stub.Decide(atm_decline("c2"), timeout=5)

    assert response.no_action
    assert not response.HasField("action")
    assert response.channel == ""
    assert response.decision_id  # "no action" is a real, recorded decision
    codes = {r.code for r in response.reasons}
    assert "no_channel" in codes
    details = " ".join(r.detail for r in response.reasons)
    assert "no consent" in details


def test_unknown_customer_gets_a_decision_from_defaults(server):
    response = server.stub.Decide(atm_decline("never-seen"), timeout=5)

    assert response.decision_id
    # Session channels default to consent; an unknown customer can only be reached on the ATM screen.
    assert response.no_action or response.channel == "atm_screen"


def test_abandoned_web_cart_is_visible_to_the_agent_desktop(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c3", timezone=daytime_zone())))
    web = pb.DecideRequest(customer_id="c3", origin_channel="web", event=pb.Event(
        cart_abandon=pb.CartAbandon(cart_id="cart-42", cart_value=180.0, currency="EUR", item_ids=["sku1", "sku2"])))
    decided = server.stub.Decide(web, timeout=5)

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c3", include_best_actions=True),
                                          timeout=5)

    assert view.known and view.profile.first_name == "Ana"
    assert [(j.kind, j.id) for j in view.open_journeys] == [("cart", "cart-42")]
    assert view.open_journeys[0].fields["cart_value"] == "180"
    assert view.journey[0].type == "cart_abandon" and view.journey[0].origin_channel == "web"
    assert view.recent_decisions[0].decision_id == decided.decision_id
    assert view.best_actions, "the agent should see the pending best actions"
    assert all(a.channel == "agent_desktop" for a in view.best_actions)
    assert view.policy_version == "1"


def test_purchase_closes_the_open_cart(server):
    server.stub.Decide(pb.DecideRequest(customer_id="c4", origin_channel="web", event=pb.Event(
        cart_abandon=pb.CartAbandon(cart_id="k1", cart_value=50.0, currency="EUR"))), timeout=5)
    server.stub.Decide(pb.DecideRequest(customer_id="c4", origin_channel="app", event=pb.Event(
        custom=pb.CustomEvent(name="purchase", attributes={"cart_id": "k1"}))), timeout=5)

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c4"), timeout=5)

    assert list(view.open_journeys) == []
    assert [e.type for e in view.journey] == ["custom", "cart_abandon"]


def test_frequency_cap_stops_the_same_offer(server):
    # micro_loan allows at most 2 contacts in 30 days; keep the other lending offers out
    # of the way so it is the best action every time it is allowed. Its limit counts and
    # closes the outbound channels only (push, then sms: push allows one a day), so this
    # customer has turned the ATM screen off, where the capped offer would still be shown.
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "c5", segment="student", channels=("push", "sms"), timezone=daytime_zone(), credit_score="600",
        consent={"push": True, "sms": True, "atm_screen": False})))
    offers = [server.stub.Decide(atm_decline("c5", amount=60, balance=10), timeout=5) for _ in range(4)]

    chosen = [r.action.offer_id for r in offers]
    assert chosen[:2] == ["micro_loan", "micro_loan"]
    assert "micro_loan" not in chosen[2:]
    capped = [r for r in offers[2].reasons if r.offer_id == "micro_loan"]
    assert capped and capped[0].code in {"frequency_cap", "no_channel"}
    assert "at most" in capped[0].detail


def test_accepted_outcome_raises_the_offer_score_for_similar_customers(server):
    zone = daytime_zone()
    for customer in ("c6", "c7", "c7b"):  # the same profile; c7 and c7b have no history
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(customer, timezone=zone)))
    first = server.stub.Decide(atm_decline("c6"), timeout=5)
    offer, channel = first.action.offer_id, first.channel
    before = server.stub.Decide(atm_decline("c7"), timeout=5)
    assert (before.action.offer_id, before.channel) == (offer, channel)

    result = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=first.decision_id,
                                                         outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert result.learned and not result.duplicate
    # the learner learns it from the outcome stream and publishes a model version the server loads
    wait_until(lambda: server.dataplane.models.version != before.model_version, what="a new model version")
    after = server.stub.Decide(atm_decline("c7b"), timeout=5)

    assert (after.action.offer_id, after.channel) == (offer, channel)
    assert after.score > before.score
    assert after.model_version != before.model_version


def test_outcome_reported_twice_is_learned_once(server, redis_client: redis.Redis):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c8", timezone=daytime_zone())))
    decision = server.stub.Decide(atm_decline("c8"), timeout=5)
    request = pb.OutcomeRequest(decision_id=decision.decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED, value=100)

    first = server.stub.ReportOutcome(request, timeout=5)
    second = server.stub.ReportOutcome(request, timeout=5)
    converted = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                            outcome=pb.OUTCOME_KIND_CONVERTED), timeout=5)

    assert (first.learned, first.duplicate) == (True, False)
    assert (second.learned, second.duplicate) == (False, True)
    assert (converted.learned, converted.duplicate) == (False, False)  # recorded, the reward was already learned
    assert redis_client.xlen(keys.outcome_stream(keys.decision_bucket(decision.decision_id))) == 1  # one entry for the learner
    wait_until(lambda: server.dataplane.models.updates == 1, what="the model to learn the outcome")
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c8"), timeout=5)
    assert list(view.recent_decisions[0].outcomes) == ["accepted", "converted"]


def test_unknown_or_expired_decision_is_not_found(server, redis_client: redis.Redis):
    with pytest.raises(grpc.RpcError) as unknown:
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id="0" * 32, outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    decision = server.stub.Decide(atm_decline("c9"), timeout=5)
    redis_client.delete(keys.decision(decision.decision_id))  # what the TTL does after decision_ttl_seconds
    with pytest.raises(grpc.RpcError) as expired:
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                    outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert expired.value.code() == grpc.StatusCode.NOT_FOUND
    assert decision.decision_id in expired.value.details()


def test_decisions_expire_after_the_configured_ttl(start_server, published, redis_client: redis.Redis):
    server = start_server(decision_ttl_seconds=600)
    decision = server.stub.Decide(atm_decline("c10"), timeout=5)
    assert 590 <= redis_client.ttl(keys.decision(decision.decision_id)) <= 600


def test_decide_stream_answers_each_request_in_order(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c11", timezone=daytime_zone())))
    requests = [atm_decline("c11"), pb.DecideRequest(customer_id="c11", request_id="r2", origin_channel="app",
                                                      event=pb.Event(app_open=pb.AppOpen(screen="home"))),
                atm_decline("nobody")]
    requests[0].request_id = "r1"
    requests[2].request_id = "r3"

    responses = list(server.stub.DecideStream(iter(requests), timeout=10))

    assert [r.request_id for r in responses] == ["r1", "r2", "r3"]
    assert len({r.decision_id for r in responses}) == 3


def test_upsert_reports_created_then_updated_and_replaces_the_profile(server):
    created = server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c12", segment="young")), timeout=5)
    updated = server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c12", segment="vip")), timeout=5)
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c12"), timeout=5)

    assert (created.created, updated.created) == (True, False)
    assert view.profile.segment == "vip"
    assert {c.channel: c.granted for c in view.profile.consents}["push"] is True


def test_unknown_customer_context_says_so(server):
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="ghost"), timeout=5)
    assert not view.known
    assert view.profile.customer_id == "ghost"
    assert list(view.journey) == []


def test_an_action_without_outcome_counts_as_not_accepted_after_its_window(start_server, published, redis_client):
    from nba_service.store.outcome_stream import OutcomeStream

    server = start_server(attribution_seconds=3600, learner="off")
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c13", timezone=daytime_zone())))
    decision = server.stub.Decide(atm_decline("c13"), timeout=5)
    assert not decision.no_action
    stream = OutcomeStream(redis_client, "test")
    import time

    assert stream.expire_due(now=time.time() + 3000) == 0  # still inside the window
    assert stream.expire_due(now=time.time() + 3601) == 1
    (_, fields), = redis_client.xrange(keys.outcome_stream(keys.decision_bucket(decision.decision_id)))
    assert (fields[b"decision_id"].decode(), fields[b"reward"], fields[b"outcome"]) == (
        decision.decision_id, b"0", b"expired")

    late = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                       outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert not late.learned and not late.duplicate  # recorded for the agent's view, not learned twice
    assert redis_client.xlen(keys.outcome_stream(keys.decision_bucket(decision.decision_id))) == 1


def test_softmax_exploration_logs_the_exact_probability_of_its_pick(start_server, published):
    import numpy as np

    from nba_service.learning.exploration import Softmax

    server = start_server(strategy="softmax", temperature=0.5, seed=3, learner="off")
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c14", timezone=daytime_zone())))
    request = atm_decline("c14")
    request.top_k = 20
    decision = server.stub.Decide(request, timeout=5)
    options = sorted([decision.score, *(a.score for a in decision.alternatives)], reverse=True)
    assert len(options) >= 2
    expected = Softmax(temperature=0.5).probabilities(np.array(options))
    assert decision.propensity == pytest.approx(expected[options.index(decision.score)])


def test_a_sample_of_live_requests_is_recorded_for_preview(start_server, published, tmp_path):
    from nba_service.api.event_log import read_requests

    events = tmp_path / "recorded.jsonl"
    server = start_server(record_events=str(events), record_sample=1.0, learner="off")
    server.stub.Decide(atm_decline("r1"), timeout=5)
    server.stub.Decide(pb.DecideRequest(customer_id="r2", origin_channel="web", event=pb.Event(
        page_view=pb.PageView(url="https://shop.example/p", page_type="product"))), timeout=5)
    with pytest.raises(grpc.RpcError):
        server.stub.Decide(pb.DecideRequest(customer_id="r3"), timeout=5)  # invalid: never recorded
    server.stop()

    recorded = list(read_requests(events))
    assert [r.request.customer_id for r in recorded] == ["r1", "r2"]
    assert recorded[0].request.event.atm_decline.amount == 100 and recorded[0].timestamp is not None


def test_an_offer_rewarded_on_conversion_learns_from_the_conversion_not_the_acceptance(start_server, redis_client):
    from nba_service.policies.parser import read_policy_dir
    from nba_service.store.policy_store import PolicyStore
    from tests.conftest import SAMPLE_POLICIES

    files = read_policy_dir(SAMPLE_POLICIES)
    files["bank.yaml"] = files["bank.yaml"].replace("  - id: micro_loan\n", "  - id: micro_loan\n    reward: converted\n", 1)
    PolicyStore(redis_client).publish(files)
    server = start_server(learner="off")
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "r9", segment="student", channels=("push",), timezone=daytime_zone(), credit_score="600")))
    decision = server.stub.Decide(atm_decline("r9", amount=60, balance=10), timeout=5)
    assert decision.action.offer_id == "micro_loan"

    accepted = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                           outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    converted = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                            outcome=pb.OUTCOME_KIND_CONVERTED, value=60), timeout=5)

    assert (accepted.learned, converted.learned) == (False, True)
    (_, fields), = redis_client.xrange(keys.outcome_stream(keys.decision_bucket(decision.decision_id)))
    assert (fields[b"outcome"], fields[b"reward"]) == (b"converted", b"1")


def night_zone() -> str:
    """An IANA zone where it is 23:xx right now: push and sms (quiet 21:00-08:00) are in quiet hours."""
    import datetime

    utc_hour = datetime.datetime.now(datetime.UTC).hour
    offset = (23 - utc_hour + 12) % 24 - 12  # from -12 to +11, zones that all exist
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT signs are inverted


def channel_reasons(response: pb.DecideResponse) -> dict[str, pb.Reason]:
    """The response's channel reasons by channel: all of them about the chosen action."""
    found = {r.channel: r for r in response.reasons if r.channel}
    assert all(r.offer_id == response.action.offer_id for r in found.values())
    return found


def test_an_sms_customer_in_quiet_hours_is_told_why_not_sms(server):
    # sms drops in its quiet hours (push defers instead: tests/api/test_channel_semantics.py)
    zone = night_zone()
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "q1", timezone=zone, channels=("sms",), preferred="sms")))

    response = server.stub.Decide(atm_decline("q1"), timeout=5)

    assert response.action.offer_id in LENDING and response.channel == "atm_screen"  # sms is quiet
    reasons = channel_reasons(response)
    assert reasons["sms"].code == "quiet_hours"
    # 23:xx local (00:xx if the hour turned since night_zone() chose the zone)
    expected = rf"quiet hours 21:00-08:00 in {re.escape(zone)}, local time (23|00):\d\d"
    assert re.fullmatch(expected, reasons["sms"].detail), reasons["sms"].detail
    assert reasons["sms"].offer_id == response.action.offer_id
    assert response.deliver_after_ms == 0
    assert response.reasons[0].code == "chosen"  # still first; the channel reasons follow it
    assert {r.channel for r in response.reasons[1:len(reasons) + 1]} == set(reasons)


def test_a_customer_without_push_consent_is_told_why_not_push(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "q2", timezone=daytime_zone(), consent={"push": False, "sms": True, "atm_screen": True})))

    response = server.stub.Decide(atm_decline("q2"), timeout=5)

    assert response.action.offer_id in LENDING and response.channel != "push"
    push = channel_reasons(response)["push"]
    assert (push.code, push.detail) == ("no_consent", "no consent")


def test_an_atm_decline_without_coordinates_keeps_them_missing(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("g1", timezone=daytime_zone())))
    declines = [  # oldest first; the agent view lists the newest first
        pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-no-gps"),
        pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-null-island", latitude=0.0, longitude=0.0),
        pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-equator", longitude=9.45),
        pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-sol", latitude=40.4168, longitude=-3.7038),
    ]
    for decline in declines:
        response = server.stub.Decide(pb.DecideRequest(customer_id="g1", origin_channel="atm",
                                                       event=pb.Event(atm_decline=decline)), timeout=5)
        assert not response.no_action
        assert "rule_error" not in {r.code for r in response.reasons}  # rules read 0 for a missing coordinate

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="g1"), timeout=5)

    fields = {e.fields["atm_id"]: dict(e.fields) for e in view.journey}
    assert "latitude" not in fields["atm-no-gps"] and "longitude" not in fields["atm-no-gps"]  # absent, not "0"
    # explicitly sent coordinates are kept as sent, 0 included
    assert (fields["atm-null-island"]["latitude"], fields["atm-null-island"]["longitude"]) == ("0", "0")
    # one half alone: what a client built before the fields were optional sends for a coordinate of 0
    assert (fields["atm-equator"]["latitude"], fields["atm-equator"]["longitude"]) == ("0", "9.45")
    assert (fields["atm-sol"]["latitude"], fields["atm-sol"]["longitude"]) == ("40.4168", "-3.7038")
