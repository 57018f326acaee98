"""Exploration with logged propensities.

The strategy picks one of the ranked options and returns the exact
probability with which it picked it; that probability is returned to the
caller and stored with the decision, so a challenger policy can later be
evaluated offline from the logs (inverse propensity scoring).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EpsilonGreedy"]


class EpsilonGreedy:
    """Exploit the best option with probability 1 - epsilon, else pick uniformly.

    >>> explorer = EpsilonGreedy(epsilon=0.0, seed=1)
    >>> explorer.choose(np.array([0.9, 0.5]))
    (0, 1.0)
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
