"""Acceptance models that know what they don't know: online Bayesian logistic regression per arm.

Every (offer, channel) arm scores ``P(accept) = sigmoid(w . x)`` where the
weights ``w`` have a diagonal Gaussian posterior (a mean and a precision per
weight), updated one outcome at a time by the online Laplace approximation of
Chapelle & Li ("An Empirical Evaluation of Thompson Sampling", NIPS 2011):

- the mode of prior x likelihood lies on the line ``m + t * x / q`` through the
  prior mean, so finding it is a scalar Newton solve of
  ``z = m.x + v * (y - sigmoid(z))`` with ``v = sum(x_i^2 / q_i)``;
- the mean moves to that mode and each precision grows by
  ``sigmoid(z) * (1 - sigmoid(z)) * x_i^2``: the information the outcome carried.

So a single outcome moves P by what the evidence justifies: a lot for a new
arm, hardly at all for an arm with a thousand outcomes behind it.

**Sharing.** An arm's weights are the sum of two blocks: its offer's (learned
from the outcomes of every channel of the offer) and its own deviation (learned
from its outcomes only, with a tighter prior around 0). A new channel of a
known offer starts from what the offer learned elsewhere.

**Priors.** The offer block's intercept starts at ``logit(prior)`` of the
offer's configured prior with standard deviation :attr:`BayesConfig.prior_sd`
(1 logit: a new offer's P is known within a factor of about 2.7); feature
weights start at 0.

**Forgetting.** Before an update, the information each touched weight holds
above its prior decays by ``1 - 1/memory``: a weight never rests on more than
about ``memory`` outcomes, so when the world changes (a new best arm) the
posterior widens enough to follow it.

**Features.** Readable names (see :mod:`~nba_service.engine.features`): a
``name=value`` feature is one-hot (0/1) and kept as is; any other is numeric
and standardised online with the running mean and variance of the outcomes
learned (River's :class:`~river.preprocessing.StandardScaler`), clipped to +-5
standard deviations. A missing numeric feature contributes 0: its mean. Until a
numeric feature has been seen in 10 outcomes its scale is unknown, and it
counts only when it is a 0/1 flag.
Names hash into :data:`~nba_service.engine.features.FEATURE_DIM` columns, plus
an intercept column.

**Value rewards.** A reward above 1 (an offer whose goal is value) is learned
as an acceptance, and its size feeds the arm's value multiplier: the running
mean of its positive rewards, shrunk towards every arm's mean by 3
pseudo-observations (so binary rewards keep it at exactly 1, and an arm that
has not converted yet is valued like the others, not at 1).

The request path never loops over weights: after every update the arm's
posterior mean and variance are copied into numpy matrices aligned with the
bound policy snapshot's arms, so scoring every candidate of a request is two
matrix-vector products.

>>> bank = ModelBank()
>>> bank.learn("loan", "push", {"segment=mass": 1.0}, 1.0, prior=0.1)
True
>>> bank.updates
1
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from nba_service.engine.features import FEATURE_DIM, feature_index

if TYPE_CHECKING:
    from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["BayesConfig", "ModelBank", "logit", "sigmoid"]

_FORMAT = 2
_DIM = FEATURE_DIM + 1
_BIAS = FEATURE_DIM
"""The intercept's column."""
_CLIP = 5.0
_MIN_SCALE_COUNT = 10
"""Outcomes with a numeric feature before it is standardised; until then it counts only as a 0/1 flag."""
_VALUE_PSEUDO = 3.0


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclasses.dataclass(frozen=True, slots=True)
class BayesConfig:
    """The models' hyperparameters; the defaults were chosen on ``nba evaluate --suite``."""

    prior_sd: float = 1.0
    """Standard deviation (logit) of an offer's intercept around ``logit(prior)``."""
    weight_sd: float = 0.25
    """Prior standard deviation of an offer's feature weights."""
    arm_sd: float = 0.25
    """Prior standard deviation of an arm's deviation from its offer (intercept and weights)."""
    memory: float = 10_000.0
    """Outcomes a weight remembers: the information above the prior decays by 1 - 1/memory per update."""
    learning_rate: float = 1.0
    """How many observations one outcome counts as (1: exact Bayes; below 1 learns more cautiously)."""


class _Block:
    """A Gaussian over the weights of one block: the mean and the full covariance of its columns."""

    __slots__ = ("cov", "mean", "prior_var")

    def __init__(self, intercept: float, intercept_sd: float, weight_sd: float) -> None:
        self.mean = np.zeros(_DIM)
        self.mean[_BIAS] = intercept
        self.prior_var = np.full(_DIM, weight_sd**2)
        self.prior_var[_BIAS] = intercept_sd**2
        self.cov = np.diag(self.prior_var)


def _standard_scaler() -> Any:
    """River's online standard scaler, imported on first use: River (with SciPy) takes about a second to
    import, which every ``nba`` command would otherwise pay before doing anything."""
    from river import preprocessing

    return preprocessing.StandardScaler()


class ModelBank:
    """The posterior of every arm, with numpy matrices for scoring."""

    def __init__(self, config: BayesConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or BayesConfig(), **overrides)
        self._offers: dict[str, _Block] = {}
        self._arms: dict[tuple[str, str], _Block] = {}
        self._values: dict[tuple[str, str], tuple[float, float]] = {}
        """Arm -> (sum, count) of its positive rewards."""
        self._scaler = _standard_scaler()
        self._scale: dict[str, tuple[float, float]] = {}
        """Numeric feature -> (mean, 1/std), once it has enough outcomes to be standardised."""
        self._updates = 0
        self._rows: Mapping[tuple[str, str], int] = {}
        self._arm_keys: list[tuple[str, str]] = []
        self._offer_rows: dict[str, list[int]] = {}
        self._row_prior: np.ndarray = np.zeros(0)
        self._mean = np.zeros((0, _DIM))
        self._cov = np.zeros((0, _DIM, _DIM))
        self._value = np.ones(0)
        self._value_sums = np.zeros((0, 2))
        self._published_version: int | None = None
        self.version = "prior"
        """The published model version serving (``m<N>``), ``prior`` before any; follows ``published_version``."""

    @property
    def learning_rate(self) -> float:
        return self.config.learning_rate

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

    # --- scoring ---------------------------------------------------------------------

    def bind(self, snapshot: PolicySnapshot) -> None:
        """Align the scoring matrices with the arms of a (new) policy snapshot."""
        n = len(snapshot.arm_keys)
        self._rows = snapshot.arm_index
        self._arm_keys = list(snapshot.arm_keys)
        self._row_prior = np.asarray(snapshot.arm_prior, dtype=float)
        self._mean, self._cov, self._value = np.zeros((n, _DIM)), np.zeros((n, _DIM, _DIM)), np.ones(n)
        self._value_sums = np.zeros((n, 2))
        offer_rows: dict[str, list[int]] = {}
        for row, key in enumerate(snapshot.arm_keys):
            offer_rows.setdefault(key[0], []).append(row)
            self._copy(key, row)
        self._offer_rows = offer_rows
        self._refresh_values()

    def vectorize(self, features: Mapping[str, float]) -> np.ndarray:
        """The features as the models see them: hashed, numeric ones standardised, with the intercept."""
        x = np.zeros(_DIM)
        x[_BIAS] = 1.0
        scale = self._scale
        for name, value in features.items():
            s = scale.get(name)
            if s is not None:
                value = min(max((value - s[0]) * s[1], -_CLIP), _CLIP)
            elif value != 0.0 and value != 1.0 and "=" not in name:
                continue  # a number on an unknown scale yet: it counts once it can be standardised
            x[feature_index(name)] += value
        return x

    def posterior(self, arms: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each arm: the mean and standard deviation of its logit for ``x``, and its value multiplier."""
        mean = self._mean[arms] @ x
        index = np.flatnonzero(x)
        values = x[index]
        cov = self._cov[arms[:, None, None], index[None, :, None], index[None, None, :]]
        variance = np.einsum("aij,i,j->a", cov, values, values)
        return mean, np.sqrt(np.maximum(variance, 0.0)), self._value[arms]

    def score(self, arms: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Probability of acceptance of each arm for ``x`` (from :meth:`vectorize`), at the posterior mean."""
        return sigmoid(self._mean[arms] @ x)

    # --- learning --------------------------------------------------------------------

    def learn(self, offer_id: str, channel: str, features: Mapping[str, float], reward: float, prior: float) -> bool:
        """Learn one outcome of an arm; ``prior`` seeds an offer seen for the first time."""
        config = self.config
        key = (offer_id, channel)
        offer = self._offers.get(offer_id)
        if offer is None:
            offer = self._offers[offer_id] = _Block(logit(prior), config.prior_sd, config.weight_sd)
        arm = self._arms.get(key)
        if arm is None:
            arm = self._arms[key] = _Block(0.0, config.arm_sd, config.arm_sd)
        self._learn_scale(features)
        index, values = self._encode(features)
        self._update((offer, arm), index, values, 1.0 if reward > 0 else 0.0)
        if reward > 0:
            total, count = self._values.get(key, (0.0, 0.0))
            self._values[key] = (total + reward, count + 1.0)
        self._updates += 1
        if offer_id in self._offer_rows:
            for row in self._offer_rows[offer_id]:
                self._copy(self._arm_keys[row], row)
            if reward > 0:
                self._refresh_values()
        return True

    def _refresh_values(self) -> None:
        """Each arm's value multiplier: its mean positive reward, shrunk towards every arm's mean by
        3 pseudo-observations (so an arm that has not converted yet is valued like the others)."""
        total = sum(t for t, _ in self._values.values())
        count = sum(c for _, c in self._values.values())
        pooled = total / count if count else 1.0
        sums = self._value_sums
        self._value = (_VALUE_PSEUDO * pooled + sums[:, 0]) / (_VALUE_PSEUDO + sums[:, 1])

    def _update(self, blocks: tuple[_Block, _Block], index: np.ndarray, values: np.ndarray, y: float) -> None:
        """One online Laplace step over both blocks (their weights add up)."""
        config = self.config
        inflate = 1.0 / math.sqrt(1.0 - 1.0 / config.memory)
        s, v = 0.0, 0.0
        directions, spreads = [], []
        for block in blocks:
            # forgetting, in the directions this outcome informs: their information decays by 1 - 1/memory
            block.cov[index, :] *= inflate
            block.cov[:, index] *= inflate
            direction = block.cov[:, index] @ values  # cov . x
            spread = float(values @ direction[index])  # x' cov x
            directions.append(direction)
            spreads.append(spread)
            s += float(block.mean[index] @ values)
            v += spread
        rate = config.learning_rate
        z = s
        for _ in range(20):  # Newton on f(z) = z - s - rate * v * (y - sigmoid(z)), monotone
            p = _sigmoid(z)
            step = (z - s - rate * v * (y - p)) / (1.0 + rate * v * p * (1.0 - p))
            z -= step
            if abs(step) < 1e-9:
                break
        p = _sigmoid(z)
        gradient = rate * (y - p)
        curvature = rate * p * (1.0 - p)
        for block, direction, spread in zip(blocks, directions, spreads, strict=True):
            block.mean += gradient * direction
            block.cov -= (curvature / (1.0 + curvature * spread)) * np.outer(direction, direction)  # Sherman-Morrison

    def _learn_scale(self, features: Mapping[str, float]) -> None:
        numeric = {name: value for name, value in features.items() if "=" not in name}
        if not numeric:
            return
        self._scaler.learn_one(numeric)
        counts, means, variances = self._scaler.counts, self._scaler.means, self._scaler.vars
        for name in numeric:
            if counts[name] >= _MIN_SCALE_COUNT and variances[name] > 1e-12:
                self._scale[name] = (means[name], 1.0 / math.sqrt(variances[name]))

    def _encode(self, features: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """The non-zero columns of :meth:`vectorize`'s vector, and their values."""
        x = self.vectorize(features)
        index = np.flatnonzero(x)
        return index, x[index]

    # --- the scoring matrices --------------------------------------------------------

    def _copy(self, key: tuple[str, str], row: int) -> None:
        """Row ``row`` of the scoring matrices from the posterior of arm ``key``."""
        config = self.config
        offer = self._offers.get(key[0])
        arm = self._arms.get(key)
        diagonal = np.arange(_DIM)
        if offer is None:
            self._mean[row] = 0.0
            self._mean[row, _BIAS] = logit(float(self._row_prior[row]))
            self._cov[row] = 0.0
            self._cov[row, diagonal, diagonal] = config.weight_sd**2
            self._cov[row, _BIAS, _BIAS] = config.prior_sd**2
        else:
            self._mean[row] = offer.mean
            self._cov[row] = offer.cov
        if arm is None:
            self._cov[row, diagonal, diagonal] += config.arm_sd**2
        else:
            self._mean[row] += arm.mean
            self._cov[row] += arm.cov
        self._value_sums[row] = self._values.get(key, (0.0, 0.0))

    # --- learning rate of a challenger, export, persistence ---------------------------

    def set_learning_rate(self, learning_rate: float) -> None:
        """Learn at ``learning_rate`` from now on (a challenger started from other models)."""
        self.config = dataclasses.replace(self.config, learning_rate=learning_rate)

    def describe(self) -> dict[str, object]:
        """Every offer's and arm's posterior (intercept and non-zero weights, mean and sd), for export."""

        def block(b: _Block) -> dict[str, object]:
            sd = np.sqrt(np.diag(b.cov))
            moved = np.flatnonzero((b.mean != 0.0) | (np.diag(b.cov) != b.prior_var))
            return {
                "intercept": {"mean": float(b.mean[_BIAS]), "sd": float(sd[_BIAS])},
                "weights": {str(int(c)): {"mean": float(b.mean[c]), "sd": float(sd[c])} for c in moved if c != _BIAS},
            }

        return {
            "updates": self._updates,
            "model": "online Bayesian logistic regression (diagonal Laplace), offer block + arm block",
            "config": dataclasses.asdict(self.config),
            "feature_dim": FEATURE_DIM,
            "feature_hashing": "crc32(name) % feature_dim; numeric features standardised",
            "scaler": {name: {"mean": m, "sd": 1.0 / inv} for name, (m, inv) in sorted(self._scale.items())},
            "offers": {offer_id: block(b) for offer_id, b in sorted(self._offers.items())},
            "arms": {f"{o}/{c}": block(b) for (o, c), b in sorted(self._arms.items())},
        }

    def to_bytes(self) -> bytes:
        """The models, pickled and compressed (covariances are mostly the prior's zeros)."""
        return zlib.compress(
            pickle.dumps(
                {
                    "format": _FORMAT,
                    "updates": self._updates,
                    "config": dataclasses.asdict(self.config),
                    "offers": {k: (b.mean, b.cov, b.prior_var) for k, b in self._offers.items()},
                    "arms": {k: (b.mean, b.cov, b.prior_var) for k, b in self._arms.items()},
                    "values": self._values,
                    "scaler": self._scaler,
                    "scale": self._scale,
                }
            ),
            1,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelBank:
        try:
            state = pickle.loads(zlib.decompress(data))
        except zlib.error:
            state = pickle.loads(data)  # format 1 was not compressed
        if state.get("format") != _FORMAT:
            raise ValueError(
                f"unsupported model snapshot format {state.get('format')!r} (this version reads {_FORMAT}); "
                "the learner starts again from the offers' priors"
            )
        bank = cls(BayesConfig(**state["config"]))
        bank._offers = {k: _restore(*v) for k, v in state["offers"].items()}
        bank._arms = {k: _restore(*v) for k, v in state["arms"].items()}
        bank._values = state["values"]
        bank._scaler = state["scaler"]
        bank._scale = state["scale"]
        bank._updates = state["updates"]
        return bank


def _restore(mean: np.ndarray, cov: np.ndarray, prior_var: np.ndarray) -> _Block:
    block = _Block.__new__(_Block)
    block.mean, block.cov, block.prior_var = mean, cov, prior_var
    return block
