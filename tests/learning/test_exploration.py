"""Exploration strategies: the propensity each returns is the true probability of its pick."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.engine.pipeline import DecisionEngine
from nba_service.tools.evaluation import replay_policy
from nba_service.engine.options import Options
from nba_service.learning.exploration import EpsilonGreedy, Softmax, ThompsonSampling, UpperConfidence, make_explorer
from nba_service.learning.models import ModelBank
from nba_service.policies.snapshot import PolicySnapshot

PRIORITIES = np.array([0.5, 0.4, 0.4, 0.2, 0.05])
DRAWS = 20_000

STRATEGIES = {
    "epsilon 0.1": lambda seed: EpsilonGreedy(0.1, seed),
    "epsilon 0.6": lambda seed: EpsilonGreedy(0.6, seed),
    "epsilon 1": lambda seed: EpsilonGreedy(1.0, seed),
    "softmax 0.1": lambda seed: Softmax(0.1, seed=seed),
    "softmax 1": lambda seed: Softmax(1.0, seed=seed),
    "softmax linear 0.1": lambda seed: Softmax(0.1, on="linear", seed=seed),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_observed_frequencies_match_the_returned_propensities(name):
    explorer = STRATEGIES[name](11)
    probabilities = explorer.probabilities(PRIORITIES)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert (probabilities >= 0).all()
    counts = np.zeros(len(PRIORITIES))
    for _ in range(DRAWS):
        pick, propensity = explorer.choose(PRIORITIES)
        assert propensity == pytest.approx(probabilities[pick], rel=1e-12)  # the exact probability of the pick
        counts[pick] += 1
    frequencies = counts / DRAWS
    for p, f in zip(probabilities, frequencies):
        standard_error = math.sqrt(p * (1 - p) / DRAWS)
        assert abs(f - p) <= 4 * standard_error + 1e-12, (name, probabilities, frequencies)


@pytest.mark.parametrize("name", STRATEGIES)
def test_propensities_sum_to_one_over_the_options(name):
    explorer = STRATEGIES[name](3)
    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 7, 40):
        priorities = np.sort(rng.uniform(0.001, 3.0, size))[::-1]
        assert explorer.probabilities(priorities).sum() == pytest.approx(1.0, abs=1e-12)
        # the propensities choose returns, over every option, are the same distribution
        seen = {}
        for _ in range(200):
            pick, propensity = explorer.choose(priorities)
            seen[pick] = propensity
        assert all(seen[i] == pytest.approx(explorer.probabilities(priorities)[i]) for i in seen)


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_seed_makes_the_choices_repeatable(name):
    first, second = STRATEGIES[name](42), STRATEGIES[name](42)
    assert [first.choose(PRIORITIES) for _ in range(300)] == [second.choose(PRIORITIES) for _ in range(300)]


def test_softmax_over_log_priorities_only_sees_ratios():
    explorer = Softmax(0.5)
    np.testing.assert_allclose(explorer.probabilities(PRIORITIES), explorer.probabilities(PRIORITIES * 37.0))
    # temperature 1: in proportion to priority
    np.testing.assert_allclose(Softmax(1.0).probabilities(PRIORITIES), PRIORITIES / PRIORITIES.sum())


def test_softmax_at_temperature_zero_is_greedy_and_shares_ties():
    explorer = Softmax(0.0, seed=1)
    assert explorer.probabilities(np.array([0.3, 0.2, 0.1])).tolist() == [1.0, 0.0, 0.0]
    assert {explorer.choose(np.array([0.3, 0.2]))[0] for _ in range(50)} == {0}
    ties = [explorer.choose(np.array([0.3, 0.3, 0.1])) for _ in range(200)]
    assert {pick for pick, _ in ties} == {0, 1}
    assert {propensity for _, propensity in ties} == {0.5}


def test_one_option_is_taken_with_certainty():
    for explorer in (EpsilonGreedy(0.3, 1), Softmax(0.2, seed=1)):
        assert explorer.choose(np.array([0.7])) == (0, 1.0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        EpsilonGreedy(1.5)
    with pytest.raises(ValueError):
        Softmax(-0.1)
    with pytest.raises(ValueError):
        Softmax(float("nan"))
    with pytest.raises(ValueError):
        Softmax(0.1, on="exp")
    with pytest.raises(ValueError):
        ThompsonSampling(draws=0)
    with pytest.raises(ValueError):
        UpperConfidence(width=float("inf"))
    with pytest.raises(ValueError, match="known: thompson, ucb, epsilon, softmax"):
        make_explorer("greedy")


@pytest.mark.parametrize("strategy", ["epsilon", "softmax", "thompson"])
def test_the_engine_logs_the_propensity_its_choices_are_made_with(strategy):
    """Through the real engine: how often each offer is chosen matches the propensity it logs."""
    policy = replay_policy(["a", "b", "c"], prior=0.1)
    snapshot = PolicySnapshot.compile(policy, "1")
    bank = ModelBank()
    bank.bind(snapshot)
    for offer, reward in (("a", 1.0), ("b", 0.0), ("b", 1.0)):  # give the arms different scores
        bank.learn(offer, "replay", {"event=custom": 1.0}, reward, prior=0.1)
    engine = DecisionEngine(bank, make_explorer(strategy, epsilon=0.3, temperature=0.2, seed=9))
    ctx = CustomerContext(CustomerProfile.unknown("c"), now=0.0)
    event = Event("custom", {"name": "replay"})
    runs = 6000
    counts: dict[str, int] = {}
    logged: dict[str, list[float]] = {}
    for _ in range(runs):
        decision = engine.decide(snapshot, ctx, event)
        counts[decision.offer_id] = counts.get(decision.offer_id, 0) + 1
        logged.setdefault(decision.offer_id, []).append(decision.propensity)
    assert set(counts) == {"a", "b", "c"}
    if strategy != "thompson":  # exact propensities: one value per offer
        assert all(max(v) == pytest.approx(min(v)) for v in logged.values())
    mean_logged = {offer: float(np.mean(v)) for offer, v in logged.items()}
    # Thompson's logged propensity is an estimate biased up by at most 1/draws (see ThompsonSampling)
    slack = 1 / 256 if strategy == "thompson" else 0.0
    assert sum(mean_logged.values()) == pytest.approx(1.0, abs=3 * slack + 1e-9)
    for offer, p in mean_logged.items():
        assert abs(counts[offer] / runs - p) <= 4 * math.sqrt(p * (1 - p) / runs) + slack, (counts, mean_logged)


# --- Thompson sampling: the logged propensity against its Monte Carlo definition ----------------------

UNCERTAIN = Options(
    priorities=np.array([0.3, 0.25, 0.2]),
    best=np.array([0, 2, 3]),
    logit_mean=np.array([-0.85, -1.0, -1.2, -1.4]),
    logit_sd=np.array([0.3, 0.6, 0.2, 1.2]),
    scale=np.array([1.0, 1.0, 1.2, 1.0]),
)


def test_thompson_propensities_agree_with_their_monte_carlo_definition():
    """The probability of each arm is P(it wins a posterior draw); the logged propensity estimates it
    within the error the docs state: bias <= 1/draws, standard deviation <= sqrt(p (1 - p) / draws)."""
    reference = ThompsonSampling(seed=123, scale=1.0).probabilities(UNCERTAIN, draws=400_000)
    assert reference.min() > 0.05  # every arm has a real chance: a meaningful check for all four
    explorer = ThompsonSampling(draws=256, seed=5, scale=1.0)  # plain Thompson: every arm has a real chance
    runs = 4000
    chosen = np.zeros(len(reference))
    logged: dict[int, list[float]] = {}
    for _ in range(runs):
        arm, propensity = explorer.pick(UNCERTAIN)
        chosen[arm] += 1
        logged.setdefault(arm, []).append(propensity)
    for arm, p in enumerate(reference):
        # the choice itself is exact Thompson sampling
        assert abs(chosen[arm] / runs - p) <= 4 * math.sqrt(p * (1 - p) / runs)
        values = np.array(logged[arm])
        sd = math.sqrt(p * (1 - p) / 256)
        # each logged propensity is within the stated error of the true probability...
        assert np.mean(np.abs(values - p) <= 1 / 256 + 3 * sd) >= 0.99
        # ...and on average it is p plus the stated bias, (1 - p) / draws
        expected = p + (1 - p) / 256
        assert abs(values.mean() - expected) <= 4 * sd / math.sqrt(len(values)) + 1e-3


def test_thompson_without_uncertainty_is_greedy_and_ucb_is_optimistic():
    certain = Options(np.array([0.3, 0.2]), np.array([0, 1]), np.array([-0.85, -1.4]), np.zeros(2), np.ones(2))
    explorer = ThompsonSampling(seed=1)
    assert {explorer.pick(certain) for _ in range(50)} == {(0, 1.0)}
    assert UpperConfidence(1.0).pick(UNCERTAIN) == (3, 1.0)  # the widest posterior: -1.4 + 1.2 beats -1.0 + 0.6 and -0.85 + 0.3
    assert UpperConfidence(0.0).pick(UNCERTAIN) == (0, 1.0)  # no width: the best mean priority (0.30 > 0.23 x 1.2)
