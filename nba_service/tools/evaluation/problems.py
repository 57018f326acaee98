"""Contextual-bandit problems with known answers, made from classification data sets.

The method is the supervised-to-bandit conversion of Bietti, Agarwal & Langford,
"A Contextual Bandit Bake-off", JMLR 22(133), 2021: each class of a
classification data set is an arm, each row is a decision whose context is the
row's features, and an arm earns reward 1 when it is the row's class and 0
otherwise. Because the reward of every arm is known in every row (full
information), a policy that sees only the reward of the arm it chose can be
scored exactly, next to the best fixed arm in hindsight (the most frequent
class), the oracle (always the right class: mean reward 1) and uniform random
(1 / arms).

The suite mixes two bundled real data sets (shuffled with a fixed seed, so the
row order is the suite's own, not the file's), stationary synthetic streams,
and two with a change of the world at a known row: a concept drift between two
random RBF generators, and a rotation of the class-to-arm mapping. Every
problem is built from River's data sets with fixed seeds, so it is the same on
every run; the builders in :data:`PROBLEMS` are lazy. A problem's contexts are
plain Python strings (tens of MB for 20,000 rows of 21 floats): build one at a
time.

This module is only data: running a policy on a problem is the runner's work.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "PROBLEMS",
    "RBF_DRIFT_SEEDS",
    "WAVEFORM_ROTATE_SEED",
    "Problem",
    "classification_problem",
    "image_segments",
    "led",
    "phishing",
    "rbf_drift",
    "summary",
    "waveform",
    "waveform_rotate",
]

SHUFFLE_SEED = 0
"""The seed of the row shuffle of the bundled real data sets."""
SYNTHETIC_ROWS = 20_000
"""Rows taken from each synthetic stream."""
DRIFT_AT = 10_000
"""The row where the world changes in the drift problems."""
LED_SEED = 1
WAVEFORM_SEED = 2
WAVEFORM_ROTATE_SEED = 1
"""Chosen by hand among 0..9 as a seed where the best fixed arm differs before and after the rotation.

The classes are uniform, so the difference is sampling noise (about 1.5 points:
arm 0 earns 34.1% before, 32.8% after; arm 2 33.3% before, 34.2% after).
"""
RBF_DRIFT_SEEDS: dict[str, int] = {
    "seed_model_before": 3,
    "seed_sample_before": 0,
    "seed_model_after": 9,
    "seed_sample_after": 1,
    "drift_seed": 4,
}
"""Seeds of ``rbf-drift``, chosen by hand so that the most frequent class changes at the drift.

With 3 classes, 5 features and 50 centroids, ``seed_model=3`` makes class 2 the
most frequent (~44%, class 1 ~26%) and ``seed_model=9`` makes class 1 the most
frequent (~50%, class 2 ~23%), so the best fixed arm changes by well over 5 points.
"""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Problem:
    """A contextual-bandit problem with full information: every arm's reward in every row.

    Equality is identity (the rewards are an array); compare ``rewards`` with numpy.
    """

    name: str
    """Short name, e.g. ``"image-segments"``."""
    description: str
    """One line: what it is, where the data comes from (package and data set), arms, rows."""
    actions: tuple[str, ...]
    """Arm names, e.g. the class labels as strings."""
    contexts: tuple[dict[str, str], ...]
    """Per row, the feature values as strings (numbers via ``repr``), blanks omitted."""
    rewards: np.ndarray
    """Shape ``(rows, arms)``, float, read-only: the reward each arm would have got in that row."""
    drift_at: int | None = None
    """The row index where the world changes (``None``: stationary)."""

    def __len__(self) -> int:
        return len(self.contexts)


def _text(value: Any) -> str | None:
    """A feature value as a string: bools as ``"1"``/``"0"``, numbers with ``repr``; ``None`` when blank."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return None if math.isnan(number) else repr(number)
    text = str(value)
    return text if text.strip() else None


def _context(x: Mapping[Hashable, Any], keys: dict[Hashable, str]) -> dict[str, str]:
    """A row's features with string keys and string values, blanks (``None``, NaN, empty text) omitted.

    ``keys`` caches the key strings, so that the rows share them.
    """
    context: dict[str, str] = {}
    for key, value in x.items():
        text = _text(value)
        if text is not None:
            name = keys.get(key)
            if name is None:
                name = keys[key] = str(key)
            context[name] = text
    return context


def classification_problem(
    name: str,
    description: str,
    stream: Iterable[tuple[Mapping[Hashable, Any], Any]],
    rows: int | None,
    *,
    seed: int | None,
    drift_at: int | None = None,
) -> Problem:
    """A classification stream of River ``(x, y)`` pairs as a bandit problem: one arm per class, reward 1 if right.

    The arms are the distinct labels as strings, sorted. The first ``rows`` pairs
    are taken (all of them when ``None``; fewer than ``rows`` is an error). With a
    ``seed`` the rows are shuffled with it, as real data files may be sorted (by
    class, by time); synthetic streams keep their order (``None``).
    """
    keys: dict[Hashable, str] = {}
    contexts: list[dict[str, str]] = []
    labels: list[str] = []
    for x, y in stream if rows is None else itertools.islice(stream, rows):
        contexts.append(_context(x, keys))
        labels.append(str(y))
    if rows is not None and len(labels) < rows:
        raise ValueError(f"{name}: the stream has {len(labels)} rows, {rows} asked")
    if not labels:
        raise ValueError(f"{name}: the stream is empty")
    if drift_at is not None and not 0 < drift_at < len(labels):
        raise ValueError(f"{name}: drift_at={drift_at} is not inside the {len(labels)} rows")
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(labels))
        contexts = [contexts[i] for i in order]
        labels = [labels[i] for i in order]
    actions = tuple(sorted(set(labels)))
    index = {action: i for i, action in enumerate(actions)}
    rewards = np.zeros((len(labels), len(actions)), dtype=float)
    rewards[np.arange(len(labels)), [index[label] for label in labels]] = 1.0
    rewards.flags.writeable = False
    return Problem(name, description, actions, tuple(contexts), rewards, drift_at)


def image_segments() -> Problem:
    """UCI Statlog image segmentation, bundled with River: 2,310 rows, 7 classes, shuffled."""
    from river import datasets

    return classification_problem(
        "image-segments",
        "UCI Statlog image segmentation (river.datasets.ImageSegments): 18 numeric features, "
        f"7 arms (brickface, cement, foliage, grass, path, sky, window), 2,310 rows shuffled (seed {SHUFFLE_SEED})",
        datasets.ImageSegments(),
        2_310,
        seed=SHUFFLE_SEED,
    )


def phishing() -> Problem:
    """UCI phishing websites, bundled with River: 1,250 rows, 2 classes, shuffled."""
    from river import datasets

    return classification_problem(
        "phishing",
        "UCI website phishing (river.datasets.Phishing): 9 numeric features, "
        f"2 arms (is_phishing False/True), 1,250 rows shuffled (seed {SHUFFLE_SEED})",
        datasets.Phishing(),
        1_250,
        seed=SHUFFLE_SEED,
    )


def led() -> Problem:
    """The seven-segment LED digit generator with noisy segments: 20,000 rows, 10 classes."""
    from river.datasets import synth

    return classification_problem(
        "led",
        f"LED digits (river.datasets.synth.LED, seed {LED_SEED}, noise_percentage=0.1, no irrelevant features): "
        f"7 binary segments, 10 arms (digits 0-9), {SYNTHETIC_ROWS:,} rows",
        synth.LED(seed=LED_SEED, noise_percentage=0.1, irrelevant_features=False),
        SYNTHETIC_ROWS,
        seed=None,
    )


def waveform() -> Problem:
    """Breiman's waveform generator: 20,000 rows, 3 classes, 21 noisy numeric features."""
    from river.datasets import synth

    return classification_problem(
        "waveform",
        f"Breiman's waveforms (river.datasets.synth.Waveform, seed {WAVEFORM_SEED}): 21 numeric features, "
        f"3 arms (waveform classes 0-2), {SYNTHETIC_ROWS:,} rows",
        synth.Waveform(seed=WAVEFORM_SEED),
        SYNTHETIC_ROWS,
        seed=None,
    )


def rbf_drift() -> Problem:
    """Two random RBF generators joined by a concept drift (a sigmoid of width 500) centred on row 10,000."""
    from river.datasets import synth

    s = RBF_DRIFT_SEEDS
    before = synth.RandomRBF(
        seed_model=s["seed_model_before"], seed_sample=s["seed_sample_before"], n_classes=3, n_features=5
    )
    after = synth.RandomRBF(
        seed_model=s["seed_model_after"], seed_sample=s["seed_sample_after"], n_classes=3, n_features=5
    )
    stream = synth.ConceptDriftStream(
        stream=before, drift_stream=after, position=DRIFT_AT, width=500, seed=s["drift_seed"]
    )
    return classification_problem(
        "rbf-drift",
        f"random RBF concept drift (river.datasets.synth.ConceptDriftStream of two RandomRBF, seed_model "
        f"{s['seed_model_before']} then {s['seed_model_after']}, position {DRIFT_AT:,}, width 500): "
        f"5 numeric features, 3 arms (classes 0-2), {SYNTHETIC_ROWS:,} rows; the most frequent class changes",
        stream,
        SYNTHETIC_ROWS,
        seed=None,
        drift_at=DRIFT_AT,
    )


def waveform_rotate() -> Problem:
    """Waveform, but from row 10,000 on arm ``a`` earns the reward of class ``(a + 1) % 3``.

    Every context's best arm changes at the drift. The three classes are drawn
    uniformly, so the best fixed arm changes only by sampling noise (every arm
    earns about 1/3 on either side): this drift is in the contextual mapping.
    """
    from river.datasets import synth

    base = classification_problem(
        "waveform-rotate",
        "",
        synth.Waveform(seed=WAVEFORM_ROTATE_SEED),
        SYNTHETIC_ROWS,
        seed=None,
    )
    rewards = np.array(base.rewards)
    # arm a takes column (a + 1) % 3 of the one-hot of the class
    rewards[DRIFT_AT:] = np.roll(rewards[DRIFT_AT:], -1, axis=1)
    rewards.flags.writeable = False
    return dataclasses.replace(
        base,
        description=f"Breiman's waveforms (river.datasets.synth.Waveform, seed {WAVEFORM_ROTATE_SEED}) whose "
        f"class-to-arm mapping rotates at row {DRIFT_AT:,} (arm a then earns the reward of class (a+1)%3): "
        f"21 numeric features, 3 arms, {SYNTHETIC_ROWS:,} rows; classes are uniform, so the drift is in "
        "the contextual mapping, the best fixed arm barely changes",
        rewards=rewards,
        drift_at=DRIFT_AT,
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "image-segments": image_segments,
    "phishing": phishing,
    "led": led,
    "waveform": waveform,
    "rbf-drift": rbf_drift,
    "waveform-rotate": waveform_rotate,
}
"""The suite, by name, in order: each value builds its problem when called."""


def _figures(actions: tuple[str, ...], rewards: np.ndarray) -> dict[str, Any]:
    """Rows, per-arm mean reward, the best fixed arm in hindsight, the oracle and uniform random."""
    means = rewards.mean(axis=0)
    best = int(np.argmax(means))
    return {
        "rows": int(rewards.shape[0]),
        "arm_means": {action: float(mean) for action, mean in zip(actions, means, strict=True)},
        "best_arm": actions[best],
        "best_fixed": float(means[best]),
        "oracle": float(rewards.max(axis=1).mean()),
        "random": float(rewards.mean()),
    }


def summary(p: Problem) -> dict[str, Any]:
    """The problem's known answers: per-arm mean reward, best fixed arm, oracle and random mean rewards.

    For a drift problem, ``"before"`` and ``"after"`` give the same figures for the
    rows before ``drift_at`` and from it on.
    """
    out: dict[str, Any] = {"name": p.name, "arms": len(p.actions), **_figures(p.actions, p.rewards)}
    if p.drift_at is not None:
        out["drift_at"] = p.drift_at
        out["before"] = _figures(p.actions, p.rewards[: p.drift_at])
        out["after"] = _figures(p.actions, p.rewards[p.drift_at :])
    return out
