"""Off-policy estimators: the value of a target policy from another policy's logs.

Each logged row i has the reward r_i of the action a_i the logging policy took
with probability mu_i (the propensity stored with the decision) and the
probability pi_i the target policy gives that same action. With the weight
w_i = pi_i / mu_i:

- :func:`ips` (inverse propensity scoring): mean(w r). Unbiased when every
  action the target takes had mu > 0; high variance when weights are large.
- :func:`snips` (self-normalised IPS): sum(w r) / sum(w). Slightly biased,
  much steadier; equals the replay method's mean when the logging was uniform.
- :func:`doubly_robust`: a reward model's estimate of the target's value,
  corrected by IPS on the model's errors: mean(v_i + w (r_i - q_i)), where q_i
  is the model's prediction for the logged action and v_i its prediction of
  the target's expected reward on row i (sum over actions of pi(a) q(a)).
  Unbiased if either the propensities or the reward model are right, and
  tighter than IPS when the model is good.

All are pure functions over equal-length arrays and return an
:class:`Estimate` with a 95% confidence interval (normal approximation, or a
seeded percentile bootstrap with ``ci="bootstrap"``).

>>> rewards = np.array([1.0, 0.0, 1.0, 0.0])
>>> logged = np.full(4, 0.5)
>>> target = np.array([1.0, 1.0, 0.0, 0.0])   # the target would take the logged action on rows 0 and 1
>>> ips(rewards, logged, target).value
0.5
>>> snips(rewards, logged, target).value
0.5
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable

import numpy as np

__all__ = ["Estimate", "doubly_robust", "ips", "mean_difference", "mean_estimate", "snips"]


@dataclasses.dataclass(frozen=True, slots=True)
class Estimate:
    """A policy value with its confidence interval, from ``rows`` logged rows."""

    value: float
    ci_low: float
    ci_high: float
    rows: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "rows": self.rows}


def mean_estimate(
    values: np.ndarray,
    *,
    confidence: float = 0.95,
    ci: str = "normal",
    n_bootstrap: int = 1000,
    seed: int | None = None,
) -> Estimate:
    """The mean of on-policy (or replayed) rewards, with its confidence interval.

    For 0/1 rewards the normal interval is Wilson's score interval, which
    stays inside [0, 1] and is not [0, 0] when no reward was seen yet.

    >>> e = mean_estimate(np.array([0.0, 1.0] * 50))
    >>> e.value, round(e.ci_low, 3), round(e.ci_high, 3), e.rows
    (0.5, 0.404, 0.596, 100)
    >>> e = mean_estimate(np.zeros(120))
    >>> e.value, e.ci_low, round(e.ci_high, 3)
    (0.0, 0.0, 0.031)
    """
    values = _array(values, "values")
    if ci == "normal" and len(values) and np.isin(values, (0.0, 1.0)).all():
        return _wilson(float(values.mean()), len(values), _z(confidence))
    return _estimate(np.mean, values, (values,), confidence, ci, n_bootstrap, seed)


def mean_difference(
    first: np.ndarray,
    second: np.ndarray,
    *,
    confidence: float = 0.95,
    ci: str = "normal",
    n_bootstrap: int = 1000,
    seed: int | None = None,
) -> Estimate:
    """The mean of paired differences ``first - second`` (the same rows under two policies), with its interval.

    Unlike :func:`mean_estimate`, never Wilson's interval: a difference is not a proportion, even when
    every difference happens to be 0 or 1.

    >>> e = mean_difference(np.array([2.0, 3.0, 4.0, 5.0]), np.array([1.0, 1.0, 3.0, 3.0]))
    >>> e.value, round(e.ci_low, 3), round(e.ci_high, 3), e.rows
    (1.5, 0.934, 2.066, 4)
    >>> mean_difference(np.zeros(3), np.zeros(3)).ci_high
    0.0
    """
    a = _array(first, "first")
    d = a - _array(second, "second", len(a))
    return _estimate(np.mean, d, (d,), confidence, ci, n_bootstrap, seed)


def ips(
    rewards: np.ndarray,
    logged_propensities: np.ndarray,
    target_probabilities: np.ndarray,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
    ci: str = "normal",
    n_bootstrap: int = 1000,
    seed: int | None = None,
) -> Estimate:
    """Inverse propensity scoring: mean(w r), w = target / logged (capped at ``clip`` if given)."""
    r, w = _weights(rewards, logged_propensities, target_probabilities, clip)
    return _estimate(lambda r, w: np.mean(w * r), w * r, (r, w), confidence, ci, n_bootstrap, seed)


def snips(
    rewards: np.ndarray,
    logged_propensities: np.ndarray,
    target_probabilities: np.ndarray,
    *,
    confidence: float = 0.95,
    ci: str = "normal",
    n_bootstrap: int = 1000,
    seed: int | None = None,
) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); its normal interval is the delta method's."""
    r, w = _weights(rewards, logged_propensities, target_probabilities, None)
    total = w.sum()
    if total <= 0:
        raise ValueError("the target policy gives probability 0 to every logged action: nothing to estimate")
    value = float((w * r).sum() / total)
    if ci == "normal":
        half = _z(confidence) * math.sqrt(float(((w * (r - value)) ** 2).sum())) / total
        return Estimate(value, value - half, value + half, len(r))
    return _estimate(
        lambda r, w: (w * r).sum() / max(w.sum(), 1e-300), None, (r, w), confidence, ci, n_bootstrap, seed, value=value
    )


def doubly_robust(
    rewards: np.ndarray,
    logged_propensities: np.ndarray,
    target_probabilities: np.ndarray,
    predicted_rewards: np.ndarray,
    predicted_values: np.ndarray,
    *,
    clip: float | None = None,
    confidence: float = 0.95,
    ci: str = "normal",
    n_bootstrap: int = 1000,
    seed: int | None = None,
) -> Estimate:
    """Doubly robust: mean(v + w (r - q)).

    ``predicted_rewards`` is the reward model's q(x_i, a_i) for the logged
    action; ``predicted_values`` its estimate of the target policy's expected
    reward on the row, sum over a of pi(a | x_i) q(x_i, a).
    """
    r, w = _weights(rewards, logged_propensities, target_probabilities, clip)
    q = _array(predicted_rewards, "predicted_rewards", len(r))
    v = _array(predicted_values, "predicted_values", len(r))
    return _estimate(
        lambda r, w, q, v: np.mean(v + w * (r - q)), v + w * (r - q), (r, w, q, v), confidence, ci, n_bootstrap, seed
    )


# --- shared ----------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return statistics.NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def _wilson(p: float, n: int, z: float) -> Estimate:
    """Wilson's score interval of a proportion ``p`` out of ``n``."""
    scale = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / scale
    return Estimate(p, max(0.0, center - half), min(1.0, center + half), n)


def _array(values: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} rows, expected {n}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has values that are not finite numbers")
    return array


def _weights(
    rewards: np.ndarray, logged: np.ndarray, target: np.ndarray, clip: float | None
) -> tuple[np.ndarray, np.ndarray]:
    r = _array(rewards, "rewards")
    if not len(r):
        raise ValueError("no rows to estimate from")
    mu = _array(logged, "logged_propensities", len(r))
    pi = _array(target, "target_probabilities", len(r))
    if ((mu <= 0) | (mu > 1)).any():
        raise ValueError("logged propensities must be in (0, 1]")
    if ((pi < 0) | (pi > 1)).any():
        raise ValueError("target probabilities must be in [0, 1]")
    w = pi / mu
    if clip is not None:
        w = np.minimum(w, clip)
    return r, w


def _estimate(
    statistic: Callable[..., float],
    terms: np.ndarray | None,
    arrays: tuple[np.ndarray, ...],
    confidence: float,
    ci: str,
    n_bootstrap: int,
    seed: int | None,
    value: float | None = None,
) -> Estimate:
    """The statistic over ``arrays`` with a normal interval over per-row ``terms`` or a bootstrap one."""
    n = len(arrays[0])
    if not n:
        raise ValueError("no rows to estimate from")
    z = _z(confidence)
    if value is None:
        value = float(statistic(*arrays))
    if ci == "normal":
        assert terms is not None
        half = z * (float(np.std(terms, ddof=1)) / math.sqrt(n) if n > 1 else math.inf)
        return Estimate(value, value - half, value + half, n)
    if ci == "bootstrap":
        rng = np.random.default_rng(seed)
        draws = np.empty(n_bootstrap)
        for b in range(n_bootstrap):  # resample rows with replacement
            rows = rng.integers(n, size=n)
            draws[b] = statistic(*(a[rows] for a in arrays))
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(draws, [tail, 1.0 - tail])
        return Estimate(value, float(low), float(high), n)
    raise ValueError(f"ci must be 'normal' or 'bootstrap', got {ci!r}")
