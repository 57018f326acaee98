"""Old clients keep working: stubs generated from the previous release's .proto (tests/api/previous_proto/, the
contract before RecordEvent, per-message stream status, structured content, deferred delivery, holdings and
likely reasons) call today's server. They run in a process of their own, as a caller built against the old
contract would (both contracts define ``nba.v1`` messages; one process cannot load both)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from grpc_tools import protoc

from tests.conftest import daytime_zone

PREVIOUS = pathlib.Path(__file__).parent / "previous_proto"

OLD_CLIENT = """
import json, sys
import grpc
from nba.v1 import decision_pb2 as pb, decision_pb2_grpc as pb_grpc

port, zone = sys.argv[1], sys.argv[2]
stub = pb_grpc.DecisionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
consents = [pb.Consent(channel=c, granted=True) for c in ("push", "sms", "email", "atm_screen")]
stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=pb.CustomerProfile(
    customer_id="old1", first_name="Ana", segment="mass", preferred_channel="push",
    reachable_channels=["push", "sms", "email"], consents=consents, timezone=zone,
    attributes={"credit_score": "720", "language": "es"})), timeout=5)
decline = pb.DecideRequest(customer_id="old1", origin_channel="atm", event=pb.Event(atm_decline=pb.AtmDecline(
    amount=100, balance=20, currency="EUR", atm_id="atm-7", latitude=40.4, longitude=-3.7)))
decision = stub.Decide(decline, timeout=5)
outcome = stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                               outcome=pb.OUTCOME_KIND_IMPRESSED), timeout=5)
streamed = list(stub.DecideStream(iter([decline, pb.DecideRequest(customer_id="old2", event=decline.event)]),
                                  timeout=5))
context = stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="old1", include_best_actions=True),
                                  timeout=5)
print(json.dumps({
    "offer": decision.action.offer_id, "content": decision.action.content, "channel": decision.channel,
    "no_action": decision.no_action, "decision_id": decision.decision_id,
    "outcome": outcome.decision_id == decision.decision_id,
    "streamed": [r.decision_id != "" for r in streamed],
    "journey": [e.type for e in context.journey], "best_actions": len(context.best_actions),
}))
"""


def _old_stubs(folder: pathlib.Path) -> pathlib.Path:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    folder.mkdir()
    args = ["protoc", f"-I{PREVIOUS}", f"-I{include}", f"--python_out={folder}", f"--grpc_python_out={folder}",
            "nba/v1/decision.proto"]
    assert protoc.main(args) == 0
    for package in (folder / "nba", folder / "nba" / "v1"):
        (package / "__init__.py").write_text("")
    return folder


def test_a_client_built_on_the_previous_proto_decides_reports_and_reads_the_context(server, tmp_path):
    stubs = _old_stubs(tmp_path / "old")
    script = tmp_path / "old_client.py"
    script.write_text(OLD_CLIENT)

    run = subprocess.run([sys.executable, str(script), str(server.port), daytime_zone()], cwd=stubs,
                         capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(stubs)})

    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert not seen["no_action"] and seen["offer"] and seen["channel"]
    assert seen["content"]  # the body of the structured content, as the one text field old clients read
    assert seen["outcome"] and seen["streamed"] == [True, True]
    assert seen["journey"][0] == "atm_decline" and seen["best_actions"] >= 1
