"""Simulated channel traffic and customers for the demo and load generation.

:class:`ScenarioMix` draws live moments like the ones nba is designed for (ATM
declines, location pings, abandoned carts, app opens, page views, agent
contacts) from a skewed customer population. The same pieces serve callers
that choose the scenario themselves, like the Locust users of ``load_tests``:
:class:`SkewedPopulation` picks customers and :func:`scenario_call` makes one
scenario's request for a given customer. :class:`CustomerResponse`
holds the hidden truth of how customers respond: an acceptance probability
per (segment, offer category, channel) drawn once from a seed, so a learner
that uses the segment can beat one that does not.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import ClassVar

from nba_service.proto.nba.v1 import decision_pb2 as pb

__all__ = [
    "SCENARIOS",
    "CustomerResponse",
    "ScenarioMix",
    "SimulatedCall",
    "SkewedPopulation",
    "generate_customers",
    "scenario_call",
]

SEGMENTS = ("mass", "young", "affluent", "student", "family", "vip", "")
CHANNEL_EFFECT = {
    "agent_desktop": 1.2,
    "atm_screen": 0.6,
    "app_inbox": 0.2,
    "push": 0.3,
    "web_banner": 0.0,
    "sms": -0.3,
    "email": -0.6,
}


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatedCall:
    """One simulated request: which RPC flow and the Decide request to send."""

    scenario: str
    request: pb.DecideRequest
    agent_lookup: bool = False
    """The agent desktop first reads the customer context, then decides."""


class SkewedPopulation:
    """Customer ids with Zipf-like activity: the customer of rank r (from 1) is drawn with weight r^-skew.

    Ranks are given to the ids by ``shuffle``, so the busiest customers are
    spread over the population, and are the same for every caller that
    shuffles with an equally seeded generator. A share of draws can be
    walk-ins without a profile (``walk-in-N``).

    >>> population = SkewedPopulation(["a", "b", "c"], skew=0.0, shuffle=random.Random(1))
    >>> sorted({population.pick(random.Random(seed)) for seed in range(30)})
    ['a', 'b', 'c']
    >>> population.pick(random.Random(0), unknown_share=1.0)
    'walk-in-...'
    """

    def __init__(self, customer_ids: Sequence[str], skew: float, shuffle: random.Random) -> None:
        order = list(customer_ids)
        shuffle.shuffle(order)
        self.ids = order
        weights = [1.0 / (rank + 1) ** skew for rank in range(len(order))]
        total = sum(weights)
        self._cumulative = []
        running = 0.0
        for w in weights:
            running += w / total
            self._cumulative.append(running)

    def pick(self, rng: random.Random, unknown_share: float = 0.0) -> str:
        """One customer id drawn with ``rng``; with probability ``unknown_share`` a walk-in without a profile."""
        if rng.random() < unknown_share:
            return f"walk-in-{rng.randrange(10_000)}"
        return self.ids[min(bisect.bisect_left(self._cumulative, rng.random()), len(self.ids) - 1)]


class ScenarioMix:
    """Draws moments with the weights of a bank-and-retailer traffic mix."""

    WEIGHTS: ClassVar[dict[str, float]] = {
        "atm_decline": 0.22,
        "location": 0.18,
        "cart_abandon": 0.2,
        "app_open": 0.15,
        "page_view": 0.15,
        "agent_contact": 0.07,
        "purchase": 0.03,
    }

    def __init__(
        self, customer_ids: Sequence[str], seed: int = 0, skew: float = 0.8, unknown_share: float = 0.03
    ) -> None:
        self.customer_ids = list(customer_ids)
        self.unknown_share = unknown_share
        self._rng = random.Random(seed)
        self.population = SkewedPopulation(self.customer_ids, skew, shuffle=self._rng)
        self._scenarios = list(self.WEIGHTS)
        self._scenario_weights = list(self.WEIGHTS.values())

    def customer(self) -> str:
        return self.population.pick(self._rng, self.unknown_share)

    def next(self) -> SimulatedCall:
        scenario = self._rng.choices(self._scenarios, self._scenario_weights)[0]
        return scenario_call(scenario, self.customer(), self._rng)


def scenario_call(scenario: str, customer_id: str, rng: random.Random) -> SimulatedCall:
    """The request of one moment of ``scenario`` (one of :data:`SCENARIOS`) for ``customer_id``, drawn with ``rng``.

    The request has the scenario's usual origin channel and no request id.

    >>> call = scenario_call("atm_decline", "c00001", random.Random(0))
    >>> call.request.customer_id, call.request.origin_channel, call.request.event.WhichOneof("kind")
    ('c00001', 'atm', 'atm_decline')
    """
    try:
        make_event = _EVENTS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r} (scenarios: {', '.join(SCENARIOS)})") from None
    event, origin = make_event(rng)
    request = pb.DecideRequest(customer_id=customer_id, origin_channel=origin, event=event)
    return SimulatedCall(scenario, request, agent_lookup=scenario == "agent_contact")


def _atm_decline(rng: random.Random) -> tuple[pb.Event, str]:
    amount = float(rng.choice((20, 40, 50, 60, 100, 150, 200, 300, 400)))
    event = pb.Event(
        atm_decline=pb.AtmDecline(
            amount=amount,
            balance=round(rng.uniform(-50, amount * 0.9), 2),
            currency="EUR",
            atm_id=f"atm-{rng.randrange(500)}",
            latitude=40.4 + rng.uniform(-0.1, 0.1),
            longitude=-3.7 + rng.uniform(-0.1, 0.1),
        )
    )
    return event, "atm"


def _location(rng: random.Random) -> tuple[pb.Event, str]:
    event = pb.Event(
        location=pb.Location(
            latitude=40.4 + rng.uniform(-0.1, 0.1),
            longitude=-3.7 + rng.uniform(-0.1, 0.1),
            accuracy_m=rng.choice((15.0, 40.0, 120.0, 600.0)),
            # the app's geofence: in a store or a branch of the sample places, or nowhere known
            place_id=rng.choice(("store_sol", "store_gran_via", "branch_sol", "")),
        )
    )
    return event, "app"


def _cart_abandon(rng: random.Random) -> tuple[pb.Event, str]:
    items = [f"sku-{rng.randrange(5000)}" for _ in range(rng.randint(1, 7))]
    event = pb.Event(
        cart_abandon=pb.CartAbandon(
            cart_id=f"cart-{rng.randrange(10**6)}",
            cart_value=round(rng.uniform(15, 400), 2),
            currency="EUR",
            item_ids=items,
        )
    )
    return event, rng.choice(("web", "web", "app"))


def _app_open(rng: random.Random) -> tuple[pb.Event, str]:
    return pb.Event(app_open=pb.AppOpen(screen=rng.choice(("home", "accounts", "shop", "cards")))), "app"


def _page_view(rng: random.Random) -> tuple[pb.Event, str]:
    event = pb.Event(
        page_view=pb.PageView(
            url="https://shop.example/p", page_type=rng.choice(("product", "checkout", "loans", "kids", "toys", "home"))
        )
    )
    return event, "web"


def _agent_contact(rng: random.Random) -> tuple[pb.Event, str]:
    event = pb.Event(
        agent_contact=pb.AgentContact(
            agent_id=f"agent-{rng.randrange(40)}",
            reason=rng.choice(("fees", "billing", "delivery", "late_delivery", "cancel", "card_declined")),
        )
    )
    return event, "call_centre"


def _purchase(rng: random.Random) -> tuple[pb.Event, str]:
    return pb.Event(custom=pb.CustomEvent(name="purchase")), rng.choice(("web", "app", "store"))


_EVENTS: dict[str, Callable[[random.Random], tuple[pb.Event, str]]] = {
    "atm_decline": _atm_decline,
    "location": _location,
    "cart_abandon": _cart_abandon,
    "app_open": _app_open,
    "page_view": _page_view,
    "agent_contact": _agent_contact,
    "purchase": _purchase,
}
"""Per scenario: the event of one moment and the channel it usually comes from."""

SCENARIOS: tuple[str, ...] = tuple(ScenarioMix.WEIGHTS)
"""The scenarios :func:`scenario_call` knows, the ones of :class:`ScenarioMix`."""


class CustomerResponse:
    """Hidden truth: P(accept | segment, offer category, channel), fixed by a seed."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._affinity: dict[tuple[str, str], float] = {}
        self._seed = seed

    def affinity(self, segment: str, category: str) -> float:
        key = (segment, category)
        value = self._affinity.get(key)
        if value is None:
            value = self._affinity[key] = random.Random(f"{self._seed}:{segment}:{category}").gauss(0.0, 1.0)
        return value

    def probability(self, segment: str, category: str, channel: str) -> float:
        logit = -2.6 + self.affinity(segment, category) + CHANNEL_EFFECT.get(channel, 0.0)
        return 1.0 / (1.0 + math.exp(-logit))

    def accepts(self, segment: str, category: str, channel: str) -> bool:
        return self._rng.random() < self.probability(segment, category, channel)


def generate_customers(count: int, seed: int = 0, prefix: str = "s") -> list[dict[str, object]]:
    """``count`` synthetic CRM records (the shape ``nba customers load`` reads), seeded."""
    rng = random.Random(seed)
    names = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena")
    zones = ("Europe/Madrid", "Europe/London", "Europe/Berlin", "America/New_York", "Asia/Singapore")
    segments = ("mass", "mass", "young", "affluent", "student", "family", "vip")
    records: list[dict[str, object]] = []
    for i in range(count):
        reachable = [
            c for c, share in (("push", 0.7), ("sms", 0.8), ("email", 0.9), ("app_inbox", 0.6)) if rng.random() < share
        ]
        consents = {c: rng.random() < 0.85 for c in reachable}
        records.append(
            {
                "customer_id": f"{prefix}{i:06d}",
                "first_name": rng.choice(names),
                "segment": rng.choice(segments),
                "preferred_channel": rng.choice(reachable) if reachable else "",
                "reachable_channels": reachable,
                "consents": consents,
                "timezone": rng.choice(zones),
                "attributes": {
                    "income": str(rng.randrange(12_000, 150_000, 500)),
                    "credit_score": str(rng.randrange(520, 840)),
                    "loyalty_member": rng.choice(("yes", "no")),
                    "birthday": f"{rng.randrange(1950, 2006)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
                    "payday": str((25, 28, 30, 1, 15)[i % 5]),  # not drawn: the same customers for a seed as before
                },
            }
        )
    return records
