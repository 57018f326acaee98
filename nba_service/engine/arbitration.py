"""Arbitration: priority = P x V x L x B, best channel per offer, ranked.

P is the model's propensity for an (offer, channel) arm, V the offer's value,
L the product of its levers (offer, category, global) and B its business
weight; the customer's preferred channel gets the policy's boost.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Ranking", "rank_offers"]


@dataclasses.dataclass(frozen=True, slots=True)
class Ranking:
    arms: np.ndarray
    """The best arm of each offer, best offer first (indices into the request's arms)."""
    priorities: np.ndarray
    """Their priorities, descending."""


def rank_offers(priorities: np.ndarray, offer_of_arm: np.ndarray) -> Ranking:
    """Keep the best arm of every offer and rank offers by it.

    >>> r = rank_offers(np.array([0.1, 0.5, 0.3, 0.2]), np.array([0, 0, 1, 1]))
    >>> r.arms.tolist(), r.priorities.tolist()
    ([1, 2], [0.5, 0.3])
    """
    if not len(priorities):
        return Ranking(np.empty(0, dtype=np.intp), np.empty(0))
    order = np.argsort(-priorities, kind="stable")
    _, first = np.unique(offer_of_arm[order], return_index=True)
    best = order[np.sort(first)]
    return Ranking(best, priorities[best])
