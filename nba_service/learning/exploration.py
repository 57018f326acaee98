"""Exploration with logged propensities.

The strategy picks one of the ranked options and returns the exact
probability with which it picked it; that probability is returned to the
caller and stored with the decision, so a challenger policy can later be
evaluated offline from the logs (inverse propensity scoring).

The engine calls ``pick(options) -> (arm, propensity)`` with the offers worth
sending (:class:`Options`: their best arms' priorities P x V x L x B, best
first, and every allowed arm's posterior); the strategy returns the position
of the arm it chose and the probability with which it chose it.

- :class:`ThompsonSampling` (the default) draws every arm's acceptance from
  its posterior and takes the best draw: arms are tried as often as they may
  be the best, so a clearly bad arm is almost never tried and an uncertain one
  often. Its propensity has no closed form: it is estimated from the same
  vectorised posterior draws (see the class for the error).
- :class:`UpperConfidence` (UCB) takes the arm whose optimistic P (posterior
  mean plus ``width`` standard deviations of the logit) gives the best
  priority: deterministic, propensity 1.
- :class:`EpsilonGreedy` exploits the best offer and explores uniformly;
  :class:`Softmax` explores in proportion to how good an offer looks. Both
  pick among the ranked offers by ``choose(priorities)`` and have the exact
  distribution ``probabilities(priorities)``.
"""

from __future__ import annotations

import math

import numpy as np

from nba_service.engine.options import Options

__all__ = [
    "STRATEGIES",
    "EpsilonGreedy",
    "Options",
    "Softmax",
    "ThompsonSampling",
    "UpperConfidence",
    "make_explorer",
]


class _RankedStrategy:
    """A strategy that picks among offers by their best priority (its best arm)."""

    def choose(self, priorities: np.ndarray) -> tuple[int, float]:
        raise NotImplementedError

    def pick(self, options: Options) -> tuple[int, float]:
        """The position of the chosen arm and its probability."""
        index, propensity = self.choose(options.priorities)
        return int(options.best[index]), propensity

    def probabilities(self, priorities: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def distribution(self, options: Options) -> np.ndarray:
        """The probability of every arm: each offer's share goes to its best arm."""
        out = np.zeros(len(options.logit_mean))
        out[options.best] = self.probabilities(options.priorities)
        return out


class EpsilonGreedy(_RankedStrategy):
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


class Softmax(_RankedStrategy):
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


class ThompsonSampling:
    """Thompson sampling: draw each arm's logit from its posterior, take the arm of the best priority.

    The draws' standard deviation is the posterior's times ``scale`` (0.25 by default): the
    variance scaling of Chapelle & Li (2011), chosen on ``nba evaluate --suite``. Unscaled
    (``scale=1``), a model with a few uninformative features keeps exploring arms a few points
    worse for tens of thousands of rows.

    The served choice is the winner of the first of ``draws`` vectorised
    posterior draws; the logged propensity is the share of the ``draws`` draws
    that the chosen arm wins. Given the draws, that share is exactly the
    probability of the choice (the draws are exchangeable, so serving the first
    is serving a uniformly random one), and it estimates the choice's marginal
    Thompson probability ``p`` with a bias of at most ``(1 - p) / draws`` and a
    standard deviation of ``sqrt((draws - 1) p (1 - p)) / draws``, at most
    ``0.5 / sqrt(draws)``: with the default 256 draws, bias <= 0.004 and
    standard deviation <= 0.031 (0.013 at p = 0.05). It is never 0.

    >>> explorer = ThompsonSampling(seed=7)
    >>> options = Options(np.array([0.3, 0.1]), np.array([0, 1]), np.array([-0.85, -2.2]),
    ...                   np.array([0.0, 0.0]), np.array([1.0, 1.0]))
    >>> explorer.pick(options)  # no uncertainty: the best arm, always
    (0, 1.0)
    """

    def __init__(self, draws: int = 256, seed: int | None = None, scale: float = 0.25) -> None:
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        if not 0.0 < scale <= 10.0:
            raise ValueError(f"scale must be in (0, 10], got {scale}")
        self.draws = draws
        self.scale = scale
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def pick(self, options: Options) -> tuple[int, float]:
        """The position of the chosen arm and the estimated probability of choosing it."""
        n = len(options.logit_mean)
        if n == 1:
            return 0, 1.0
        winners = self.winners(options, self.draws)
        chosen = int(winners[0])
        return chosen, float(np.count_nonzero(winners == chosen)) / len(winners)

    def winners(self, options: Options, draws: int) -> np.ndarray:
        """The winning arm of each of ``draws`` posterior draws."""
        noise = self._rng.standard_normal((draws, len(options.logit_mean)))
        z = options.logit_mean + noise * (self.scale * options.logit_sd)
        priority = options.scale / (1.0 + np.exp(-z))
        return np.argmax(priority, axis=1)

    def distribution(self, options: Options) -> np.ndarray:
        """Every arm's probability, estimated as :meth:`pick`'s propensity is: from ``draws`` draws."""
        if len(options.logit_mean) == 1:
            return np.ones(1)
        return self.probabilities(options, self.draws)

    def probabilities(self, options: Options, draws: int = 100_000) -> np.ndarray:
        """Each arm's probability of being chosen, by Monte Carlo over ``draws`` draws (for tests and tools)."""
        winners = self.winners(options, draws)
        return np.bincount(winners, minlength=len(options.logit_mean)) / draws


class UpperConfidence:
    """UCB: the arm whose optimistic P (logit mean + ``width`` sd) gives the best priority; propensity 1.

    >>> options = Options(np.array([0.3, 0.1]), np.array([0, 1]), np.array([-0.85, -2.2]),
    ...                   np.array([0.0, 2.0]), np.array([1.0, 1.0]))
    >>> UpperConfidence(width=1.0).pick(options)  # the uncertain arm's optimistic P is higher
    (1, 1.0)
    """

    def __init__(self, width: float = 1.0) -> None:
        if not width >= 0.0 or math.isinf(width):
            raise ValueError(f"width must be a finite number >= 0, got {width}")
        self.width = width

    def pick(self, options: Options) -> tuple[int, float]:
        z = options.logit_mean + self.width * options.logit_sd
        priority = options.scale / (1.0 + np.exp(-z))
        return int(np.argmax(priority)), 1.0

    def distribution(self, options: Options) -> np.ndarray:
        """All the probability on the arm :meth:`pick` takes."""
        out = np.zeros(len(options.logit_mean))
        out[self.pick(options)[0]] = 1.0
        return out


Explorer = EpsilonGreedy | Softmax | ThompsonSampling | UpperConfidence

STRATEGIES = ("thompson", "ucb", "epsilon", "softmax")
"""Names :func:`make_explorer` accepts; the first is the default."""


def make_explorer(
    strategy: str,
    *,
    epsilon: float = 0.05,
    temperature: float = 0.1,
    draws: int = 256,
    thompson_scale: float = 0.25,
    ucb_width: float = 1.0,
    seed: int | None = None,
) -> Explorer:
    """The exploration strategy called ``strategy``, seeded.

    >>> make_explorer("softmax", temperature=0.2, seed=1).temperature
    0.2
    >>> make_explorer("thompson", draws=64).draws
    64
    """
    if strategy == "thompson":
        return ThompsonSampling(draws, seed, thompson_scale)
    if strategy == "ucb":
        return UpperConfidence(ucb_width)
    if strategy == "epsilon":
        return EpsilonGreedy(epsilon, seed)
    if strategy == "softmax":
        return Softmax(temperature, seed=seed)
    raise ValueError(f"unknown exploration strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
