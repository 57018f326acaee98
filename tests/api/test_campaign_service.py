"""The gRPC CampaignService over a real server on a free port, with an auth file: roles, start, dry run, status,
suspend, resume, history, and its status codes (nba_service/api/campaign_service.py)."""

from __future__ import annotations

import pathlib
import threading
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from nba_service.api.auth import new_token
from nba_service.campaigns.lease import RunLease
from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.run import RunReport, RunStore
from nba_service.cli import main
from nba_service.proto.nba.v1 import campaign_pb2 as pb
from nba_service.proto.nba.v1 import campaign_pb2_grpc as pb_grpc
from tests.campaigns.test_campaign_run import run_campaign
from tests.conftest import SAMPLE_POLICIES, wait_until

CAMPAIGN = "overdraft_cross_sell"
IN_SEGMENT = 147  # of the 400 demo customers


@pytest.fixture
def tokens(tmp_path: pathlib.Path) -> dict[str, str]:
    roles = {"marketer": "marketing", "ops": "admin", "atm": "decide", "console": "viewer"}
    made = {name: new_token() for name in roles}
    lines = ["clients:"]
    for name, (_, digest) in made.items():
        lines += [f"  - name: {name}", f'    token_sha256: "{digest}"', f"    roles: [{roles[name]}]"]
    (tmp_path / "auth.yaml").write_text("\n".join(lines) + "\n")
    return {name: token for name, (token, _) in made.items()}


@pytest.fixture
def service(start_server: Any, redis_url: str, tmp_path: pathlib.Path, tokens: dict[str, str]) -> Any:
    assert main(["policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url]) == 0
    assert main(["customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), "--redis-url", redis_url]) == 0
    server = start_server(auth_file=str(tmp_path / "auth.yaml"))
    server.campaigns = pb_grpc.CampaignServiceStub(server.channel)
    return server


def as_(tokens: dict[str, str], name: str) -> dict[str, Any]:
    return {"metadata": (("authorization", f"Bearer {tokens[name]}"),), "timeout": 30}


def fails(call: Any, request: Any, code: grpc.StatusCode, text: str, **options: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, **options)
    assert caught.value.code() == code, caught.value.details()
    assert text in caught.value.details()


def done(service: Any, tokens: dict[str, str], run_id: str) -> pb.CampaignRun:
    get = service.campaigns.GetCampaignRun
    request = pb.GetCampaignRunRequest(campaign=CAMPAIGN, run_id=run_id)
    wait_until(lambda: get(request, **as_(tokens, "marketer")).status == "done", 60, f"run {run_id} to end")
    return get(request, **as_(tokens, "marketer"))


def test_only_marketing_and_admin_callers_may_use_it_and_bad_requests_name_the_field(service, tokens):
    stub = service.campaigns
    start = pb.StartCampaignRequest(campaign=CAMPAIGN, dry_run=True)
    for caller in ("atm", "console"):
        fails(
            stub.StartCampaign,
            start,
            grpc.StatusCode.PERMISSION_DENIED,
            "lacks the role 'marketing'",
            **as_(tokens, caller),
        )
        fails(
            stub.ListCampaignRuns,
            pb.ListCampaignRunsRequest(campaign=CAMPAIGN),
            grpc.StatusCode.PERMISSION_DENIED,
            "lacks the role 'marketing'",
            **as_(tokens, caller),
        )
    fails(stub.StartCampaign, start, grpc.StatusCode.UNAUTHENTICATED, "credentials required", timeout=10)
    fails(
        stub.StartCampaign,
        pb.StartCampaignRequest(campaign="no_such"),
        grpc.StatusCode.NOT_FOUND,
        "no campaign 'no_such' in live policy version 1 (campaigns: overdraft_cross_sell)",
        **as_(tokens, "marketer"),
    )
    fails(
        stub.StartCampaign,
        pb.StartCampaignRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "campaign: is required",
        **as_(tokens, "marketer"),
    )
    fails(
        stub.StartCampaign,
        pb.StartCampaignRequest(campaign=CAMPAIGN, limit=-5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit: must be 0 (no limit) or more, got -5",
        **as_(tokens, "marketer"),
    )
    fails(
        stub.GetCampaignRun,
        pb.GetCampaignRunRequest(campaign=CAMPAIGN),
        grpc.StatusCode.NOT_FOUND,
        f"campaign {CAMPAIGN} has no run yet",
        **as_(tokens, "ops"),
    )

    preview = stub.StartCampaign(start, **as_(tokens, "ops"))  # admin may too; a dry run answers when done
    assert preview.run_id == "" and preview.run.dry_run and preview.run.status == "done"
    assert preview.run.in_segment == preview.run.decided == IN_SEGMENT
    assert preview.run.delivered_total == sum(preview.run.delivered.values()) > 0
    assert stub.ListCampaignRuns(pb.ListCampaignRunsRequest(campaign=CAMPAIGN), **as_(tokens, "marketer")).runs == []


def test_start_follow_suspend_resume_and_list_runs(service, tokens, redis_url, redis_client):
    stub, marketer = service.campaigns, as_(tokens, "marketer")

    def interrupted(report: RunReport) -> None:
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):  # a run interrupted after its first batch: running, no process on it
        run_campaign(redis_url, CAMPAIGN, batch_size=50, progress=interrupted)
    first = RunStore(redis_client).latest(CAMPAIGN)
    assert first is not None and first.status == "running"
    start = pb.StartCampaignRequest(campaign=CAMPAIGN)
    fails(
        stub.StartCampaign,
        start,
        grpc.StatusCode.FAILED_PRECONDITION,
        f"run {first.run_id} of {CAMPAIGN} is running: `nba campaign resume {CAMPAIGN}` continues it",
        **marketer,
    )

    suspended = stub.SuspendCampaign(pb.SuspendCampaignRequest(campaign=CAMPAIGN), **marketer)
    assert suspended.run_id == first.run_id and suspended.status == "suspended" and 0 < suspended.scanned < 400
    fails(
        stub.SuspendCampaign,
        pb.SuspendCampaignRequest(campaign=CAMPAIGN),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"run {first.run_id} of {CAMPAIGN} is suspended",
        **marketer,
    )

    lease = RunLease(redis_client, CAMPAIGN)  # another process works the campaign
    assert lease.take() is None
    try:
        fails(
            stub.ResumeCampaign,
            pb.ResumeCampaignRequest(campaign=CAMPAIGN),
            grpc.StatusCode.FAILED_PRECONDITION,
            f"run {first.run_id} of {CAMPAIGN} is running in process ",
            **marketer,
        )
    finally:
        lease.release()
    resumed = stub.ResumeCampaign(pb.ResumeCampaignRequest(campaign=CAMPAIGN), **marketer)
    assert resumed.run_id == first.run_id and resumed.status == "running"
    finished = done(service, tokens, first.run_id)
    assert finished.scanned == 400 and finished.in_segment == finished.decided == IN_SEGMENT  # as if not stopped
    assert finished.delivered_total == sum(finished.delivered.values()) > 0

    started = stub.StartCampaign(start, **as_(tokens, "ops"))  # a new run reaches nobody new
    assert started.run_id and started.run.run_id == started.run_id and started.run.started_by == "grpc:ops"
    second = done(service, tokens, started.run_id)
    assert second.delivered_total == 0 and second.suppressed["already_reached"] == finished.delivered_total

    listed = stub.ListCampaignRuns(pb.ListCampaignRunsRequest(campaign=CAMPAIGN), **marketer).runs
    assert [r.run_id for r in listed] == [started.run_id, first.run_id]  # newest first
    latest = stub.ListCampaignRuns(pb.ListCampaignRunsRequest(campaign=CAMPAIGN, limit=1), **marketer).runs
    assert [r.run_id for r in latest] == [started.run_id]
    assert stub.GetCampaignRun(pb.GetCampaignRunRequest(campaign=CAMPAIGN), **marketer).run_id == started.run_id
    fails(
        stub.GetCampaignRun,
        pb.GetCampaignRunRequest(campaign=CAMPAIGN, run_id="20200101T000000-abcdef"),
        grpc.StatusCode.NOT_FOUND,
        f"run 20200101T000000-abcdef of {CAMPAIGN} not found",
        **marketer,
    )


def test_health_and_reflection_list_the_campaign_service(service, tokens):
    health = health_pb2_grpc.HealthStub(service.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="nba.v1.CampaignService"), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = reflection.ServerReflectionInfo(iter([request]), **as_(tokens, "console"))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"nba.v1.DecisionService", "nba.v1.CampaignService", "grpc.health.v1.Health"} <= names


class HeldAfterFirstBatch(CampaignMetrics):
    """The servicer's run metrics, holding the run after its first checkpointed batch until released: the run
    is still working (running in Redis, its thread alive) when the test acts."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.reached = threading.Event()
        self.release = threading.Event()

    def observe(self, report: RunReport) -> None:
        super().observe(report)
        if not report.dry_run and not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(60), "the test never released the run"


def test_a_stopping_server_suspends_its_own_run_not_a_newer_one_started_elsewhere(service, tokens, redis_client):
    held = HeldAfterFirstBatch()
    service.server.campaigns.metrics = held
    ours = service.campaigns.StartCampaign(pb.StartCampaignRequest(campaign=CAMPAIGN), **as_(tokens, "marketer"))
    wait_until(held.reached.is_set, 30, "the server's run to checkpoint its first batch")
    store = RunStore(redis_client)
    # Another process started a newer run of the campaign meanwhile (ours lost its lease: Redis was slow)
    theirs = RunReport(campaign=CAMPAIGN, run_id="29990101T000000-beefed", started=ours.run.started_at + 1)
    store.add(theirs)
    assert store.latest(CAMPAIGN).run_id == theirs.run_id

    stopping = threading.Thread(target=service.stop, name="stop-the-server")
    stopping.start()
    try:
        wait_until(lambda: store.status(CAMPAIGN, ours.run_id) == "suspended", 30, "the server's own run suspended")
    finally:
        held.release.set()
        stopping.join(60)
    assert not stopping.is_alive()
    assert store.status(CAMPAIGN, theirs.run_id) == "running"  # theirs is left to the process working it
    stopped = store.load(CAMPAIGN, ours.run_id)
    assert stopped is not None and stopped.status == "suspended" and stopped.scanned > 0
