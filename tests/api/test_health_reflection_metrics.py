"""What operators and tools see: health, reflection, Prometheus metrics."""

from __future__ import annotations

import re
import urllib.request

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import atm_decline, wait_until


def test_health_reports_serving_for_the_service_and_the_server(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "nba.v1.DecisionService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_until_a_policy_is_published(start_server, redis_client):
    from nba_service.policies.parser import read_policy_dir
    from nba_service.store.policy_store import PolicyStore
    from tests.conftest import SAMPLE_POLICIES

    server = start_server()
    stub = health_pb2_grpc.HealthStub(server.channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="nba.v1.DecisionService"), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING

    PolicyStore(redis_client).publish(read_policy_dir(SAMPLE_POLICIES))

    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_the_services(server):
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"nba.v1.DecisionService", "grpc.health.v1.Health"} <= names

    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="nba.v1.DecisionService")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=5)
    assert next(responses).file_descriptor_response.file_descriptor_proto


def _scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_metrics_count_decisions_outcomes_and_filters(server_with_metrics):
    server = server_with_metrics
    decision = server.stub.Decide(atm_decline("c1"), timeout=5)
    server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=pb.OUTCOME_KIND_DECLINED),
                              timeout=5)

    wait_until(lambda: server.dataplane.models.updates == 1, what="the learner")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(_scrape(server)) for s in family.samples}

    offer = decision.action.offer_id or "none"
    channel = decision.channel or "none"
    assert samples[("nba_decisions_total", (("channel", channel), ("offer", offer)))] == 1
    assert samples[("nba_outcomes_total", (("outcome", "declined"),))] == 1
    assert samples[("nba_decision_duration_seconds_count", (("event_type", "atm_decline"),))] == 1
    assert samples[("nba_model_updates_total", ())] == 1
    assert samples[("nba_grpc_server_handled_total", (("grpc_code", "OK"), ("grpc_method", "Decide")))] == 1
    assert samples[("nba_policy_version", ())] == 1
    assert samples[("nba_model_version", ())] >= 1
    assert any(name == "nba_offers_filtered_total" for name, _ in samples)


def test_metric_names_follow_prometheus_conventions(server_with_metrics):
    server = server_with_metrics
    server.stub.Decide(atm_decline("c1"), timeout=5)
    text = _scrape(server)
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("nba_")]
    assert families
    for family in families:
        assert re.fullmatch(r"nba_[a-z0-9_]+", family.name), family.name
        assert family.documentation, f"{family.name} has no HELP text"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: a histogram needs a base-unit suffix"
        for sample in family.samples:
            assert "customer" not in " ".join(sample.labels), f"{family.name} is labelled by customer"


@pytest.mark.parametrize("method", ["Decide", "ReportOutcome"])
def test_failed_calls_are_counted_by_code(server_with_metrics, method):
    server = server_with_metrics
    import grpc

    with pytest.raises(grpc.RpcError):
        if method == "Decide":
            server.stub.Decide(pb.DecideRequest(), timeout=5)
        else:
            server.stub.ReportOutcome(pb.OutcomeRequest(decision_id="x", outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    code = "INVALID_ARGUMENT" if method == "Decide" else "NOT_FOUND"
    line = f'nba_grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}"}} 1.0'
    # the server counts a call as it completes, which may be just after the client saw the status
    wait_until(lambda: line in _scrape(server), what=line)
