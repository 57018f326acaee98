"""Propensity models: one River logistic regression per (offer, channel) arm.

River learns, one outcome at a time; the request path never calls River.
After every update the arm's weights are copied into a numpy matrix aligned
with the bound policy snapshot's arms, so scoring every candidate of a request
is one matrix-vector product. An arm that never learned scores its offer's
configured prior (the model's initial intercept is ``logit(prior)``), so a new
offer is tried without waiting for data.

>>> import numpy as np
>>> bank = ModelBank(learning_rate=0.1)
>>> bank.learn("loan", "push", {"segment=mass": 1.0}, 1.0, prior=0.1)
True
>>> bank.updates
1
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from river import linear_model, optim

from nba_service.engine.features import FEATURE_DIM, hash_features

if TYPE_CHECKING:
    from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["ModelBank", "logit"]

_FORMAT = 1


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class ModelBank:
    """The online models of every arm, with a numpy view for scoring."""

    def __init__(self, learning_rate: float = 0.05, l2: float = 0.0) -> None:
        self.learning_rate = learning_rate
        self.l2 = l2
        self._models: dict[tuple[str, str], linear_model.LogisticRegression] = {}
        self._updates = 0
        self._rows: Mapping[tuple[str, str], int] = {}
        self._weights = np.zeros((0, FEATURE_DIM))
        self._intercepts = np.zeros(0)
        self._published_version: int | None = None
        self.version = "prior"
        """The published model version serving (``m<N>``), ``prior`` before any; follows ``published_version``."""

    @property
    def updates(self) -> int:
        """Outcomes learned since the models were created."""
        return self._updates

    @property
    def published_version(self) -> int | None:
        """Set by whoever loaded these models from a published snapshot."""
        return self._published_version

    @published_version.setter
    def published_version(self, published: int | None) -> None:
        self._published_version = published
        self.version = "prior" if published is None else f"m{published}"

    def bind(self, snapshot: PolicySnapshot) -> None:
        """Align the scoring matrix with the arms of a (new) policy snapshot."""
        weights = np.zeros((len(snapshot.arm_keys), FEATURE_DIM))
        intercepts = np.array([logit(p) for p in snapshot.arm_prior])
        for row, key in enumerate(snapshot.arm_keys):
            model = self._models.get(key)
            if model is not None:
                self._copy(model, weights, intercepts, row)
        self._rows = snapshot.arm_index
        self._weights, self._intercepts = weights, intercepts

    def score(self, arms: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Probability of acceptance of each arm for the feature vector ``x``."""
        z = self._weights[arms] @ x + self._intercepts[arms]
        return 1.0 / (1.0 + np.exp(-z))

    def learn(self, offer_id: str, channel: str, features: Mapping[str, float], reward: float, prior: float) -> bool:
        """Learn one outcome of an arm; ``prior`` seeds a model seen for the first time."""
        key = (offer_id, channel)
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = linear_model.LogisticRegression(
                optimizer=optim.SGD(self.learning_rate),
                l2=self.l2,
                intercept_init=logit(prior),
                intercept_lr=self.learning_rate,
            )
        model.learn_one(hash_features(features), reward > 0)
        self._updates += 1
        row = self._rows.get(key)
        if row is not None:
            self._copy(model, self._weights, self._intercepts, row)
        return True

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learn at ``learning_rate`` from now on, in every arm (a challenger started from other models)."""
        self.learning_rate = learning_rate
        for model in self._models.values():
            model.optimizer = optim.SGD(learning_rate)
            model.intercept_lr = optim.schedulers.Constant(learning_rate)

    def describe(self) -> dict[str, object]:
        """Every arm's intercept and non-zero weights by hashed feature column, for export."""
        arms = {}
        for (offer_id, channel), model in sorted(self._models.items()):
            arms[f"{offer_id}/{channel}"] = {
                "intercept": float(model.intercept),
                "weights": {str(column): float(w) for column, w in sorted(model.weights.items()) if w},
            }
        return {
            "updates": self._updates,
            "feature_dim": FEATURE_DIM,
            "feature_hashing": "crc32(name) % feature_dim",
            "arms": arms,
        }

    def to_bytes(self) -> bytes:
        return pickle.dumps(
            {
                "format": _FORMAT,
                "updates": self._updates,
                "models": self._models,
                "learning_rate": self.learning_rate,
                "l2": self.l2,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelBank:
        state = pickle.loads(data)
        if state.get("format") != _FORMAT:
            raise ValueError(f"unsupported model snapshot format {state.get('format')!r}")
        bank = cls(state["learning_rate"], state["l2"])
        bank._models = state["models"]
        bank._updates = state["updates"]
        return bank

    @staticmethod
    def _copy(model: linear_model.LogisticRegression, weights: np.ndarray, intercepts: np.ndarray, row: int) -> None:
        weights[row] = 0.0
        for column, value in model.weights.items():
            weights[row, column] = value
        intercepts[row] = model.intercept
