"""Issue 14: a DecideStream survives a bad message (a status of its own per request), and RecordEvent
records a moment without a decision (a purchase closes the cart). Real gRPC server, real Redis."""

from __future__ import annotations

import json

import grpc
import pytest
import redis
from google.protobuf import descriptor_pb2, descriptor_pool, field_mask_pb2, message_factory

from nba_service.api.admission import Draining, Overloaded, TooLate
from nba_service.domain import StoreUnavailableError
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from tests.conftest import atm_decline, daytime_zone, profile

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def sample(server, name: str, **labels: str) -> float:
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


def decisions(server) -> float:
    return sum(
        s.value
        for family in server.server.metrics.registry.collect()
        if family.name == "nba_decisions"
        for s in family.samples
        if s.name == "nba_decisions_total"
    )


def cart(customer_id: str, cart_id: str = "k1", items: tuple[str, ...] = ("sku1", "sku2")) -> pb.Event:
    return pb.Event(cart_abandon=pb.CartAbandon(cart_id=cart_id, cart_value=80.0, currency="EUR", item_ids=items))


def purchase(cart_id: str = "") -> pb.Event:
    return pb.Event(custom=pb.CustomEvent(name="purchase", attributes={"cart_id": cart_id} if cart_id else {}))


# --- DecideStream: a status per message -----------------------------------------------------------


def test_a_bad_message_gets_its_own_status_and_the_next_one_is_answered(server, redis_client: redis.Redis):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", timezone=daytime_zone())), timeout=5)
    requests = [
        atm_decline("c1"),
        pb.DecideRequest(request_id="r2", event=pb.Event(app_open=pb.AppOpen())),
        atm_decline("c1"),
    ]
    requests[0].request_id, requests[2].request_id = "r1", "r3"

    call = server.stub.DecideStream(iter(requests), timeout=10)
    first, refused, third = list(call)

    assert call.code() == grpc.StatusCode.OK  # the stream went on to its end
    assert first.decision_id and not first.HasField("status")
    assert refused.request_id == "r2"
    assert refused.status.code == INVALID_ARGUMENT
    assert refused.status.message.startswith("customer_id:"), refused.status.message
    assert refused.no_action and not refused.decision_id and not refused.HasField("action")
    assert third.request_id == "r3" and third.decision_id and not third.HasField("status")
    assert decisions(server) == 2
    assert len(redis_client.keys(keys.DECISION_PATTERN)) == 2  # the refused request recorded nothing
    assert sample(server, "nba_stream_messages_refused_total", grpc_code="INVALID_ARGUMENT") == 1
    assert sample(server, "nba_grpc_server_handled_total", grpc_method="DecideStream", grpc_code="OK") == 1


def test_a_bad_request_id_is_not_echoed(server):
    bad = pb.DecideRequest(customer_id="c1", request_id="x" * 200, event=pb.Event(app_open=pb.AppOpen()))
    (refused,) = server.stub.DecideStream(iter([bad]), timeout=10)
    assert refused.status.code == INVALID_ARGUMENT
    assert refused.status.message.startswith("request_id:")
    assert refused.request_id == ""


def test_refusals_and_an_unreachable_store_are_per_message(server, monkeypatch):
    real = server.dataplane.decide

    async def decide(request, wanted=None):
        if request.customer_id == "busy":
            raise Overloaded(10, 0.25)
        if request.customer_id == "down":
            raise StoreUnavailableError("state store unavailable during read_context; nothing was recorded, retry")
        if request.customer_id == "bug":
            raise KeyError("a bug")
        return await real(request, wanted)

    monkeypatch.setattr(server.dataplane, "decide", decide)
    requests = [atm_decline(c) for c in ("busy", "c1", "down", "bug", "c2")]

    answers = list(server.stub.DecideStream(iter(requests), timeout=10))

    assert [a.status.code for a in answers] == [
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        0,
        grpc.StatusCode.UNAVAILABLE.value[0],
        grpc.StatusCode.INTERNAL.value[0],
        0,
    ]
    assert answers[0].status.retry_after_ms == 250
    assert "nothing was recorded, retry" in answers[2].status.message
    assert answers[3].status.message == "internal error in DecideStream; see the server log"
    assert answers[1].decision_id and answers[4].decision_id


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TooLate(0.01, 0.05), grpc.StatusCode.DEADLINE_EXCEEDED),
        (Draining(), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_the_streams_deadline_and_the_drain_still_end_it(server, monkeypatch, error, code):
    real = server.dataplane.decide

    async def decide(request, wanted=None):
        if request.customer_id == "stop":
            raise error
        return await real(request, wanted)

    monkeypatch.setattr(server.dataplane, "decide", decide)
    responses = server.stub.DecideStream(iter([atm_decline("c1"), atm_decline("stop"), atm_decline("c2")]), timeout=10)
    assert next(responses).decision_id
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() == code


def _old_contract() -> descriptor_pool.DescriptorPool:
    """The contract as clients built before issue 14 know it: no Status, no RecordEvent."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    new = {"Status", "RecordEventRequest", "RecordEventResponse"}
    kept = [m for m in file.message_type if m.name not in new]
    del file.message_type[:]
    file.message_type.extend(kept)
    response = next(m for m in file.message_type if m.name == "DecideResponse")
    fields = [f for f in response.field if f.name != "status"]
    del response.field[:]
    response.field.extend(fields)
    methods = [m for m in file.service[0].method if m.name != "RecordEvent"]
    del file.service[0].method[:]
    file.service[0].method.extend(methods)
    pool = descriptor_pool.DescriptorPool()
    mask = descriptor_pb2.FileDescriptorProto()
    field_mask_pb2.DESCRIPTOR.CopyToProto(mask)
    pool.Add(mask)
    pool.Add(file)
    return pool


def test_a_client_built_before_the_status_field_still_works(server):
    pool = _old_contract()
    old_request = message_factory.GetMessageClass(pool.FindMessageTypeByName("nba.v1.DecideRequest"))
    old_response = message_factory.GetMessageClass(pool.FindMessageTypeByName("nba.v1.DecideResponse"))
    assert "status" not in old_response.DESCRIPTOR.fields_by_name
    stream = server.channel.stream_stream(
        "/nba.v1.DecisionService/DecideStream",
        request_serializer=old_request.SerializeToString,
        response_deserializer=old_response.FromString,
    )
    decide = server.channel.unary_unary(
        "/nba.v1.DecisionService/Decide",
        request_serializer=old_request.SerializeToString,
        response_deserializer=old_response.FromString,
    )
    good = old_request.FromString(atm_decline("c1").SerializeToString())
    bad = old_request(customer_id="c1", request_id="r2")

    assert decide(good, timeout=5).decision_id
    answers = list(stream(iter([good, bad, good]), timeout=10))

    # the refused request reads as "no action" with no decision id: nothing sent, no outcome to report
    assert [(bool(a.decision_id), a.no_action) for a in answers][1] == (False, True)
    assert answers[1].request_id == "r2"
    assert answers[0].decision_id and answers[2].decision_id


# --- RecordEvent -----------------------------------------------------------------------------------


def test_a_recorded_purchase_closes_the_open_cart_without_a_decision(server, redis_client: redis.Redis):
    server.stub.Decide(pb.DecideRequest(customer_id="c4", origin_channel="web", event=cart("c4")), timeout=5)
    decided, decision_keys = decisions(server), set(redis_client.keys(keys.DECISION_PATTERN))
    index = redis_client.zrange(keys.decision_index("c4"), 0, -1)
    assert len(index) == 1

    recorded = server.stub.RecordEvent(
        pb.RecordEventRequest(customer_id="c4", origin_channel="store", event=purchase("k1"), request_id="pos-1"),
        timeout=5,
    )

    assert recorded.request_id == "pos-1" and recorded.timestamp_ms > 0
    assert not recorded.HasField("opened")
    assert [(j.kind, j.id) for j in recorded.closed] == [("cart", "k1")]
    assert json.loads(recorded.closed[0].fields["item_ids"]) == ["sku1", "sku2"]
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c4"), timeout=5)
    assert list(view.open_journeys) == []
    assert [(e.type, e.origin_channel) for e in view.journey] == [("custom", "store"), ("cart_abandon", "web")]
    assert view.journey[0].fields["name"] == "purchase"
    assert len(view.recent_decisions) == 1  # the cart's decision only
    assert decisions(server) == decided
    assert set(redis_client.keys(keys.DECISION_PATTERN)) == decision_keys
    assert redis_client.zrange(keys.decision_index("c4"), 0, -1) == index
    assert sample(server, "nba_events_recorded_total", event_type="custom") == 1


def test_a_recorded_cart_keeps_its_items_and_writes_no_decision(server, redis_client: redis.Redis):
    opened = server.stub.RecordEvent(
        pb.RecordEventRequest(customer_id="c5", origin_channel="web", event=cart("c5", "k9", ("a-1", "b-2", "c-3"))),
        timeout=5,
    )

    assert (opened.opened.kind, opened.opened.id) == ("cart", "k9") and list(opened.closed) == []
    assert json.loads(opened.opened.fields["item_ids"]) == ["a-1", "b-2", "c-3"]
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c5"), timeout=5)
    (open_cart,) = view.open_journeys
    assert json.loads(open_cart.fields["item_ids"]) == ["a-1", "b-2", "c-3"]
    assert open_cart.fields["item_count"] == "3" and open_cart.fields["cart_value"] == "80"
    assert json.loads(view.journey[0].fields["item_ids"]) == ["a-1", "b-2", "c-3"]
    assert list(view.recent_decisions) == []
    assert redis_client.keys(keys.DECISION_PATTERN) == [] and decisions(server) == 0
    assert not redis_client.exists(keys.contacts("c5"), keys.decision_index("c5"))
    assert sample(server, "nba_events_recorded_total", event_type="cart_abandon") == 1


def test_a_decided_cart_keeps_its_items_too(server):
    server.stub.Decide(pb.DecideRequest(customer_id="c6", origin_channel="web", event=cart("c6")), timeout=5)
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c6"), timeout=5)
    assert json.loads(view.journey[0].fields["item_ids"]) == ["sku1", "sku2"]
    assert json.loads(view.open_journeys[0].fields["item_ids"]) == ["sku1", "sku2"]


def test_a_purchase_without_a_cart_id_closes_every_cart(server):
    for cart_id in ("k1", "k2"):
        server.stub.RecordEvent(pb.RecordEventRequest(customer_id="c7", event=cart("c7", cart_id)), timeout=5)

    recorded = server.stub.RecordEvent(pb.RecordEventRequest(customer_id="c7", event=purchase()), timeout=5)
    again = server.stub.RecordEvent(pb.RecordEventRequest(customer_id="c7", event=purchase("k1")), timeout=5)

    assert sorted(j.id for j in recorded.closed) == ["k1", "k2"]
    assert list(again.closed) == []  # nothing left to close; the purchase is still in the journey
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c7"), timeout=5)
    assert list(view.open_journeys) == []
    assert [e.type for e in view.journey] == ["custom", "custom", "cart_abandon", "cart_abandon"]


def test_record_event_needs_no_published_policy(start_server):
    server = start_server()
    recorded = server.stub.RecordEvent(pb.RecordEventRequest(customer_id="c8", event=cart("c8")), timeout=5)
    assert recorded.opened.id == "k1"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RecordEventRequest(customer_id="c1"), "event"),
        (pb.RecordEventRequest(event=purchase()), "customer_id"),
        (pb.RecordEventRequest(customer_id="c1", origin_channel="web|x", event=purchase()), "origin_channel"),
        (pb.RecordEventRequest(customer_id="c1", event=pb.Event(custom=pb.CustomEvent())), "event.custom.name"),
        (
            pb.RecordEventRequest(customer_id="c1", event=cart("c1", items=tuple(f"s{i}" for i in range(501)))),
            "event.cart_abandon.item_ids",
        ),
        (
            pb.RecordEventRequest(customer_id="c1", event=cart("c1", items=("ok", "x" * 129))),
            "event.cart_abandon.item_ids[1]",
        ),
        (pb.RecordEventRequest(customer_id="c1", event=cart("c1", items=("ok", ""))), "event.cart_abandon.item_ids[1]"),
        (pb.RecordEventRequest(customer_id="c1", event=purchase(), request_id="r" * 200), "request_id"),
    ],
)
def test_bad_events_are_refused_naming_the_field(server, redis_client: redis.Redis, request_, field):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.RecordEvent(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":"), caught.value.details()
    assert not redis_client.keys("nba:{*}:c:*")


def test_a_decide_request_over_the_item_limit_is_refused_too(server):
    request = pb.DecideRequest(customer_id="c1", event=cart("c1", items=tuple(f"s{i}" for i in range(501))))
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(request, timeout=5)
    assert caught.value.details() == "event.cart_abandon.item_ids: has 501 items, at most 500 are allowed"
