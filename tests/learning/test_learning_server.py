"""How much one outcome moves P(accept), through the real server, the outcome stream and the learner."""

from __future__ import annotations

import re

import yaml

from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from tests.conftest import atm_decline, wait_until

ONE_OFFER = {
    "channels.yaml": yaml.safe_dump(
        {"channels": [{"id": "atm_screen", "name": "ATM screen", "needs_reachable": False, "default_consent": True}]}
    ),
    "offers.yaml": yaml.safe_dump(
        {
            "offers": [
                {
                    "id": "micro_loan",
                    "name": "Micro-loan",
                    "category": "lending",
                    "events": ["atm_decline"],
                    "value": 1.0,
                    "prior": 0.05,
                    "channels": ["atm_screen"],
                    "content": {"default": "Need cash now? A micro-loan is one tap away."},
                }
            ]
        }
    ),
}
"""One offer on one channel: every decision is on the same arm, so every outcome teaches it."""


def _p(response: pb.DecideResponse) -> float:
    """P(accept) of the chosen arm, as the decision's first reason states it (``P=0.0123 x ...``)."""
    match = re.search(r"P=([0-9.]+)", response.reasons[0].detail)
    assert match, response.reasons[0].detail
    return float(match.group(1))


class _Customers:
    """Decisions for new, anonymous customers: the same features every time, no contact history."""

    def __init__(self, server) -> None:
        self.server = server
        self.n = 0

    def decide(self) -> pb.DecideResponse:
        self.n += 1
        response = self.server.stub.Decide(atm_decline(f"anon-{self.n}"), timeout=5)
        assert (response.action.offer_id, response.channel) == ("micro_loan", "atm_screen")
        return response

    def report(self, outcomes: list[bool]) -> None:
        for accepted in outcomes:
            kind = pb.OUTCOME_KIND_ACCEPTED if accepted else pb.OUTCOME_KIND_DECLINED
            request = pb.OutcomeRequest(decision_id=self.decide().decision_id, outcome=kind)
            assert self.server.stub.ReportOutcome(request, timeout=5).learned

    def learned(self, updates: int) -> float:
        """P of the arm once the server serves models that learned ``updates`` outcomes."""
        wait_until(lambda: self.server.dataplane.models.updates >= updates, 30, f"{updates} outcomes learned")
        return _p(self.decide())


def test_one_accept_after_a_thousand_declines_moves_p_by_less_than_a_point(start_server, redis_client):
    PolicyStore(redis_client).publish(ONE_OFFER, author="tests", message="one offer")
    customers = _Customers(start_server(model_snapshot_every=100, model_snapshot_seconds=0.2))
    assert _p(customers.decide()) == 0.05  # the configured prior, before any outcome

    customers.report([False] * 1000)
    after_declines = customers.learned(1000)
    customers.report([True])
    after_one_accept = customers.learned(1001)

    assert after_declines < 0.01  # a thousand declines: the arm is known to be poor
    assert 0 < after_one_accept - after_declines < 0.01  # one accept is one outcome among a thousand


def test_a_strong_consistent_signal_converges_to_the_observed_rate(start_server, redis_client):
    PolicyStore(redis_client).publish(ONE_OFFER, author="tests", message="one offer")
    customers = _Customers(start_server(model_snapshot_every=100, model_snapshot_seconds=0.2))

    customers.report([False, True, False] * 10)  # a third accept, early: P moves, but not all the way
    early = customers.learned(30)
    customers.report([False, True, False] * 600)
    late = customers.learned(1830)

    assert 0.05 < early < 1 / 3
    assert abs(late - 1 / 3) < 0.03  # 1,830 outcomes at one in three: the standard error is 0.011
