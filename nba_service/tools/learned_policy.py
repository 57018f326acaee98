"""The learned policy as the offline tools run it: the real engine, models and exploration, configured."""

from __future__ import annotations

import dataclasses

from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import make_explorer
from nba_service.learning.models import BayesConfig, ModelBank
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["PolicyConfig"]


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Exploration strategy and model settings of a learned policy; the defaults are the service's.

    >>> PolicyConfig().describe()
    'thompson (256 draws, sd x 0.25), learning rate 1, seed 0'
    """

    strategy: str = "thompson"
    epsilon: float = 0.05
    temperature: float = 0.1
    draws: int = 256
    thompson_scale: float = 0.25
    ucb_width: float = 1.0
    learning_rate: float = 1.0
    """How many observations one outcome counts as (see :class:`~nba_service.learning.models.BayesConfig`)."""
    seed: int = 0

    def knob(self) -> str:
        """The exploration strategy's own setting, for humans."""
        return {
            "thompson": f"{self.draws} draws, sd x {self.thompson_scale:g}",
            "ucb": f"width {self.ucb_width:g}",
            "epsilon": f"epsilon {self.epsilon:g}",
            "softmax": f"temperature {self.temperature:g}",
        }.get(self.strategy, "")

    def describe(self) -> str:
        return f"{self.strategy} ({self.knob()}), learning rate {self.learning_rate:g}, seed {self.seed}"

    def build(self, snapshot: PolicySnapshot) -> tuple[ModelBank, DecisionEngine]:
        """Fresh models bound to ``snapshot`` and an engine that explores with this strategy."""
        bank = ModelBank(BayesConfig(learning_rate=self.learning_rate))
        bank.bind(snapshot)
        explorer = make_explorer(
            self.strategy,
            epsilon=self.epsilon,
            temperature=self.temperature,
            draws=self.draws,
            thompson_scale=self.thompson_scale,
            ucb_width=self.ucb_width,
            seed=self.seed,
        )
        return bank, DecisionEngine(bank, explorer)
