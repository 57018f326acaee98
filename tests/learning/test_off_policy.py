"""Off-policy estimators on synthetic logs whose true target value is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from nba_service.tools.off_policy import doubly_robust, ips, mean_estimate, snips

# Three contexts, three actions. The logging policy favours different actions per
# context (so a naive average of the matching rows is biased); the target policy
# is stochastic and differs from it.
CONTEXT_SHARE = np.array([0.5, 0.3, 0.2])
REWARD = np.array([[0.10, 0.30, 0.05],
                   [0.40, 0.10, 0.20],
                   [0.05, 0.15, 0.60]])
LOGGING = np.array([[0.70, 0.20, 0.10],
                    [0.10, 0.80, 0.10],
                    [0.30, 0.60, 0.10]])
TARGET = np.array([[0.10, 0.80, 0.10],
                   [0.80, 0.10, 0.10],
                   [0.00, 0.10, 0.90]])
TRUE_VALUE = float(CONTEXT_SHARE @ (TARGET * REWARD).sum(axis=1))


def logged(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.choice(3, size=n, p=CONTEXT_SHARE)
    u = rng.random(n)
    a = (u[:, None] > np.cumsum(LOGGING[x], axis=1)).sum(axis=1)
    r = (rng.random(n) < REWARD[x, a]).astype(float)
    return x, a, r, LOGGING[x, a], TARGET[x, a]


def dr_inputs(x, a, model):
    return model[x, a], (TARGET[x] * model[x]).sum(axis=1)


def test_the_true_value_is_where_the_estimators_put_it():
    assert TRUE_VALUE == pytest.approx(0.5 * 0.255 + 0.3 * 0.35 + 0.2 * 0.555)
    x, a, r, mu, pi = logged(50_000, seed=1)
    estimates = {
        "ips": ips(r, mu, pi),
        "snips": snips(r, mu, pi),
        "dr, right model": doubly_robust(r, mu, pi, *dr_inputs(x, a, REWARD)),
        "dr, wrong model": doubly_robust(r, mu, pi, *dr_inputs(x, a, np.full((3, 3), 0.5))),
    }
    for name, e in estimates.items():
        assert e.ci_low <= TRUE_VALUE <= e.ci_high, (name, e, TRUE_VALUE)
        assert e.ci_high - e.ci_low < 0.03, (name, e)
        assert e.rows == 50_000
    # why propensities matter: the plain mean of the rows where the target agrees is far off
    agree = pi > 0.5
    naive = mean_estimate(r[agree])
    assert not naive.ci_low <= TRUE_VALUE <= naive.ci_high
    # a good reward model makes doubly robust tighter than IPS
    width = {name: e.ci_high - e.ci_low for name, e in estimates.items()}
    assert width["dr, right model"] < 0.85 * width["ips"]
    assert width["dr, right model"] < width["dr, wrong model"]


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_95_percent_intervals_cover_the_true_value_about_95_percent_of_the_time(estimator):
    covered = 0
    runs = 300
    for seed in range(runs):
        x, a, r, mu, pi = logged(2_000, seed=1000 + seed)
        if estimator == "ips":
            e = ips(r, mu, pi)
        elif estimator == "snips":
            e = snips(r, mu, pi)
        else:
            e = doubly_robust(r, mu, pi, *dr_inputs(x, a, REWARD + 0.05))  # a slightly wrong model
        covered += e.ci_low <= TRUE_VALUE <= e.ci_high
    assert 0.91 <= covered / runs <= 0.99, covered / runs


def test_bootstrap_intervals_are_seeded_and_agree_with_the_normal_ones():
    x, a, r, mu, pi = logged(5_000, seed=7)
    for estimate in (ips, snips):
        normal = estimate(r, mu, pi)
        boot = estimate(r, mu, pi, ci="bootstrap", n_bootstrap=400, seed=3)
        assert boot == estimate(r, mu, pi, ci="bootstrap", n_bootstrap=400, seed=3)
        assert boot.value == normal.value
        assert boot.ci_high - boot.ci_low == pytest.approx(normal.ci_high - normal.ci_low, rel=0.2)
    dr = doubly_robust(r, mu, pi, *dr_inputs(x, a, REWARD), ci="bootstrap", n_bootstrap=300, seed=3)
    assert dr.ci_low <= TRUE_VALUE <= dr.ci_high


def test_snips_is_ips_normalised_and_agrees_with_replay_under_uniform_logging():
    rng = np.random.default_rng(2)
    r = (rng.random(3000) < 0.2).astype(float)
    agrees = (rng.random(3000) < 1 / 3).astype(float)  # the target would take the logged action
    uniform = np.full(3000, 1 / 3)
    assert snips(r, uniform, agrees).value == pytest.approx(r[agrees == 1].mean())
    assert ips(r, uniform, agrees).value == pytest.approx((r * agrees).sum() * 3 / 3000)
    # scaling every weight changes IPS, not SNIPS
    assert snips(r, uniform / 2, agrees).value == pytest.approx(snips(r, uniform, agrees).value)
    assert ips(r, np.full(3000, 1 / 6), agrees).value == pytest.approx(2 * ips(r, uniform, agrees).value)


def test_clipping_caps_the_weights():
    r = np.array([1.0, 0.0, 1.0])
    assert ips(r, np.array([0.01, 0.5, 0.5]), np.ones(3), clip=10.0).value == pytest.approx((10 + 0 + 2) / 3)


def test_binary_means_get_a_wilson_interval_inside_0_1():
    none = mean_estimate(np.zeros(50))
    assert none.value == 0.0 and none.ci_low == 0.0 and 0.05 < none.ci_high < 0.1
    few = mean_estimate(np.array([1.0] + [0.0] * 9))
    assert few.ci_low > 0.0 and few.ci_high < 0.5
    money = mean_estimate(np.array([0.0, 12.5, 0.0, 3.0]))  # not 0/1: the plain normal interval
    assert money.ci_low < 0.0 < money.value


def test_bad_inputs_are_refused():
    r = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="propensities"):
        ips(r, np.array([0.0, 0.5]), np.ones(2))
    with pytest.raises(ValueError, match="target probabilities"):
        ips(r, np.array([0.5, 0.5]), np.array([1.5, 0.0]))
    with pytest.raises(ValueError, match="rows"):
        snips(r, np.array([0.5]), np.ones(2))
    with pytest.raises(ValueError, match="no rows"):
        ips(np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="probability 0"):
        snips(r, np.array([0.5, 0.5]), np.zeros(2))
    with pytest.raises(ValueError, match="ci must be"):
        ips(r, np.array([0.5, 0.5]), np.ones(2), ci="exact")
    with pytest.raises(ValueError, match="not finite"):
        mean_estimate(np.array([1.0, np.nan]))
