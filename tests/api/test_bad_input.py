"""Bad requests get INVALID_ARGUMENT naming the field, and write nothing."""

from __future__ import annotations

import grpc
import pytest
import redis

from nba_service.store import keys
from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import atm_decline, profile


def _decide_error(server, request: pb.DecideRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(request, timeout=5)
    return caught.value


@pytest.mark.parametrize(("request_", "field"), [
    (pb.DecideRequest(event=pb.Event(app_open=pb.AppOpen())), "customer_id"),
    (pb.DecideRequest(customer_id="c1"), "event"),
    (atm_decline("c1", amount=float("nan")), "event.atm_decline.amount"),
    (atm_decline("c1", amount=-5), "event.atm_decline.amount"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(cart_abandon=pb.CartAbandon(cart_value=float("inf")))),
     "event.cart_abandon.cart_value"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(location=pb.Location(latitude=123))), "event.location.latitude"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(custom=pb.CustomEvent())), "event.custom.name"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(app_open=pb.AppOpen()),
                      attributes={f"k{i}": "v" for i in range(65)}), "attributes"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(app_open=pb.AppOpen()), attributes={"big": "x" * 1025}),
     "attributes['big']"),
    (pb.DecideRequest(customer_id="c1", event=pb.Event(app_open=pb.AppOpen()), top_k=500), "top_k"),
    (pb.DecideRequest(customer_id="x" * 200, event=pb.Event(app_open=pb.AppOpen())), "customer_id"),
    (pb.DecideRequest(customer_id="c1", origin_channel="web|x", event=pb.Event(app_open=pb.AppOpen())),
     "origin_channel"),
])
def test_bad_decide_requests_name_the_field(server, redis_client: redis.Redis, request_, field):
    state = lambda: set(redis_client.keys("nba:{*}:c:*")) | set(redis_client.keys(keys.DECISION_PATTERN))  # noqa: E731
    keys_before = state()

    error = _decide_error(server, request_)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field + ":"), error.details()
    assert state() == keys_before  # nothing half-written


def test_unknown_and_missing_outcome_kinds_are_refused(server):
    decision = server.stub.Decide(atm_decline("c1"), timeout=5)
    for outcome, expected in ((0, "outcome: is required"), (42, "outcome: unknown outcome kind 42")):
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=outcome), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(expected)
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=pb.OUTCOME_KIND_CONVERTED,
                                                    value=float("nan")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("value:")


@pytest.mark.parametrize(("change", "field"), [
    ({"timezone": "Mars/Olympus"}, "profile.timezone"),
    ({"timezone": "America"}, "profile.timezone"),
    ({"customer_id": ""}, "profile.customer_id"),
    ({"reachable_channels": ["Push Notification"]}, "profile.reachable_channels"),
])
def test_bad_profiles_are_refused(server, redis_client: redis.Redis, change, field):
    message = profile("c1")
    for name, value in change.items():
        if isinstance(value, list):
            del getattr(message, name)[:]
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=message), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":")
    assert not redis_client.keys("nba:{*}:c:*")


def test_a_bad_request_in_a_stream_gets_its_status_and_the_stream_goes_on(server):
    requests = [atm_decline("c1"), pb.DecideRequest(customer_id="c1"), atm_decline("c1")]
    responses = list(server.stub.DecideStream(iter(requests), timeout=5))
    assert [bool(r.decision_id) for r in responses] == [True, False, True]
    assert responses[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[1].status.message.startswith("event:")


def test_expired_deadline_is_deadline_exceeded_not_unknown(server):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(atm_decline("c1"), timeout=0.000001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_no_published_policy_is_failed_precondition(start_server):
    server = start_server()
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(atm_decline("c1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nba policy publish" in caught.value.details()


def test_context_needs_at_least_one_event(server):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c1", max_events=0), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("max_events:")
