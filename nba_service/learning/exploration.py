"""Exploration with logged propensities.

The strategy picks one of the ranked options and returns the exact
probability with which it picked it; that probability is returned to the
caller and stored with the decision, so a challenger policy can later be
evaluated offline from the logs (inverse propensity scoring).

Every strategy has the same two verbs:

- ``choose(priorities) -> (index, propensity)``: the engine's call, with the
  options' priorities (P x V x L x B) sorted best first;
- ``probabilities(priorities)``: the whole distribution ``choose`` draws from,
  for off-policy evaluation and for tests (``choose`` returns one entry of it).

:class:`EpsilonGreedy` exploits the best option and explores uniformly;
:class:`Softmax` explores in proportion to how good an option looks, so a
close second is tried often and a hopeless option almost never. Softmax over
log-priorities is also what Thompson-style "perturb the scores, take the
argmax" gives with Gumbel noise, but with an exact, closed-form propensity
(a sampled-posterior Thompson sampler has none, which IPS needs).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["STRATEGIES", "EpsilonGreedy", "Softmax", "make_explorer"]


class EpsilonGreedy:
    """Exploit the best option with probability 1 - epsilon, else pick uniformly.

    >>> explorer = EpsilonGreedy(epsilon=0.0, seed=1)
    >>> explorer.choose(np.array([0.9, 0.5]))
    (0, 1.0)
    >>> EpsilonGreedy(epsilon=0.2).probabilities(np.array([0.9, 0.5])).tolist()
    [0.9, 0.1]
    """

    def __init__(self, epsilon: float = 0.05, seed: int | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be between 0 and 1, got {epsilon}")
        self.epsilon = epsilon
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def choose(self, priorities: np.ndarray) -> tuple[int, float]:
        """Index of the chosen option (``priorities`` best first) and its probability."""
        n = len(priorities)
        share = self.epsilon / n
        if self.epsilon and self._rng.random() < self.epsilon:  # explore
            pick = int(self._rng.integers(n))
        else:  # exploit
            pick = 0
        return pick, (1.0 - self.epsilon + share) if pick == 0 else share

    def probabilities(self, priorities: np.ndarray) -> np.ndarray:
        """Probability of each option (``priorities`` best first)."""
        n = len(priorities)
        probabilities = np.full(n, self.epsilon / n)
        probabilities[0] += 1.0 - self.epsilon
        return probabilities


class Softmax:
    """Boltzmann exploration: option i with probability proportional to exp(s_i / temperature).

    With ``on="log"`` (the default) s_i is the log of the priority: priorities
    are products (P x V x L x B), so only their ratios matter, and
    probabilities are proportional to ``priority ** (1 / temperature)``:
    temperature 1 picks in proportion to priority, 0.1 turns a 10% lead into
    a 2.6 times higher chance, and temperature 0 is greedy. With ``on="linear"``
    s_i is the priority itself (use when priorities share a known scale).

    >>> explorer = Softmax(temperature=1.0, seed=3)
    >>> explorer.probabilities(np.array([0.3, 0.1])).round(3).tolist()
    [0.75, 0.25]
    >>> pick, propensity = explorer.choose(np.array([0.3, 0.1]))
    >>> bool(propensity == explorer.probabilities(np.array([0.3, 0.1]))[pick])
    True
    >>> Softmax(temperature=0.0).probabilities(np.array([0.3, 0.3, 0.1])).tolist()
    [0.5, 0.5, 0.0]
    """

    def __init__(self, temperature: float = 0.1, on: str = "log", seed: int | None = None) -> None:
        if not temperature >= 0.0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        if on not in ("log", "linear"):
            raise ValueError(f"on must be 'log' or 'linear', got {on!r}")
        self.temperature = temperature
        self.on = on
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def probabilities(self, priorities: np.ndarray) -> np.ndarray:
        """Probability of each option (``priorities`` best first)."""
        priorities = np.asarray(priorities, dtype=float)
        if self.on == "log":
            with np.errstate(divide="ignore"):
                scores = np.log(np.maximum(priorities, 0.0))
        else:
            scores = priorities
        top = scores.max()
        if not np.isfinite(top):  # every priority is zero: nothing to prefer
            return np.full(len(scores), 1.0 / len(scores))
        if self.temperature == 0.0:  # greedy, ties shared
            weights = (scores == top).astype(float)
        else:
            weights = np.exp((scores - top) / self.temperature)
        return weights / weights.sum()

    def choose(self, priorities: np.ndarray) -> tuple[int, float]:
        """Index of the chosen option (``priorities`` best first) and its probability."""
        probabilities = self.probabilities(priorities)
        if len(probabilities) == 1 or probabilities[0] == 1.0:  # nothing to explore: no draw
            return 0, float(probabilities[0])
        cumulative = np.cumsum(probabilities)
        pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        pick = min(pick, len(probabilities) - 1)
        while probabilities[pick] == 0.0:  # rounding at the far end: step back to a real option
            pick -= 1
        return pick, float(probabilities[pick])


STRATEGIES = ("epsilon", "softmax")
"""Names :func:`make_explorer` accepts."""


def make_explorer(
    strategy: str, *, epsilon: float = 0.05, temperature: float = 0.1, seed: int | None = None
) -> EpsilonGreedy | Softmax:
    """The exploration strategy called ``strategy``, seeded.

    >>> make_explorer("softmax", temperature=0.2, seed=1).temperature
    0.2
    """
    if strategy == "epsilon":
        return EpsilonGreedy(epsilon, seed)
    if strategy == "softmax":
        return Softmax(temperature, seed=seed)
    raise ValueError(f"unknown exploration strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
