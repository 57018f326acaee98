"""``nba simulate``: in a world where the right action depends on the moment, the learner gets there."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nba_service.cli import main
from nba_service.domain import Event
from nba_service.tools.simulate import OFFERS, ContextualResponse, SimulationConfig, simulate


def test_the_learned_policy_reaches_80_percent_of_the_oracle(capsys, tmp_path):
    report, plot = tmp_path / "simulate.json", tmp_path / "regret.png"
    code = main(["simulate", "--steps", "20000", "--seed", "0", "--json", str(report), "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 0, err
    policies = json.loads(report.read_text())["policies"]
    # the learned policy, learning cost included, over the whole run
    assert policies["learned"]["share_of_oracle"] >= 0.8
    assert policies["learned"]["expected_share_of_oracle"] >= 0.8
    # ...while no context-blind policy comes close: the context is what pays
    assert policies["random"]["share_of_oracle"] < 0.4
    assert policies["rules"]["share_of_oracle"] < 0.5
    assert policies["best_fixed"]["expected_share_of_oracle"] < 0.5
    assert policies["oracle"]["share_of_oracle"] == 1.0
    # it keeps improving: the last tenth of the run is better than the run as a whole
    assert policies["learned"]["last_tenth_expected_share"] > policies["learned"]["expected_share_of_oracle"]
    assert policies["learned"]["regret"] < 0.3 * policies["rules"]["regret"]
    assert "learned" in out and "rules (" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_seed_gives_the_same_run():
    a = simulate(SimulationConfig(steps=1500, seed=4))
    b = simulate(SimulationConfig(steps=1500, seed=4))
    assert a.reward == b.reward
    np.testing.assert_array_equal(a.regret["learned"], b.regret["learned"])
    assert simulate(SimulationConfig(steps=1500, seed=5)).reward != a.reward


def test_each_moment_has_its_own_best_offer():
    truth = ContextualResponse(seed=0)
    values = np.array([o.value for o in OFFERS])
    ids = [o.id for o in OFFERS]
    best = {}
    for event in (Event("atm_decline", {"shortfall": 30.0}), Event("atm_decline", {"shortfall": 1200.0}),
                  Event("location", {}), Event("cart_abandon", {"cart_value": 350.0}), Event("agent_contact", {})):
        worth = truth.probabilities(event, "mass") * values
        best[(event.type, tuple(event.fields.values()))] = ids[int(np.argmax(worth))]
    assert len(set(best.values())) == 5, best
    p = truth.probabilities(Event("location", {}), "mass")
    assert p.max() > 0.2 and p.min() < 0.05


def test_bad_runs_are_refused(capsys):
    assert main(["simulate", "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    with pytest.raises(ValueError):
        simulate(SimulationConfig(steps=10, strategy="greedy"))
