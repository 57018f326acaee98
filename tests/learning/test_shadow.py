"""Apprentice mode: the rules decide, the learned policy is logged and evaluated off-policy."""

from __future__ import annotations

import json

import pytest

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

    meta = json.loads(redis_client.hget(f"nba:d:{decisions[0].decision_id}", "meta"))
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

    store = ModelStore(redis_client)
    champion, challenger = ModelBank.from_bytes(store.load()), ModelBank.from_bytes(store.load_challenger())
    assert champion.updates == challenger.updates  # trained on exactly the same outcomes
    assert challenger.learning_rate == 0.5 and champion.learning_rate != 0.5
    decision = server.stub.Decide(atm_decline("h0"), timeout=5)
    meta = json.loads(redis_client.hget(f"nba:d:{decision.decision_id}", "meta"))
    assert (meta["shadow"]["policy"], meta["shadow"]["served"]) == ("challenger", "learned")

    assert main(["shadow", "report", "--redis-url", redis_url]) == 0
    assert "challenger (shadow, ips)" in capsys.readouterr().out
