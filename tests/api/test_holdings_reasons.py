"""Issue 14, items 3 and 4: products held and offers accepted are not offered (again); the agent desktop
gets the likely reasons for a call and a script per best action, in the agent's language. Real gRPC
server, real Redis, the sample policy set."""

from __future__ import annotations

import time

import grpc
import pytest
import redis
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2, message_factory

from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import codec, keys
from tests.conftest import atm_decline, daytime_zone, profile


def customer(customer_id: str, *holdings: str, **attributes: str) -> pb.CustomerProfile:
    """A customer the sample set offers overdraft protection at the ATM (a poor score: no micro-loan, no
    credit-line raise), reachable by day."""
    p = profile(customer_id, timezone=daytime_zone(), **{"credit_score": "500", **attributes})
    p.holdings.extend(holdings)
    return p


def upsert(server, p: pb.CustomerProfile, *paths: str) -> None:
    request = pb.UpsertCustomerRequest(profile=p)
    if paths:
        request.update_mask.paths.extend(paths)
    server.stub.UpsertCustomer(request, timeout=5)


def context(server, customer_id: str, language: str = "", best: bool = True) -> pb.CustomerContextResponse:
    request = pb.CustomerContextRequest(customer_id=customer_id, include_best_actions=best, agent_language=language)
    return server.stub.GetCustomerContext(request, timeout=5)


def agent_call(customer_id: str) -> pb.DecideRequest:
    return pb.DecideRequest(
        customer_id=customer_id,
        origin_channel="agent_desktop",
        event=pb.Event(agent_contact=pb.AgentContact(agent_id="a1", reason="other")),
        top_k=10,
    )


def reasons(response: pb.DecideResponse) -> dict[str, tuple[str, str]]:
    return {r.offer_id: (r.code, r.detail) for r in response.reasons if r.offer_id and not r.channel}


def opened(customer_id: str, product: str | None) -> pb.RecordEventRequest:
    attributes = {} if product is None else {"product": product}
    return pb.RecordEventRequest(
        customer_id=customer_id,
        origin_channel="branch",
        event=pb.Event(custom=pb.CustomEvent(name="product_opened", attributes=attributes)),
    )


def cart(value: float = 80.0) -> pb.Event:
    return pb.Event(cart_abandon=pb.CartAbandon(cart_id="k1", cart_value=value, currency="EUR", item_ids=["s1"]))


# --- products held and offers accepted -------------------------------------------------------------


def test_an_accepted_overdraft_offer_disappears_from_the_agents_best_actions_at_once(server):
    upsert(server, customer("h1"))
    declined = server.stub.Decide(atm_decline("h1"), timeout=5)
    assert declined.action.offer_id == "overdraft_protection"
    before = context(server, "h1")
    assert "agent_overdraft_followup" in [a.offer_id for a in before.best_actions]

    outcome = pb.OutcomeRequest(decision_id=declined.decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED)
    server.stub.ReportOutcome(outcome, timeout=5)

    after = context(server, "h1")  # the next call: nothing to wait for
    assert "agent_overdraft_followup" not in [a.offer_id for a in after.best_actions]
    code, detail = reasons(server.stub.Decide(agent_call("h1"), timeout=5))["agent_overdraft_followup"]
    assert code == "already_accepted"
    assert detail.startswith("overdraft_protection accepted ") and detail.endswith(
        "ago (offer overdraft_protection), within accepted_window 90d"
    )
    again = server.stub.Decide(atm_decline("h1"), timeout=5)
    assert again.action.offer_id != "overdraft_protection"
    assert reasons(again)["overdraft_protection"][0] == "already_accepted"


def test_an_acceptance_reported_twice_is_remembered_once(server, redis_client: redis.Redis):
    upsert(server, customer("h2"))
    declined = server.stub.Decide(atm_decline("h2"), timeout=5)
    for kind in (pb.OUTCOME_KIND_ACCEPTED, pb.OUTCOME_KIND_ACCEPTED, pb.OUTCOME_KIND_CONVERTED):
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=declined.decision_id, outcome=kind), timeout=5)

    [(member, _)] = redis_client.zrange(keys.accepted("h2"), 0, -1, withscores=True)
    assert member.decode() == f"overdraft_protection|overdraft_protection|{declined.decision_id}"


def test_a_held_product_is_not_offered_and_the_decision_says_why(server):
    upsert(server, customer("h3", "current_account", "overdraft_protection"))

    decided = server.stub.Decide(atm_decline("h3"), timeout=5)

    assert decided.action.offer_id != "overdraft_protection"
    assert reasons(decided)["overdraft_protection"] == ("already_held", "the customer holds overdraft_protection")
    view = context(server, "h3")
    assert list(view.profile.holdings) == ["current_account", "overdraft_protection"]
    assert "agent_overdraft_followup" not in [a.offer_id for a in view.best_actions]


def test_a_product_opened_event_adds_a_holding_with_its_journey_entry(server):
    upsert(server, customer("h4", "current_account"))
    declined = server.stub.Decide(atm_decline("h4"), timeout=5)
    assert declined.action.offer_id == "overdraft_protection"

    first = server.stub.RecordEvent(opened("h4", "overdraft_protection"), timeout=5)
    second = server.stub.RecordEvent(opened("h4", "overdraft_protection"), timeout=5)

    assert (first.holding_added, second.holding_added) == ("overdraft_protection", "")
    view = context(server, "h4")
    assert list(view.profile.holdings) == ["current_account", "overdraft_protection"]
    assert view.profile.segment == "mass"  # the rest of the profile is kept
    assert [(e.type, e.fields["name"], e.fields.get("attributes")) for e in view.journey[:2]] == [
        ("custom", "product_opened", '{"product":"overdraft_protection"}')
    ] * 2
    assert reasons(server.stub.Decide(atm_decline("h4"), timeout=5))["overdraft_protection"][0] == "already_held"


def test_a_product_opened_by_an_unknown_customer_creates_a_profile_holding_it(server):
    assert server.stub.RecordEvent(opened("h5", "credit_card"), timeout=5).holding_added == "credit_card"
    view = context(server, "h5", best=False)
    assert view.known and list(view.profile.holdings) == ["credit_card"]


def test_a_decided_product_opened_event_adds_the_holding_too(server):
    upsert(server, customer("h6"))
    request = pb.DecideRequest(customer_id="h6", origin_channel="app", event=opened("h6", "savings_account").event)
    server.stub.Decide(request, timeout=5)
    assert list(context(server, "h6", best=False).profile.holdings) == ["savings_account"]


@pytest.mark.parametrize(
    ("product", "field"),
    [(None, "event.custom.attributes['product']"), ("Gold Card", "event.custom.attributes['product']")],
)
def test_a_product_opened_event_without_a_product_id_is_refused_and_records_nothing(server, product, field):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.RecordEvent(opened("h7", product), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")
    view = context(server, "h7", best=False)
    assert not view.known and list(view.journey) == []


def test_holdings_are_merged_without_a_mask_and_replaced_with_one(server):
    upsert(server, customer("h8", "current_account"))
    server.stub.RecordEvent(opened("h8", "credit_card"), timeout=5)
    upsert(server, customer("h8", "savings_account"))  # a CRM sync that does not know the card yet
    assert list(context(server, "h8", best=False).profile.holdings) == [
        "credit_card",
        "current_account",
        "savings_account",
    ]
    upsert(server, customer("h8", "current_account"), "holdings")  # the mask path replaces the list
    assert list(context(server, "h8", best=False).profile.holdings) == ["current_account"]
    with pytest.raises(grpc.RpcError) as caught:
        upsert(server, customer("h8", "Not an id"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("profile.holdings: 'Not an id' is not a product id")


# --- likely reasons --------------------------------------------------------------------------------


def test_likely_reasons_name_the_atm_decline_first_and_the_earlier_cart_below(server):
    upsert(server, customer("r1"))
    server.stub.RecordEvent(pb.RecordEventRequest(customer_id="r1", origin_channel="web", event=cart()), timeout=5)
    server.stub.Decide(atm_decline("r1", amount=265.0, balance=80.0), timeout=5)

    view = context(server, "r1", best=False)

    assert [r.id for r in view.likely_reasons] == ["atm_declined", "cart_abandoned"]
    declined, abandoned = view.likely_reasons
    assert declined.text == "ATM withdrawal declined just now, short by 185 EUR"
    assert abandoned.text == "Cart of 80 EUR abandoned just now (web)"
    assert declined.score > abandoned.score
    assert [(e.type, e.origin_channel, e.fields["shortfall"]) for e in declined.evidence] == [
        ("atm_decline", "atm", "185")
    ]
    assert [(e.type, e.origin_channel, e.fields["cart_value"]) for e in abandoned.evidence] == [
        ("cart_abandon", "web", "80")
    ]
    assert declined.evidence[0].timestamp_ms >= abandoned.evidence[0].timestamp_ms

    spanish = context(server, "r1", "es", best=False)
    assert [r.text for r in spanish.likely_reasons] == [
        "Retirada en cajero rechazada ahora mismo; le faltaban 185 EUR",
        "Carrito de 80 EUR abandonado ahora mismo (web)",
    ]


def test_likely_reasons_read_the_age_of_what_happened_on_other_channels(server, redis_client: redis.Redis):
    """The journey a channel's traffic left: a cart abandoned on the web yesterday, still open, and an ATM
    decline 12 minutes ago (written as the decision and RecordEvent scripts write them, back in time)."""
    upsert(server, customer("r2"))
    now = time.time()
    yesterday, minutes_ago = now - 26 * 3600, now - 12 * 60 - 20
    cart_fields = {"cart_id": "k1", "cart_value": 80.0, "currency": "EUR", "item_count": 1, "item_ids": ["s1"]}
    decline_fields = {"amount": 265.0, "balance": 80.0, "currency": "EUR", "atm_id": "atm-7", "shortfall": 185.0}
    redis_client.lpush(keys.journey("r2"), codec.encode_journey(yesterday, "cart_abandon", "web", cart_fields))
    redis_client.lpush(keys.journey("r2"), codec.encode_journey(minutes_ago, "atm_decline", "atm", decline_fields))
    redis_client.hset(keys.open_journeys("r2"), "cart:k1", codec.encode_open_journey(yesterday, cart_fields))

    view = context(server, "r2", best=False)

    assert [r.text for r in view.likely_reasons] == [
        "ATM withdrawal declined 12 minutes ago, short by 185 EUR",
        "Cart of 80 EUR abandoned yesterday (web)",  # 26 hours ago in a zone where it is 14:00 now
    ]
    assert [r.id for r in view.likely_reasons] == ["atm_declined", "cart_abandoned"]
    shown = [r.evidence[0].timestamp_ms / 1000 for r in view.likely_reasons]
    assert shown == pytest.approx([minutes_ago, yesterday], abs=0.002)  # the journey keeps milliseconds

    server.stub.RecordEvent(  # the cart is bought: it is no longer a reason to call
        pb.RecordEventRequest(customer_id="r2", event=pb.Event(custom=pb.CustomEvent(name="purchase"))), timeout=5
    )
    assert [r.id for r in context(server, "r2", best=False).likely_reasons] == ["atm_declined", "recent_order"]


def test_a_cart_bought_is_no_reason_while_another_cart_is_open(server):
    """Two carts left on the web (k1 of 80 EUR, then k2 of 30 EUR), then k2 bought in the app: the agent reads
    about k1, the cart still open, with k1 alone as its evidence; not about the cart just bought."""
    upsert(server, customer("r4"))
    for cart_id, value in (("k1", 80.0), ("k2", 30.0)):
        left = pb.CartAbandon(cart_id=cart_id, cart_value=value, currency="EUR", item_ids=["s1"])
        request = pb.RecordEventRequest(customer_id="r4", origin_channel="web", event=pb.Event(cart_abandon=left))
        server.stub.RecordEvent(request, timeout=5)
    bought = server.stub.RecordEvent(
        pb.RecordEventRequest(
            customer_id="r4",
            origin_channel="app",
            event=pb.Event(custom=pb.CustomEvent(name="purchase", attributes={"cart_id": "k2"})),
        ),
        timeout=5,
    )
    assert [j.id for j in bought.closed] == ["k2"]

    view = context(server, "r4", best=False)

    assert [j.id for j in view.open_journeys] == ["k1"]
    reasons = {r.id: r for r in view.likely_reasons}
    assert set(reasons) == {"cart_abandoned", "recent_order"}
    assert reasons["cart_abandoned"].text == "Cart of 80 EUR abandoned just now (web)"
    assert [e.fields["cart_id"] for e in reasons["cart_abandoned"].evidence] == ["k1"]

    server.stub.RecordEvent(  # k1 bought too: no cart is a reason any more
        pb.RecordEventRequest(
            customer_id="r4", event=pb.Event(custom=pb.CustomEvent(name="purchase", attributes={"cart_id": "k1"}))
        ),
        timeout=5,
    )
    assert [r.id for r in context(server, "r4", best=False).likely_reasons] == ["recent_order"]


def test_an_event_recorded_without_its_channel_reads_unknown_channel(server):
    upsert(server, customer("r5"))
    server.stub.RecordEvent(pb.RecordEventRequest(customer_id="r5", event=cart()), timeout=5)  # no origin_channel

    [journey_event] = context(server, "r5", best=False).journey
    assert journey_event.origin_channel == ""
    assert [r.text for r in context(server, "r5", best=False).likely_reasons] == [
        "Cart of 80 EUR abandoned just now (unknown channel)"
    ]
    assert [r.text for r in context(server, "r5", "es", best=False).likely_reasons] == [
        "Carrito de 80 EUR abandonado ahora mismo (canal desconocido)"
    ]


def test_no_journey_no_likely_reason(server):
    upsert(server, customer("r3"))
    assert list(context(server, "r3").likely_reasons) == []


# --- agent scripts ---------------------------------------------------------------------------------


def test_best_actions_carry_their_agent_script_in_the_agents_language(server):
    upsert(server, customer("s1"))
    server.stub.RecordEvent(pb.RecordEventRequest(customer_id="s1", origin_channel="web", event=cart()), timeout=5)

    def script(language: str) -> tuple[str, str]:
        best = {a.offer_id: a for a in context(server, "s1", language).best_actions}
        return best["agent_resume_cart"].agent_script, best["agent_resume_cart"].agent_script_language

    assert script("es") == (
        "Ana, veo el carrito que empezó, 80 en total. ¿Quiere que le complete el pedido ahora?",
        "es",
    )
    english = (
        "Ana, I can see the cart you started, 80 in all. Would you like me to complete the order for you now?",
        "en",
    )
    assert script("en") == english
    assert script("") == english  # no language: the policy's default_language
    assert script("pt-BR") == english  # a language the script is not written in: the default
    assert script("ES-mx") == script("es")


def test_a_bad_agent_language_is_refused(server):
    with pytest.raises(grpc.RpcError) as caught:
        context(server, "s2", "español!")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("agent_language: ")


# --- backward compatibility ------------------------------------------------------------------------


def _contract_before_items_3_and_4() -> descriptor_pool.DescriptorPool:
    """The contract as clients built before holdings, likely reasons and agent scripts know it."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    kept = [m for m in file.message_type if m.name != "LikelyReason"]
    del file.message_type[:]
    file.message_type.extend(kept)
    for message in file.message_type:
        if message.name in ("CustomerProfile", "Alternative", "CustomerContextRequest", "CustomerContextResponse"):
            fields = [f for f in message.field if not 30 <= f.number <= 39]
            del message.field[:]
            message.field.extend(fields)
    pool = descriptor_pool.DescriptorPool()
    mask = descriptor_pb2.FileDescriptorProto()
    field_mask_pb2.DESCRIPTOR.CopyToProto(mask)
    pool.Add(mask)
    pool.Add(file)
    return pool


def test_a_client_built_before_holdings_still_works_and_keeps_them(server):
    pool = _contract_before_items_3_and_4()

    def old(name: str) -> type:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"nba.v1.{name}"))

    assert "holdings" not in old("CustomerProfile").DESCRIPTOR.fields_by_name
    upsert_call = server.channel.unary_unary(
        "/nba.v1.DecisionService/UpsertCustomer",
        request_serializer=old("UpsertCustomerRequest").SerializeToString,
        response_deserializer=old("UpsertCustomerResponse").FromString,
    )
    context_call = server.channel.unary_unary(
        "/nba.v1.DecisionService/GetCustomerContext",
        request_serializer=old("CustomerContextRequest").SerializeToString,
        response_deserializer=old("CustomerContextResponse").FromString,
    )
    upsert(server, customer("b1", "overdraft_protection"))
    old_profile = old("CustomerProfile").FromString(customer("b1").SerializeToString())
    upsert_call(old("UpsertCustomerRequest")(profile=old_profile), timeout=5)  # an old CRM sync, no mask
    server.stub.Decide(atm_decline("b1"), timeout=5)

    answer = context_call(old("CustomerContextRequest")(customer_id="b1", include_best_actions=True), timeout=5)

    assert answer.known and answer.profile.segment == "mass"
    assert list(context(server, "b1").profile.holdings) == ["overdraft_protection"]  # kept by the merge
