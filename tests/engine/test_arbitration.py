import numpy as np
import pytest

from nba_service.engine.arbitration import rank_offers


def reference(priorities: list[float], offer_of_arm: list[int]) -> tuple[list[int], list[float]]:
    """One arm per offer (its best, the first arm on a tie), offers by priority, ties in arm order."""
    best: dict[int, int] = {}
    for arm, offer in enumerate(offer_of_arm):
        if offer not in best or priorities[arm] > priorities[best[offer]]:
            best[offer] = arm
    arms = sorted(best.values(), key=lambda a: (-priorities[a], a))
    return arms, [priorities[a] for a in arms]


def test_keeps_the_best_arm_of_each_offer_ranked():
    ranking = rank_offers(np.array([0.1, 0.5, 0.3, 0.2]), np.array([0, 0, 1, 1]))
    assert ranking.arms.tolist() == [1, 2]
    assert ranking.priorities.tolist() == [0.5, 0.3]


def test_no_arms_no_ranking():
    ranking = rank_offers(np.empty(0), np.empty(0, dtype=np.intp))
    assert ranking.arms.tolist() == [] and ranking.priorities.tolist() == []


@pytest.mark.parametrize("arms", [1, 2, 7, 60, 400])
def test_matches_the_definition_with_many_ties(arms):
    rng = np.random.default_rng(arms)
    for _ in range(200):
        # few distinct priorities, so ties within and across offers are common
        priorities = rng.integers(0, 4, arms) / 4
        offer_of_arm = np.sort(rng.integers(0, max(1, arms // 2), arms))
        ranking = rank_offers(priorities, offer_of_arm)
        expected_arms, expected_priorities = reference(priorities.tolist(), offer_of_arm.tolist())
        assert ranking.arms.tolist() == expected_arms
        assert ranking.priorities.tolist() == expected_priorities
