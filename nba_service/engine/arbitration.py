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
    n = len(priorities)
    if not n:
        return Ranking(np.empty(0, dtype=np.intp), np.empty(0))
    if offer_of_arm[0] == offer_of_arm[-1] and (n < 3 or (offer_of_arm == offer_of_arm[0]).all()):
        best = np.array([int(np.argmax(priorities))], dtype=np.intp)  # one offer: its best arm (ties: the lower)
        return Ranking(best, priorities[best])
    order = np.lexsort((-priorities, offer_of_arm))  # by offer, its best arm first (ties: the lower arm)
    grouped = offer_of_arm[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
    best = np.sort(order[first])  # the best arm of every offer, in arm order
    best = best[np.argsort(-priorities[best], kind="stable")]  # ranked; equal priorities keep arm order
    return Ranking(best, priorities[best])
