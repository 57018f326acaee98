"""The demo's summary: the learned policy against the rules alone on the same decisions, with an interval."""

from __future__ import annotations

import numpy as np

from nba_service.tools.demo import _paired, _Tally, learned_vs_rules, render_comparison
from nba_service.tools.traffic import CustomerResponse


def test_a_gain_that_appears_late_is_reported_with_its_interval():
    rng = np.random.default_rng(3)
    n = 3000
    rules = rng.uniform(0.0, 6.0, n) * np.linspace(1.2, 0.8, n)  # the traffic drifts: both values fall
    gain = np.where(np.arange(n) < n // 3, 0.0, 0.4) + rng.normal(0.0, 1.0, n)  # none at first, then 0.4
    learned = rules + gain

    first, last, overall = learned_vs_rules(learned, rules)

    assert (first.label, last.label, overall.label) == ("first third", "last third", "all")
    assert first.decisions == last.decisions == 1000 and overall.decisions == n
    assert first.learned > last.learned  # the raw value per decision falls, though the policy gains
    assert first.gain.ci_low < 0 < first.gain.ci_high
    assert 0.3 < last.gain.ci_low < 0.4 < last.gain.ci_high < 0.5
    assert np.isclose(overall.gain.value, (learned - rules).mean())
    lines = render_comparison([first, last, overall], 30.0)
    assert lines[-1].startswith("The learned policy gains 0.") and "in the last third" in lines[-1]
    assert f"[{last.gain.ci_low:+.3f}, {last.gain.ci_high:+.3f}]" in lines[2]


def test_no_measurable_gain_and_a_loss_are_said_plainly():
    rng = np.random.default_rng(5)
    rules = rng.uniform(0.0, 6.0, 900)
    noise = rng.normal(0.0, 1.0, 900)
    lines = render_comparison(learned_vs_rules(rules + noise - noise.mean(), rules), 30.0)
    assert lines[-1].startswith("No measurable gain yet in 30 s:") and "includes 0" in lines[-1]
    lines = render_comparison(learned_vs_rules(rules - 0.5 + 0.1 * noise, rules), 30.0)
    assert lines[-1].startswith("No gain in 30 s: the learned policy is worse than the rules alone")
    # identical choices: a gain of exactly 0 with an interval of [0, 0] (not a proportion's interval)
    (only,) = learned_vs_rules(rules[:4], rules[:4])
    assert (only.label, only.gain.value, only.gain.ci_low, only.gain.ci_high) == ("all", 0.0, 0.0, 0.0)


def test_each_decision_is_paired_with_the_rules_choice_the_server_logged():
    truth = CustomerResponse(7)
    values = {"loan": 10.0, "card": 4.0}
    categories = {"loan": "lending", "card": "cards"}
    tally = _Tally()
    tally.decisions = [
        ("d1", "vip", "loan", "push", truth.probability("vip", "lending", "push") * 10.0),
        ("d2", "mass", "", "", 0.0),  # no action
        ("d3", "mass", "card", "sms", truth.probability("mass", "cards", "sms") * 4.0),
    ]
    choices = [("loan", "push"), ("card", "email"), None]  # d3: not recorded (degraded)

    learned, rules, agreement = _paired(tally, choices, truth, categories, values)

    assert learned.tolist() == [tally.decisions[0][4], 0.0]
    assert rules.tolist() == [tally.decisions[0][4], truth.probability("mass", "cards", "email") * 4.0]
    assert agreement == 0.5
