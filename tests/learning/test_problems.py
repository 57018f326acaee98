"""The bandit problems of ``nba evaluate --suite``: classification data turned into bandits with known answers."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from nba_service.tools.evaluation import problems
from nba_service.tools.evaluation.problems import PROBLEMS, Problem, classification_problem, summary

CLASSIFICATION = ("image-segments", "phishing", "led", "waveform", "rbf-drift", "waveform-rotate")
"""Every problem of the suite is a converted classification problem: one right arm per row."""

SHAPES = {
    "image-segments": (2_310, 7),
    "phishing": (1_250, 2),
    "led": (20_000, 10),
    "waveform": (20_000, 3),
    "rbf-drift": (20_000, 3),
    "waveform-rotate": (20_000, 3),
}


@functools.cache
def built(name: str) -> Problem:
    """Each problem built once for the whole module."""
    return PROBLEMS[name]()


def test_the_suite_in_order():
    assert list(PROBLEMS) == list(SHAPES)
    assert set(CLASSIFICATION) == set(PROBLEMS)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_problem_builds_with_its_shape(name):
    p = built(name)
    assert p.name == name
    assert p.description and "\n" not in p.description
    rows, arms = SHAPES[name]
    assert p.rewards.shape == (rows, arms)
    assert p.rewards.dtype == float
    assert len(p) == len(p.contexts) == rows
    assert len(p.actions) == arms == len(set(p.actions))
    assert list(p.actions) == sorted(p.actions)
    assert all(isinstance(action, str) for action in p.actions)
    assert not p.rewards.flags.writeable


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_exactly_one_right_arm_per_row(name):
    rewards = built(name).rewards
    assert set(np.unique(rewards)) == {0.0, 1.0}
    assert (rewards.sum(axis=1) == 1.0).all()
    # every arm is right somewhere
    assert (rewards.sum(axis=0) > 0).all()


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_contexts_are_non_empty_and_string_valued(name):
    for context in built(name).contexts:
        assert context
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in context.items())


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_building_twice_gives_the_same_problem(name):
    first, again = built(name), PROBLEMS[name]()
    assert again.actions == first.actions
    assert again.drift_at == first.drift_at
    np.testing.assert_array_equal(again.rewards, first.rewards)
    assert again.contexts == first.contexts


def test_bundled_data_sets_are_shuffled():
    """The shuffle spreads every class evenly over the rows of the bundled data sets."""
    for name in ("image-segments", "phishing"):
        rewards = built(name).rewards
        half = len(rewards) // 2
        first, second = rewards[:half].mean(axis=0), rewards[half:].mean(axis=0)
        np.testing.assert_allclose(first, second, atol=0.05)


@pytest.mark.parametrize("name", ["rbf-drift", "waveform-rotate"])
def test_the_best_fixed_arm_changes_at_the_drift(name):
    p = built(name)
    assert p.drift_at == 10_000
    s = summary(p)
    before, after = s["before"], s["after"]
    assert before["rows"] == after["rows"] == 10_000
    assert before["best_arm"] != after["best_arm"]


def test_rbf_drift_changes_the_best_fixed_arm_by_a_clear_margin():
    """The hard-coded seeds: each side's best arm beats the other side's best arm by at least 5 points."""
    s = summary(built("rbf-drift"))
    before, after = s["before"], s["after"]
    old, new = before["best_arm"], after["best_arm"]
    assert before["arm_means"][old] - before["arm_means"][new] >= 0.05
    assert after["arm_means"][new] - after["arm_means"][old] >= 0.05


def test_waveform_rotate_rotates_the_class_to_arm_mapping():
    """Before the drift arm ``a`` is right on class ``a``; from it on, on class ``(a + 1) % 3``."""
    from river.datasets import synth

    p = built("waveform-rotate")
    labels = np.array([y for _, y in synth.Waveform(seed=problems.WAVEFORM_ROTATE_SEED).take(len(p))])
    assert p.actions == ("0", "1", "2")
    arms = np.arange(3)
    drift = p.drift_at
    assert drift is not None
    np.testing.assert_array_equal(p.rewards[:drift], labels[:drift, None] == arms)
    np.testing.assert_array_equal(p.rewards[drift:], labels[drift:, None] == (arms + 1) % 3)
    # the right arm after the drift is (label - 1) % 3, and no context keeps its best arm
    np.testing.assert_array_equal(p.rewards[drift:].argmax(axis=1), (labels[drift:] - 1) % 3)
    # the contexts are plain waveform's, unchanged by the rotation
    assert (
        p.contexts
        == classification_problem(
            "w", "", synth.Waveform(seed=problems.WAVEFORM_ROTATE_SEED), len(p), seed=None
        ).contexts
    )


def test_summary_of_a_stationary_problem():
    s = summary(built("phishing"))
    assert s["rows"] == 1_250 and s["arms"] == 2
    assert "before" not in s and "drift_at" not in s
    assert s["oracle"] == 1.0
    assert s["random"] == pytest.approx(0.5)
    assert s["best_fixed"] == max(s["arm_means"].values()) > 0.5
    assert sum(s["arm_means"].values()) == pytest.approx(1.0)


def test_summary_figures_on_a_tiny_problem():
    rewards = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = Problem("tiny", "", ("a", "b", "c"), ({"x": "1"},) * 4, rewards, drift_at=2)
    s = summary(p)
    assert s["arm_means"] == {"a": 0.25, "b": 0.5, "c": 0.25}
    assert (s["best_arm"], s["best_fixed"], s["oracle"]) == ("b", 0.5, 1.0)
    assert s["random"] == pytest.approx(1 / 3)
    assert s["before"]["arm_means"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert s["after"]["arm_means"] == {"a": 0.0, "b": 0.5, "c": 0.5}


def test_classification_problem_converts_river_pairs():
    stream = [
        ({"flag": True, "n": 3, "x": 0.1, "gone": None, "nan": float("nan"), "word": "red", "blank": " "}, True),
        ({"flag": False, "n": -1, "x": 2.0, 7: 1}, False),
        ({"x": 1e-9}, True),
    ]
    p = classification_problem("toy", "toy", stream, None, seed=None)
    assert p.actions == ("False", "True")
    assert p.contexts == (
        {"flag": "1", "n": "3", "x": "0.1", "word": "red"},
        {"flag": "0", "n": "-1", "x": "2.0", "7": "1"},
        {"x": "1e-09"},
    )
    np.testing.assert_array_equal(p.rewards, [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert p.drift_at is None


def test_classification_problem_takes_rows_and_shuffles_with_the_seed():
    stream = [({"i": i}, i % 3) for i in range(30)]
    kept = classification_problem("toy", "toy", iter(stream), 12, seed=None)
    assert [c["i"] for c in kept.contexts] == [str(i) for i in range(12)]
    shuffled = classification_problem("toy", "toy", stream, 12, seed=5)
    again = classification_problem("toy", "toy", stream, 12, seed=5)
    order = [int(c["i"]) for c in shuffled.contexts]
    assert sorted(order) == list(range(12)) and order != list(range(12))
    assert shuffled.contexts == again.contexts
    # each row keeps its own label
    for context, row in zip(shuffled.contexts, shuffled.rewards, strict=True):
        assert row[int(context["i"]) % 3] == 1.0


def test_classification_problem_refuses_a_short_stream_or_a_drift_outside():
    stream = [({"i": i}, i % 2) for i in range(5)]
    with pytest.raises(ValueError, match="5 rows, 6 asked"):
        classification_problem("toy", "toy", stream, 6, seed=None)
    with pytest.raises(ValueError, match="drift_at"):
        classification_problem("toy", "toy", stream, 5, seed=None, drift_at=5)
