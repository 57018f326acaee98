"""What exploration picks from: the offers worth sending and the posterior of each of their arms."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """What a strategy picks from: the offers worth sending and every arm of theirs still allowed.

    Arm arrays are aligned; ``best`` and the returned arm are positions in them.
    """

    priorities: np.ndarray
    """Each offer's best priority at the posterior mean, best offer first."""
    best: np.ndarray
    """The position of each of those offers' best arm."""
    logit_mean: np.ndarray
    """Per arm, the posterior mean of the logit of P."""
    logit_sd: np.ndarray
    """Per arm, its posterior standard deviation."""
    scale: np.ndarray
    """Per arm, what multiplies P into its priority (V x L x B, value multiplier, channel boost)."""

    @classmethod
    def ranked(cls, priorities: np.ndarray) -> Options:
        """Options known only by their priorities (one arm per offer, no posterior): for tests and tools."""
        priorities = np.asarray(priorities, dtype=float)
        n = len(priorities)
        with np.errstate(divide="ignore"):
            logits = np.log(priorities) - np.log1p(-np.minimum(priorities, 1 - 1e-12))
        return cls(priorities, np.arange(n), logits, np.zeros(n), np.ones(n))
