"""Global budgets hold across replicas under concurrency; declines suppress an offer."""

from __future__ import annotations

import concurrent.futures

from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, profile

MICRO_LOAN_LIMITS = """    limits:
      - {max: 2, per: 30d}
      - {channel: push, max: 1, per: 1d}
"""


def _publish(redis_client, replacement: str) -> None:
    files = read_policy_dir(SAMPLE_POLICIES)
    assert MICRO_LOAN_LIMITS in files["bank.yaml"]
    files["bank.yaml"] = files["bank.yaml"].replace(MICRO_LOAN_LIMITS, replacement, 1)
    PolicyStore(redis_client).publish(files)


def _student(stub, customer_id: str) -> None:
    # a student with a fair score: the micro-loan is the best action for them at an ATM
    stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        customer_id, segment="student", channels=("push",), timezone=daytime_zone(), credit_score="600")), timeout=5)


def test_a_global_budget_is_never_exceeded_across_two_replicas(start_server, redis_client):
    _publish(redis_client, "    budget: {max: 5, per: 1d}\n")
    replicas = [start_server(), start_server()]
    customers = [f"b{i}" for i in range(40)]
    for customer in customers:
        _student(replicas[0].stub, customer)

    def decide(i: int) -> str:
        stub = replicas[i % 2].stub
        return stub.Decide(atm_decline(customers[i], amount=60, balance=10), timeout=10).action.offer_id

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        chosen = list(pool.map(decide, range(len(customers))))

    assert chosen.count("micro_loan") == 5  # demand was 40; both replicas together gave exactly the budget
    (counter,) = redis_client.keys("nba:{o:micro_loan}:budget:*")
    assert int(redis_client.get(counter)) == 5
    late = replicas[1].stub.Decide(atm_decline("b0", amount=60, balance=10), timeout=5)
    assert late.action.offer_id != "micro_loan"
    assert any(r.offer_id == "micro_loan" and r.code == "budget_exhausted" for r in late.reasons)


def test_an_offer_declined_twice_is_suppressed(start_server, redis_client):
    _publish(redis_client, "    suppress_after: {declines: 2, per: 30d}\n")
    server = start_server()
    _student(server.stub, "s1")
    for _ in range(2):
        decision = server.stub.Decide(atm_decline("s1", amount=60, balance=10), timeout=5)
        assert decision.action.offer_id == "micro_loan"
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                    outcome=pb.OUTCOME_KIND_DECLINED), timeout=5)

    third = server.stub.Decide(atm_decline("s1", amount=60, balance=10), timeout=5)

    assert third.action.offer_id != "micro_loan"
    reason = next(r for r in third.reasons if r.offer_id == "micro_loan")
    assert (reason.code, reason.detail) == ("suppressed", "declined 2 times in 30d")
    # another customer is not affected
    _student(server.stub, "s2")
    assert server.stub.Decide(atm_decline("s2", amount=60, balance=10), timeout=5).action.offer_id == "micro_loan"


def test_consent_withdrawal_takes_effect_on_the_next_request(server):
    _student(server.stub, "s3")
    assert server.stub.Decide(atm_decline("s3", amount=60, balance=10), timeout=5).channel == "push"
    withdrawn = profile("s3", segment="student", channels=("push",), timezone=daytime_zone(), credit_score="600",
                        consent={"push": False})
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=withdrawn), timeout=5)
    after = server.stub.Decide(atm_decline("s3", amount=60, balance=10), timeout=5)
    assert after.channel != "push"


def test_simultaneous_requests_for_one_customer_respect_the_overall_cap(start_server, redis_client):
    files = read_policy_dir(SAMPLE_POLICIES)
    # one contact a day on any channel (the ATM screen included: outbound-only would not count it)
    files["settings.yaml"] = files["settings.yaml"].replace(
        "    - {max: 4, per: 1d}", "    - {max: 1, per: 1d, direction: any}", 1)
    assert "{max: 1, per: 1d, direction: any}" in files["settings.yaml"]
    PolicyStore(redis_client).publish(files)
    replicas = [start_server(), start_server()]
    _student(replicas[0].stub, "busy")

    def decide(i: int) -> bool:
        return not replicas[i % 2].stub.Decide(atm_decline("busy", amount=60, balance=10), timeout=10).no_action

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        sent = list(pool.map(decide, range(8)))
    assert sum(sent) == 1  # one contact a day, however many channels ask at the same moment
