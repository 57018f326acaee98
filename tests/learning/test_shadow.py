"""Apprentice mode: the rules decide, the learned policy is logged and evaluated off-policy."""

from __future__ import annotations

import json

import pytest

from nba_service.store import keys
from nba_service.cli import main
from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import atm_decline, daytime_zone, profile


def test_apprentice_mode_logs_the_learned_choice_and_reports_it(start_server, published, redis_client, redis_url,
                                                               tmp_path, capsys):
    server = start_server(mode="apprentice", learner="off", epsilon=0.2, seed=4)
    zone = daytime_zone()
    decisions = []
    for i in range(60):
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(f"a{i}", timezone=zone)))
        decision = server.stub.Decide(atm_decline(f"a{i}"), timeout=5)
        assert not decision.no_action
        assert decision.model_version == "prior"  # no model published: the rules decide on priors
        outcome = pb.OUTCOME_KIND_ACCEPTED if i % 3 == 0 else pb.OUTCOME_KIND_DECLINED
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=outcome), timeout=5)
        decisions.append(decision)

    meta = json.loads(redis_client.hget(keys.decision(decisions[0].decision_id), "meta"))
    assert meta["shadow"]["policy"] == "learned"
    assert {"offer_id", "channel", "p_served", "p_shadow"} <= set(meta["shadow"])

    report_file = tmp_path / "report.json"
    assert main(["shadow", "report", "--redis-url", redis_url, "--json", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert "60 settled decisions" in out and "learned (shadow, ips)" in out
    report = json.loads(report_file.read_text())
    assert report["rows"] == 60
    assert report["served"]["mean"] == pytest.approx(20 / 60)
    # With no model yet the learned policy scores the priors too, so it picks the rules' greedy choice;
    # it disagrees only where the rules explored, and IPS re-weights the agreeing rows accordingly.
    agreeing = [d for d in decisions if d.propensity > 0.5]
    assert report["shadow"]["agreement"] == pytest.approx(len(agreeing) / 60)
    expected_ips = sum((1.0 if i % 3 == 0 else 0.0) / d.propensity
                       for i, d in enumerate(decisions) if d.propensity > 0.5) / 60
    assert report["shadow"]["ips"]["mean"] == pytest.approx(expected_ips)
    assert report["shadow"]["snips"]["ci_low"] <= report["shadow"]["snips"]["mean"] <= report["shadow"]["snips"]["ci_high"]


def test_a_challenger_learns_alongside_and_is_logged(start_server, published, redis_client, redis_url, capsys):
    from nba_service.learning.models import ModelBank
    from nba_service.store.model_store import ModelStore
    from tests.conftest import wait_until

    server = start_server(mode="learned+challenger", challenger_learning_rate=0.5, model_snapshot_every=5)
    zone = daytime_zone()
    for i in range(12):
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(f"h{i}", timezone=zone)))
        decision = server.stub.Decide(atm_decline(f"h{i}"), timeout=5)
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                    outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    wait_until(lambda: server.dataplane.challenger is not None and server.dataplane.models.updates >= 10,
               what="the challenger to be published with the models")
    for i in range(12, 15):  # decided with the challenger loaded: logged with its choice, and settled
        decision = server.stub.Decide(atm_decline(f"h{i}"), timeout=5)
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                    outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)

    store = ModelStore(redis_client)
    champion, challenger = ModelBank.from_bytes(store.load()), ModelBank.from_bytes(store.load_challenger())
    assert champion.updates == challenger.updates  # trained on exactly the same outcomes
    assert challenger.learning_rate == 0.5 and champion.learning_rate != 0.5
    decision = server.stub.Decide(atm_decline("h0"), timeout=5)
    meta = json.loads(redis_client.hget(keys.decision(decision.decision_id), "meta"))
    assert (meta["shadow"]["policy"], meta["shadow"]["served"]) == ("challenger", "learned")

    assert main(["shadow", "report", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "the challenger served 0 of them (share 0%)" in out  # no share configured: logged, never served
    assert "challenger (ips, all rows)" in out and "champion (observed, rows it served)" in out


def _decide_accepting_micro_loans(server, zone, customer_id):
    """One ATM decline; the customer accepts a micro-loan (ranked second by the priors) and declines the rest."""
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(customer_id, timezone=zone)))
    decision = server.stub.Decide(atm_decline(customer_id), timeout=5)
    accepted = decision.action.offer_id == "micro_loan"
    outcome = pb.OUTCOME_KIND_ACCEPTED if accepted else pb.OUTCOME_KIND_DECLINED
    server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=outcome), timeout=5)
    return decision


def _trial_rows(redis_client, decisions):
    rows = []
    for decision in decisions:
        meta = json.loads(redis_client.hget(keys.decision(decision.decision_id), "meta"))
        rows.append((decision, meta["shadow"]))
    return rows


def test_a_challenger_serves_its_share_with_the_mixture_propensity_logged(start_server, published, redis_client,
                                                                         redis_url, tmp_path, capsys):
    from tests.conftest import wait_until

    share = 0.4
    # The challenger barely learns (rate 0.001) and the customers accept only micro-loans, which the priors
    # rank second: the champion soon prefers them and the challenger does not, so what each logs matters.
    server = start_server(mode="learned+challenger", challenger_learning_rate=0.001, challenger_share=share,
                          epsilon=0.3, seed=11, model_snapshot_every=20)
    zone = daytime_zone()

    def decide(customer_id):
        return _decide_accepting_micro_loans(server, zone, customer_id)

    decide("warm-up")  # the challenger exists once the learner has published a first version with it
    wait_until(lambda: server.dataplane.challenger is not None, what="the challenger to be loaded")
    decisions = [decide(f"m{i}") for i in range(400)]
    rows = _trial_rows(redis_client, decisions)

    by_challenger = sum(1 for _, shadow in rows if shadow["served"] == "challenger")
    assert 0.3 * 400 <= by_challenger <= 0.5 * 400  # Binomial(400, 0.4): 160 +- 10 (sd)
    for decision, shadow in rows:
        assert shadow["share"] == share
        assert decision.propensity == pytest.approx((1 - share) * shadow["pi_champion"] + share * shadow["pi_challenger"])
    # The logged propensities are the real serving probabilities only if, for each policy, the mean over the
    # rows of pi(a) / mu(a) is 1 (the sum of the policy's probabilities over the actions it can take).
    for policy in ("pi_champion", "pi_challenger"):
        weights = [shadow[policy] / d.propensity for d, shadow in rows]
        assert sum(weights) / len(weights) == pytest.approx(1.0, abs=0.1)

    report_file = tmp_path / "trial.json"
    assert main(["shadow", "report", "--redis-url", redis_url, "--json", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert f"the challenger served {by_challenger} of them (share 40%)" in out
    trial = json.loads(report_file.read_text())["trial"]
    assert trial["challenger"]["served_rows"] == by_challenger
    for name in ("champion", "challenger"):
        ips = trial[name]["ips"]
        assert ips["ci_low"] <= ips["mean"] <= ips["ci_high"]
    assert trial["difference"]["mean"] == pytest.approx(trial["challenger"]["ips"]["mean"] - trial["champion"]["ips"]["mean"])
    assert not trial["guard"]["suspended"]


def test_the_guard_stops_a_challenger_that_is_clearly_worse(start_server, published, redis_client, redis_url, capsys):
    """The challenger barely learns (rate 0.001); the customers accept only what the priors rank second."""
    from tests.conftest import wait_until

    server = start_server(mode="learned+challenger", challenger_learning_rate=0.001, challenger_share=0.5,
                          epsilon=0.2, seed=3, model_snapshot_every=25)
    zone = daytime_zone()

    def decide(customer_id):
        return _decide_accepting_micro_loans(server, zone, customer_id)

    decide("warm-up")
    wait_until(lambda: server.dataplane.challenger is not None, what="the challenger to be loaded")
    served = 0
    while not server.dataplane.guard.suspended:
        decide(f"g{served}")
        served += 1
        assert served < 1500, "the guard never suspended a challenger that the customers never rewarded"
    assert server.dataplane.guard.rows >= 500 and server.dataplane.challenger_share == 0.0

    after = [decide(f"after{i}") for i in range(40)]
    rows = _trial_rows(redis_client, after)
    assert all(shadow["served"] == "learned" for _, shadow in rows)  # the champion serves everything
    assert all(shadow["share"] == 0.0 for _, shadow in rows)
    assert all(d.propensity == pytest.approx(shadow["pi_champion"]) for d, shadow in rows)

    assert main(["shadow", "report", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "SUSPENDED" in out
