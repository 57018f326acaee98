"""The challenger's guard: stop serving it as soon as the logs show it is worse than the champion.

With ``NBA_MODE=learned+challenger`` and ``NBA_CHALLENGER_SHARE`` > 0, each
decision is served by the challenger with probability ``share`` and by the
champion otherwise, and the logged propensity is the mixture's:
``mu(a) = (1 - share) pi_champion(a) + share pi_challenger(a)``. Every decision
also carries its *trial weights* ``w = pi(a) / mu(a)`` for both policies, and
the outcome stream brings them back to the learner with the reward. Then
``mean(w_challenger r) - mean(w_champion r)`` estimates, without bias, how much
more reward per decision the challenger would earn than the champion if either
served everything (inverse propensity scoring over the same rows, so the
difference is paired and its noise partly cancels).

The learner keeps the running sums (:class:`ChallengerGuard`) and publishes
them with every model version. Serving replicas read them with the models:
once at least :data:`MIN_ROWS` outcomes are in and the upper end of the
difference's 99% confidence interval is below zero, the challenger is
*suspended*: it serves nothing (its choices are still logged, so the guard
keeps measuring and lifts the suspension if the evidence turns). Promotion is
never automatic: ``nba model promote`` is a human decision, taken on
``nba shadow report``.

The guard looks at the data after every published version, so over a long
trial its false-alarm rate is above the nominal 1%: a false alarm costs the
challenger its traffic, never the champion's customers anything.

>>> guard = ChallengerGuard()
>>> for i in range(600):  # the challenger would have won nothing, the champion half the time
...     guard.add(trial_weights(1.0, 0.0), reward=float(i % 2))
>>> guard.suspended
True
>>> round(guard.difference()[0], 2)
-0.5
"""

from __future__ import annotations

import dataclasses
import json
import math

__all__ = ["MIN_ROWS", "ChallengerGuard", "Z", "parse_trial_weights", "trial_weights"]

MIN_ROWS = 500
"""Outcomes before the guard may suspend a challenger."""
Z = 2.576
"""The guard's interval: 99% two-sided (the upper end is what suspends)."""


def trial_weights(champion: float, challenger: float) -> str:
    """The two weights as stored with a decision and carried by the outcome stream."""
    return f"{champion:.6g} {challenger:.6g}"


def parse_trial_weights(raw: str) -> tuple[float, float] | None:
    """``(w_champion, w_challenger)``, or None for a decision logged without a trial."""
    parts = raw.split()
    if len(parts) != 2:
        return None
    return float(parts[0]), float(parts[1])


@dataclasses.dataclass(slots=True)
class ChallengerGuard:
    """Running sums of the per-outcome difference ``(w_challenger - w_champion) r``."""

    rows: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, weights: str, reward: float) -> None:
        """One settled outcome of a decision logged with ``weights`` (:func:`trial_weights`)."""
        parsed = parse_trial_weights(weights)
        if parsed is None:
            return
        champion, challenger = parsed
        d = (challenger - champion) * reward
        self.rows += 1
        self.total += d
        self.squares += d * d

    def difference(self) -> tuple[float, float, float]:
        """Challenger minus champion, reward per decision: (estimate, 99% CI low, 99% CI high)."""
        if self.rows == 0:
            return 0.0, -math.inf, math.inf
        mean = self.total / self.rows
        if self.rows == 1:
            return mean, -math.inf, math.inf
        variance = max(self.squares / self.rows - mean * mean, 0.0) * self.rows / (self.rows - 1)
        half = Z * math.sqrt(variance / self.rows)
        return mean, mean - half, mean + half

    @property
    def suspended(self) -> bool:
        """True when the challenger is, with 99% confidence, worse than the champion."""
        return self.rows >= MIN_ROWS and self.difference()[2] < 0.0

    def as_dict(self) -> dict[str, object]:
        mean, low, high = self.difference()
        return {
            "rows": self.rows,
            "difference": mean,
            "ci_low": low if math.isfinite(low) else None,
            "ci_high": high if math.isfinite(high) else None,
            "suspended": self.suspended,
            "min_rows": MIN_ROWS,
        }

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "total": self.total, "squares": self.squares})

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> ChallengerGuard:
        """The sums as published (a fresh guard for None)."""
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(int(data["rows"]), float(data["total"]), float(data["squares"]))
