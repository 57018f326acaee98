"""A simulated world where the right action depends on the moment and the customer.

Customers live the moments nba is designed for: an ATM withdrawal declined for
a small or a large shortfall, a walk past a store, a cart abandoned on the web, a call
to the contact centre. Six offers answer every moment; how likely a customer
is to accept each one is hidden truth (:class:`ContextualResponse`): a
micro-loan works at the ATM for a small shortfall and almost nowhere else, a
credit-line raise for a large one, click & collect or a coupon near a store,
free shipping for a big abandoned cart, an agent's help on the phone; the
segment shifts every category a little. No single offer is good for more than
one moment, so a policy that reads the context beats any fixed action by far.

:func:`simulate` runs four policies over the same moments for ``steps`` steps
(common random numbers: a customer who would accept an action accepts it
whichever policy offered it):

- ``oracle`` knows the truth and takes the action of highest expected value;
- ``random`` picks uniformly;
- ``rules`` always takes the offer of highest prior x value (a rule table
  written once, the way the policy's priors were guessed);
- ``learned`` is the real :class:`~nba_service.engine.pipeline.DecisionEngine`
  with a :class:`~nba_service.learning.models.ModelBank` and an exploration
  strategy, learning from each outcome it gets, online.

Rewards are the offer's value when accepted. The result reports each policy's
reward as a share of the oracle's and the cumulative regret curves.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.policies.model import PolicySet
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.tools.learned_policy import PolicyConfig

__all__ = [
    "MOMENTS",
    "OFFERS",
    "ContextualResponse",
    "SimOffer",
    "SimulationConfig",
    "SimulationResult",
    "plot_regret",
    "simulate",
    "simulation_policy",
]

CHANNEL = "app"
SEGMENTS = ("mass", "young", "affluent", "student", "family", "vip")
MOMENTS = {"atm_decline": 0.3, "location": 0.25, "cart_abandon": 0.3, "agent_contact": 0.15}
"""The moments and how often they happen."""
_NOW = datetime.datetime(2026, 3, 4, 15, 0, tzinfo=datetime.UTC).timestamp()
_BASE = -3.4
"""Logit of accepting an offer that does not fit the moment (about 3%)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SimOffer:
    id: str
    name: str
    category: str
    value: float
    prior: float
    """The marketer's cold-start guess of its acceptance rate (what the rules rank by)."""
    fit: Mapping[str, float]
    """Logit bonus per moment where the offer makes sense."""


OFFERS = (
    SimOffer("micro_loan", "Instant micro-loan", "lending", 8.0, 0.12, {"atm_decline": 2.6}),
    SimOffer("credit_line_raise", "Credit-line raise at nearby shops", "lending", 10.0, 0.10, {"atm_decline": 1.8}),
    SimOffer(
        "click_collect",
        "Click & collect in the store nearby",
        "retail_cart",
        8.0,
        0.10,
        {"location": 2.8, "cart_abandon": 0.8},
    ),
    SimOffer("store_coupon", "In-store coupon", "retail_promo", 5.0, 0.20, {"location": 2.6}),
    SimOffer("free_shipping", "Free shipping on the abandoned cart", "retail_cart", 7.0, 0.20, {"cart_abandon": 2.6}),
    SimOffer(
        "agent_help",
        "An agent who sees the journey",
        "retail_service",
        8.0,
        0.10,
        {"agent_contact": 2.8, "cart_abandon": 0.4},
    ),
)
"""The offer catalogue: every offer answers every moment on the one channel."""


class ContextualResponse:
    """Hidden truth: P(accept | offer, moment, its fields, segment), fixed by a seed.

    >>> truth = ContextualResponse(seed=1)
    >>> p = truth.probabilities(Event("atm_decline", {"shortfall": 40.0}), "mass")
    >>> [o.id for o in OFFERS][int(np.argmax(p))]
    'micro_loan'
    >>> p = truth.probabilities(Event("atm_decline", {"shortfall": 900.0}), "mass")
    >>> [o.id for o in OFFERS][int(np.argmax(p))]
    'credit_line_raise'
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._affinity: dict[tuple[str, str], float] = {}

    def affinity(self, segment: str, category: str) -> float:
        """How much a segment likes a category, in logits (drawn once per pair from the seed)."""
        key = (segment, category)
        value = self._affinity.get(key)
        if value is None:
            value = self._affinity[key] = 0.4 * random.Random(f"{self.seed}:{segment}:{category}").gauss(0.0, 1.0)
        return value

    def probabilities(self, event: Event, segment: str) -> np.ndarray:
        """Acceptance probability of every offer of :data:`OFFERS` in this moment."""
        logits = np.array([_BASE + o.fit.get(event.type, 0.0) + self.affinity(segment, o.category) for o in OFFERS])
        if event.type == "atm_decline":  # a loan for a small gap, a credit line for a large one
            size = math.log1p(float(event.fields.get("shortfall", 0.0))) - math.log1p(150.0)
            logits[0] -= 0.8 * size
            logits[1] += 0.8 * size
        elif event.type == "cart_abandon":  # free shipping matters on big carts
            size = math.log1p(float(event.fields.get("cart_value", 0.0))) - math.log1p(100.0)
            logits[4] += 0.8 * size
        return 1.0 / (1.0 + np.exp(-logits))


def _moment(rng: np.random.Generator, names: tuple[str, ...], weights: np.ndarray) -> tuple[Event, str]:
    kind = names[int(rng.choice(len(names), p=weights))]
    segment = SEGMENTS[int(rng.integers(len(SEGMENTS)))]
    if kind == "atm_decline":
        amount = float(rng.choice((20, 40, 60, 100, 200, 400, 800, 1500)))
        balance = round(float(rng.uniform(0.0, 0.9)) * amount, 2)
        event = Event(
            kind,
            {
                "amount": amount,
                "balance": balance,
                "shortfall": amount - balance,
                "currency": "EUR",
                "atm_id": "atm-1",
                "latitude": 40.4,
                "longitude": -3.7,
            },
        )
    elif kind == "location":
        event = Event(kind, {"latitude": 40.4, "longitude": -3.7, "accuracy_m": 40.0, "place_id": "store-sol"})
    elif kind == "cart_abandon":
        event = Event(
            kind,
            {
                "cart_id": "cart",
                "cart_value": round(float(rng.uniform(15.0, 400.0)), 2),
                "currency": "EUR",
                "item_count": int(rng.integers(1, 8)),
            },
        )
    else:
        event = Event(kind, {"agent_id": "agent-1", "reason": "delivery"})
    return event, segment


def simulation_policy() -> PolicySet:
    """The catalogue as a policy set: one channel, no rules, no caps: the learner alone decides."""
    policy = {
        "settings": {"no_action_threshold": 0.0},
        "channels": [{"id": CHANNEL, "name": "In-app message", "needs_reachable": False, "default_consent": True}],
        "offers": [
            {
                "id": o.id,
                "name": o.name,
                "category": o.category,
                "events": list(MOMENTS),
                "value": o.value,
                "prior": o.prior,
                "channels": [CHANNEL],
                "content": {"default": o.name},
            }
            for o in OFFERS
        ],
    }
    return parse_policy_files({"simulation.yaml": yaml.safe_dump(policy, sort_keys=False)})


@dataclasses.dataclass(frozen=True, slots=True)
class SimulationConfig(PolicyConfig):
    steps: int = 20_000


POLICIES = ("oracle", "learned", "rules", "random")


@dataclasses.dataclass(frozen=True, slots=True)
class SimulationResult:
    config: SimulationConfig
    reward: Mapping[str, float]
    """Total realised reward of each policy."""
    expected: Mapping[str, float]
    """Total expected reward (the truth's probability x value of each action taken): less noisy."""
    regret: Mapping[str, np.ndarray]
    """Cumulative expected regret against the oracle after each step."""
    rules_offer: str
    best_fixed_offer: str
    best_fixed_expected: float
    last_share: float
    """The learned policy's expected reward as a share of the oracle's over the last tenth of the run."""

    def share(self, policy: str) -> float:
        """Realised reward as a share of the oracle's."""
        return self.reward[policy] / self.reward["oracle"]

    def to_json(self) -> dict[str, Any]:
        policies: dict[str, dict[str, Any]] = {
            p: {
                "reward": self.reward[p],
                "share_of_oracle": self.share(p),
                "expected_reward": self.expected[p],
                "expected_share_of_oracle": self.expected[p] / self.expected["oracle"],
                "regret": float(self.regret[p][-1]),
            }
            for p in POLICIES
        }
        policies["rules"]["offer"] = self.rules_offer
        policies["learned"]["last_tenth_expected_share"] = self.last_share
        policies["best_fixed"] = {
            "offer": self.best_fixed_offer,
            "expected_reward": self.best_fixed_expected,
            "expected_share_of_oracle": self.best_fixed_expected / self.expected["oracle"],
        }
        return {"steps": self.config.steps, "config": dataclasses.asdict(self.config), "policies": policies}

    def table(self) -> str:
        rows = [
            (
                p if p != "rules" else f"rules ({self.rules_offer})",
                self.reward[p],
                self.share(p),
                self.expected[p] / self.expected["oracle"],
            )
            for p in POLICIES
        ]
        rows.append(
            (
                f"best fixed ({self.best_fixed_offer})",
                float("nan"),
                float("nan"),
                self.best_fixed_expected / self.expected["oracle"],
            )
        )
        width = max(len(r[0]) for r in rows)
        out = [f"{'policy':<{width}}  {'reward':>10}  {'of oracle':>9}  {'expected, of oracle':>19}"]
        for name, reward, share, expected in rows:
            shown = "" if math.isnan(reward) else f"{reward:>10,.0f}"
            of = "" if math.isnan(share) else f"{share:>9.1%}"
            out.append(f"{name:<{width}}  {shown:>10}  {of:>9}  {expected:>19.1%}")
        return "\n".join(out)


def simulate(config: SimulationConfig = SimulationConfig()) -> SimulationResult:
    """Run oracle, random, rules-only and the learned policy over the same ``config.steps`` moments."""
    if config.steps < 1:
        raise ValueError("steps must be at least 1")
    rng = np.random.default_rng(config.seed)
    truth = ContextualResponse(config.seed)
    policy = simulation_policy()
    snapshot = PolicySnapshot.compile(policy, "simulation")
    bank, engine = config.build(snapshot)
    index = {o.id: i for i, o in enumerate(OFFERS)}
    values = np.array([o.value for o in OFFERS])
    priors = {o.id: o.prior for o in OFFERS}
    rules = int(np.argmax([o.prior * o.value for o in OFFERS]))
    names, weights = tuple(MOMENTS), np.array(list(MOMENTS.values()))
    profiles = {s: CustomerProfile(f"sim-{s}", segment=s) for s in SEGMENTS}

    n = config.steps
    taken = {p: np.empty(n, dtype=np.intp) for p in POLICIES}
    expected = {p: np.empty(n) for p in POLICIES}
    realised = {p: np.empty(n) for p in POLICIES}
    fixed = np.zeros(len(OFFERS))
    for t in range(n):
        event, segment = _moment(rng, names, weights)
        p = truth.probabilities(event, segment)
        worth = p * values
        accepts = rng.random() < p  # common random numbers: the same customer answer for every policy
        fixed += worth
        decision = engine.decide(snapshot, CustomerContext(profiles[segment], now=_NOW), event, top_k=0)
        if decision.offer_id is not None:
            learned = index[decision.offer_id]
            bank.learn(
                decision.offer_id,
                decision.channel,
                decision.features,
                float(accepts[learned]),
                priors[decision.offer_id],
            )
        else:
            learned = -1
        choices = {
            "oracle": int(np.argmax(worth)),
            "learned": learned,
            "rules": rules,
            "random": int(rng.integers(len(OFFERS))),
        }
        for name, a in choices.items():
            taken[name][t] = a
            expected[name][t] = worth[a] if a >= 0 else 0.0
            realised[name][t] = values[a] * accepts[a] if a >= 0 else 0.0

    oracle = np.cumsum(expected["oracle"])
    tail = slice(n - max(1, n // 10), n)
    best = int(np.argmax(fixed))
    return SimulationResult(
        config=config,
        reward={p: float(realised[p].sum()) for p in POLICIES},
        expected={p: float(expected[p].sum()) for p in POLICIES},
        regret={p: oracle - np.cumsum(expected[p]) for p in POLICIES},
        rules_offer=OFFERS[rules].id,
        best_fixed_offer=OFFERS[best].id,
        best_fixed_expected=float(fixed[best]),
        last_share=float(expected["learned"][tail].sum() / expected["oracle"][tail].sum()),
    )


def plot_regret(result: SimulationResult, path: str | Path) -> None:
    """Cumulative expected regret against the oracle, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = figure.subplots()
    steps = np.arange(1, result.config.steps + 1)
    styles = {"random": ("tab:gray", "--"), "rules": ("tab:orange", "-."), "learned": ("tab:blue", "-")}
    for name, (color, style) in styles.items():
        label = f"rules ({result.rules_offer})" if name == "rules" else name
        label += f": {result.expected[name] / result.expected['oracle']:.0%} of the oracle's expected reward"
        ax.plot(steps, result.regret[name], color=color, ls=style, lw=1.8, label=label)
    ax.set_xlabel("step (one customer moment)")
    ax.set_ylabel("cumulative expected regret vs the oracle (value)")
    ax.set_title(f"nba simulate: {result.config.describe()}", fontsize=10)
    ax.set_xlim(1, result.config.steps)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    figure.savefig(path)
