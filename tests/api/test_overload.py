"""Holding up under overload and hostile input: admission control, deadlines, malformed requests,
streams that stop reading, connection limits, the drain on SIGTERM, health while Redis is away."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service.store import keys
from nba_service.api import converters
from nba_service.app.server import server_options
from nba_service.dataplane import AbandonedError
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.settings import Settings
from nba_service.store.policy_store import PolicyStore
from tests.api.test_redis_outage import RedisProcess, _free_port
from tests.conftest import SAMPLE_POLICIES, atm_decline, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Gate:
    """Holds every decision of a server until :meth:`open` (its data plane's decide awaits an event)."""

    def __init__(self, server) -> None:
        self.server = server
        self.event = asyncio.Event()
        original = server.dataplane.decide

        async def held(request, wanted=None):
            await self.event.wait()
            return await original(request, wanted)

        server.dataplane.decide = held

    def open(self) -> None:
        self.server.loop.call_soon_threadsafe(self.event.set)


def handled(server, method: str, code: str) -> float:
    value = server.server.metrics.registry.get_sample_value(
        "nba_grpc_server_handled_total", {"grpc_method": method, "grpc_code": code}
    )
    return value or 0.0


def decisions(server) -> float:
    registry = server.server.metrics.registry
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "nba_decisions"
        for sample in family.samples
        if sample.name == "nba_decisions_total"
    )


def in_progress(server) -> int:
    return server.server.admission.in_progress


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service="nba.v1.DecisionService"), timeout=5).status


def trailing(error: grpc.RpcError) -> dict[str, str]:
    return dict(error.trailing_metadata() or ())


# --- admission ------------------------------------------------------------------------------------


def test_beyond_the_limit_a_call_is_refused_at_once_with_a_retry_hint_and_counted(start_server, published):
    server = start_server(max_decisions_in_progress=1, decisions_at_once=1)
    gate = Gate(server)
    first = server.stub.Decide.future(atm_decline("c1"), timeout=10)
    wait_until(lambda: in_progress(server) == 1, what="the first decision to be in progress")

    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(atm_decline("c2"), timeout=5)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after" in caught.value.details()
    hints = trailing(caught.value)
    assert int(hints["retry-after-ms"]) > 0 and hints["grpc-retry-pushback-ms"] == hints["retry-after-ms"]
    gate.open()
    assert first.result().decision_id
    wait_until(lambda: handled(server, "Decide", "RESOURCE_EXHAUSTED") == 1, what="the refusal to be counted")
    wait_until(lambda: handled(server, "Decide", "OK") == 1, what="the answer to be counted")
    assert decisions(server) == 1


def test_a_deadline_shorter_than_the_expected_time_is_refused_before_any_work(server, redis_client):
    state = lambda: set(redis_client.keys("nba:{*}:c:*")) | set(redis_client.keys(keys.DECISION_PATTERN))  # noqa: E731
    keys_before = state()
    server.server.admission.service = 0.5  # what the server measured: a decision takes 500 ms here now

    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(atm_decline("c1"), timeout=0.2)

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "nothing was done" in caught.value.details()
    assert state() == keys_before
    wait_until(lambda: handled(server, "Decide", "DEADLINE_EXCEEDED") == 1, what="the refusal to be counted")


def test_a_call_whose_deadline_passes_while_it_waits_its_turn_is_neither_decided_nor_recorded(start_server, published):
    server = start_server(decisions_at_once=1)
    gate = Gate(server)
    first = server.stub.Decide.future(atm_decline("c1"), timeout=10)
    wait_until(lambda: in_progress(server) == 1, what="the first decision to be in progress")
    second = server.stub.Decide.future(atm_decline("c2"), timeout=1.0)  # reaches the server on a loaded machine
    with pytest.raises(grpc.RpcError) as caught:
        second.result()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # counted DEADLINE_EXCEEDED, or CANCELLED when gRPC cancels the call for its deadline before nba answers
    wait_until(lambda: handled(server, "Decide", "DEADLINE_EXCEEDED") + handled(server, "Decide", "CANCELLED") == 1,
               what="the expired call to be counted")
    wait_until(lambda: in_progress(server) == 1, what="the expired call to leave the queue")

    gate.open()
    assert first.result().decision_id
    assert decisions(server) == 1
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c2"), timeout=5)
    assert not view.recent_decisions


def test_a_decision_is_not_recorded_once_its_caller_has_gone(server, redis_client):
    request = converters.decision_request_from_proto(atm_decline("c1"))
    with pytest.raises(AbandonedError):
        server.call(server.dataplane.decide(request, lambda: False))
    assert not redis_client.keys(keys.DECISION_PATTERN)
    assert server.server.metrics.registry.get_sample_value("nba_decisions_abandoned_total") == 1
    assert decisions(server) == 0


def test_a_call_its_client_cancels_is_counted_cancelled(server):
    gate = Gate(server)
    call = server.stub.Decide.future(atm_decline("c1"), timeout=10)
    wait_until(lambda: in_progress(server) == 1, what="the decision to be in progress")
    call.cancel()
    wait_until(lambda: handled(server, "Decide", "CANCELLED") == 1, what="the cancelled call to be counted")
    gate.open()
    wait_until(lambda: in_progress(server) == 0, what="the decision to leave")
    assert decisions(server) == 0


# --- malformed input ------------------------------------------------------------------------------


def _bad_utf8() -> bytes:
    raw = pb.DecideRequest(customer_id="abc", event=pb.Event(app_open=pb.AppOpen())).SerializeToString()
    return raw.replace(b"abc", b"a\xffc")


def test_corrupt_requests_are_invalid_argument_counted_and_logged_once_without_a_traceback(server, caplog):
    caplog.set_level(logging.DEBUG)
    decide = server.channel.unary_unary("/nba.v1.DecisionService/Decide")
    upsert = server.channel.unary_unary("/nba.v1.DecisionService/UpsertCustomer")
    stream = server.channel.stream_stream("/nba.v1.DecisionService/DecideStream")

    for call, payload in [(decide, b"\xff\xff\xff\xff"), (decide, _bad_utf8()), (upsert, b"\x0a\xff\xff")] * 5:
        with pytest.raises(grpc.RpcError) as caught:
            call(payload, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert caught.value.details().startswith("request: not a valid")
    good = pb.DecideRequest(customer_id="c1", event=pb.Event(app_open=pb.AppOpen())).SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        list(stream(iter([good, b"\xff\xff\xff\xff"]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    wait_until(lambda: handled(server, "Decide", "INVALID_ARGUMENT") == 10, what="the refusals to be counted")
    assert handled(server, "UpsertCustomer", "INVALID_ARGUMENT") == 5
    wait_until(lambda: handled(server, "DecideStream", "INVALID_ARGUMENT") == 1, what="the stream to be counted")
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"
    assert "Traceback" not in caplog.text
    malformed = [r for r in caplog.records if "not a valid message" in r.getMessage()]
    assert len(malformed) == 3  # one line per method, not per call


def test_redis_failures_are_logged_once_per_interval(server, caplog):
    caplog.set_level(logging.WARNING, logger="nba_service.dataplane")
    for _ in range(100):
        server.dataplane._unavailable("read_context", redis.ConnectionError("connection refused"))
    assert len([r for r in caplog.records if "redis read_context failed" in r.getMessage()]) == 1
    registry = server.server.metrics.registry
    assert registry.get_sample_value("nba_redis_errors_total", {"operation": "read_context"}) == 100


# --- streams and connections ----------------------------------------------------------------------


def test_a_stream_whose_client_stops_reading_stops_deciding(server):
    # the client's receive window stays at 64 KiB (no BDP probing): the window is what stops the server
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)])
    stub = pb_grpc.DecisionServiceStub(channel)

    def requests():
        n = 0
        while True:  # as many as the server will take
            n += 1
            yield atm_decline(f"s{n % 50}")

    responses = stub.DecideStream(requests(), timeout=60)
    assert next(responses).decision_id  # read one answer, then no more
    seen = {"value": -1.0, "since": time.monotonic()}

    def stopped() -> bool:
        value, now = decisions(server), time.monotonic()
        if value != seen["value"]:
            seen.update(value=value, since=now)
        return now - seen["since"] > 0.5  # no new decision for half a second

    wait_until(stopped, what="the stream to stop deciding")
    assert 1 < decisions(server) < 500  # what the client's window holds, not what it could send
    assert in_progress(server) == 0
    responses.cancel()
    channel.close()


def test_options_limit_streams_connections_idle_and_age():
    options = dict(server_options(Settings(), max_connections=1000))
    assert options["grpc.max_concurrent_streams"] == 64
    assert options["grpc.max_allowed_incoming_connections"] == 1000
    assert options["grpc.max_connection_idle_ms"] == 5000
    assert options["grpc.max_connection_age_ms"] == 600_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.server_handshake_timeout_ms"] == 5000
    assert options["grpc.keepalive_time_ms"] == 30_000


def _new_client(port: int) -> grpc.StatusCode:
    """A first call from a client with a connection of its own."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        try:
            pb_grpc.DecisionServiceStub(channel).Decide(atm_decline("c2"), timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_connections_beyond_the_limit_are_refused_at_once(start_server, published):
    server = start_server(max_connections=2)
    assert server.stub.Decide(atm_decline("c1"), timeout=5).decision_id  # the fixture's connection: 1 of 2
    silent = socket.create_connection(("127.0.0.1", server.port))  # 2 of 2, never sends a byte

    assert _new_client(server.port) == grpc.StatusCode.UNAVAILABLE  # closed as it arrives
    silent.close()
    wait_until(lambda: _new_client(server.port) == grpc.StatusCode.OK, what="a new client to get a place")


def test_a_connection_that_never_speaks_is_closed_after_the_handshake_timeout(start_server, published):
    server = start_server(handshake_timeout_seconds=0.3)
    silent = socket.create_connection(("127.0.0.1", server.port))
    silent.settimeout(10)
    while silent.recv(65536):  # the server's SETTINGS, then the end of the connection
        pass
    silent.close()


# --- the drain ------------------------------------------------------------------------------------


def test_sigterm_drain_finishes_calls_in_flight_and_answers_new_ones_unavailable(start_server, published):
    server = start_server(grace_seconds=10.0)
    gate = Gate(server)
    in_flight = [server.stub.Decide.future(atm_decline(f"c{k}"), timeout=20) for k in range(5)]
    wait_until(lambda: in_progress(server) == 5, what="5 decisions in progress")
    watcher = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
    assert health(watcher) == SERVING

    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(), server.loop)
    wait_until(lambda: health(watcher) == NOT_SERVING, what="health NOT_SERVING")
    late = server.stub.Decide.future(atm_decline("c9"), timeout=20)  # arrives while draining: held
    wait_until(lambda: server.server.calls.last_arrival > 0 and not late.done(), what="the late call to arrive")
    gate.open()  # the calls in flight finish; then the drain ends

    stopping.result(15)
    assert all(call.result().decision_id for call in in_flight)
    with pytest.raises(grpc.RpcError) as caught:
        late.result()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in caught.value.details()
    watcher.close()


def test_calls_still_running_when_the_grace_period_ends_are_answered_unavailable(start_server, published):
    server = start_server(grace_seconds=1.0)
    Gate(server)  # never opened
    in_flight = [server.stub.Decide.future(atm_decline(f"c{k}"), timeout=20) for k in range(3)]
    wait_until(lambda: in_progress(server) == 3, what="3 decisions in progress")

    server.call(server.server.stop())

    for call in in_flight:
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable, not CANCELLED
    assert handled(server, "Decide", "UNAVAILABLE") == 3


# --- health and the state store -------------------------------------------------------------------


@pytest.mark.standalone_only  # a Redis of its own, started and stopped by the test
def test_health_is_not_serving_while_redis_does_not_answer(start_server, tmp_path):
    own = RedisProcess(_free_port(), tmp_path)
    own.start()
    try:
        url = f"redis://127.0.0.1:{own.port}/0"
        client = redis.Redis.from_url(url)
        PolicyStore(client).publish(read_policy_dir(SAMPLE_POLICIES))
        client.close()
        server = start_server(redis_url=url, policy_check_seconds=0.1)
        assert health(server.channel) == SERVING

        own.stop()
        wait_until(lambda: health(server.channel) == NOT_SERVING, what="health NOT_SERVING without Redis")
        assert server.server.metrics.registry.get_sample_value("nba_state_store_up") == 0

        own.start()
        wait_until(lambda: health(server.channel) == SERVING, what="health SERVING once Redis is back")
        assert server.stub.Decide(atm_decline("c1"), timeout=5).decision_id
    finally:
        own.stop()


def test_many_concurrent_calls_over_a_tiny_limit_end_ok_or_refused_never_unknown(start_server, published):
    server = start_server(max_decisions_in_progress=4, decisions_at_once=2)
    calls = [server.stub.Decide.future(atm_decline(f"c{k}"), timeout=10) for k in range(64)]
    errors = [call.exception() for call in calls]
    codes = {grpc.StatusCode.OK if e is None else e.code() for e in errors}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.OK in codes
    returned = sum(1 for e in errors if e is None)
    wait_until(lambda: decisions(server) == returned, what="every decision recorded to be returned")


@pytest.mark.standalone_only  # a Redis of its own, started and stopped by the test
def test_with_a_fallback_declared_decide_answers_it_degraded_while_redis_is_down(start_server, tmp_path):
    """The sample policies with a fallback for atm_decline (the ATM screen), none for cart_abandon."""
    files = read_policy_dir(SAMPLE_POLICIES)
    files["fallbacks.yaml"] = (
        "fallbacks:\n  - event: atm_decline\n    offer: atm_smaller_withdrawal\n    channel: atm_screen\n"
    )
    own = RedisProcess(_free_port(), tmp_path)
    own.start()
    try:
        url = f"redis://127.0.0.1:{own.port}/0"
        client = redis.Redis.from_url(url)
        PolicyStore(client).publish(files)
        client.close()
        server = start_server(redis_url=url, policy_check_seconds=0.1, metrics_port=0)
        normal = server.stub.Decide(atm_decline("f1", amount=100.0, balance=40.0), timeout=5)
        assert normal.decision_id and not normal.degraded

        own.stop()
        answer = server.stub.Decide(atm_decline("f1", amount=100.0, balance=40.0), timeout=5)
        assert answer.degraded and not answer.decision_id  # nothing recorded: no outcome to report
        assert (answer.action.offer_id, answer.channel) == ("atm_smaller_withdrawal", "atm_screen")
        assert "Withdraw 40 EUR instead?" in answer.action.content
        assert [r.code for r in answer.reasons] == ["fallback"]
        registry = server.server.metrics.registry
        assert registry.get_sample_value("nba_decisions_degraded_total", {"event_type": "atm_decline"}) == 1
        cart = pb.DecideRequest(customer_id="f1", origin_channel="web",
                                event=pb.Event(cart_abandon=pb.CartAbandon(cart_id="k1", cart_value=80.0,
                                                                           currency="EUR")))
        with pytest.raises(grpc.RpcError) as failure:  # no fallback declared: UNAVAILABLE, as before
            server.stub.Decide(cart, timeout=5)
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE

        own.start()
        wait_until(lambda: health(server.channel) == SERVING, what="health SERVING once Redis is back")
        again = server.stub.Decide(atm_decline("f2", amount=100.0, balance=40.0), timeout=5)
        assert again.decision_id and not again.degraded
    finally:
        own.stop()
