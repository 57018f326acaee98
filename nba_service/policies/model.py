"""The policy set as the service uses it: frozen values, and the error that lists what is wrong.

:mod:`nba_service.policies.parser` builds these from YAML files (every
problem a :class:`PolicyIssue` with its file, line and column, all of them
raised at once in a :class:`PolicyValidationError`);
:mod:`nba_service.policies.snapshot` compiles a :class:`PolicySet` for the
request path.

>>> Limit(max=2, per_seconds=604800.0, per="7d", channel="sms").describe()
'at most 2 on sms per 7d'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from nba_service.policies.compiler import CompiledExpression

__all__ = [
    "Budget",
    "ChannelSpec",
    "GlobalSettings",
    "Limit",
    "OfferSpec",
    "Place",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "Suppression",
]


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyValidationError(ValueError):
    """The policy set is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        head = f"{len(issues)} problem(s) in the policy set"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in issues))


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """At most ``max`` contacts within ``per_seconds``, narrowed to a channel or category."""

    max: int
    per_seconds: float
    per: str
    channel: str | None = None
    category: str | None = None

    def describe(self) -> str:
        scope = f" on {self.channel}" if self.channel else f" in {self.category}" if self.category else ""
        return f"at most {self.max}{scope} per {self.per}"


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """At most ``max`` sends of an offer over all customers per fixed window (e.g. per day, UTC)."""

    max: int
    per_seconds: float
    per: str


@dataclasses.dataclass(frozen=True, slots=True)
class Suppression:
    """After ``declines`` declines (or dismissals) of an offer within ``per``, stop offering it."""

    declines: int
    per_seconds: float
    per: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel an offer can be sent on, and when it may be used."""

    id: str
    name: str
    needs_reachable: bool = True
    default_consent: bool = False
    available_when: CompiledExpression | None = None
    quiet_hours: tuple[int, int] | None = None
    """(start, end) in minutes after local midnight; may wrap past midnight."""
    cost: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class OfferSpec:
    """An offer: when it applies, what it is worth, where it goes and what it says."""

    id: str
    name: str
    category: str
    events: tuple[str, ...]
    value: float
    prior: float
    channels: tuple[str, ...]
    content: Mapping[str, str]
    weight: float = 1.0
    lever: float = 1.0
    cost: float = 0.0
    """What sending the offer costs (a voucher, a discount), subtracted from its value."""
    reward: str = "accepted"
    """The outcome the model learns as success: ``accepted`` (or converted) or ``converted`` only."""
    value_expression: CompiledExpression | None = None
    """When ``value`` is an expression (e.g. a share of the cart), computed per request."""
    eligible_when: CompiledExpression | None = None
    variables: Mapping[str, CompiledExpression] = dataclasses.field(default_factory=dict)
    limits: tuple[Limit, ...] = ()
    budget: Budget | None = None
    suppress_after: Suppression | None = None
    valid_from: float | None = None
    valid_until: float | None = None
    paused: bool = False
    file: str = ""
    line: int = 0

    def template_for(self, channel: str) -> str:
        return self.content.get(channel) or self.content.get("default", "")


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalSettings:
    """The set-wide settings: the no-action threshold, levers and contact limits."""

    no_action_threshold: float = 0.0
    preferred_channel_boost: float = 1.0
    global_lever: float = 1.0
    category_levers: Mapping[str, float] = dataclasses.field(default_factory=dict)
    contact_limits: tuple[Limit, ...] = ()
    sensitive: tuple[str, ...] = ()
    """Profile attributes only callers with the ``pii`` role see (rules still use them)."""
    holiday_countries: tuple[str, ...] = ()
    """ISO 3166-1 codes whose public holidays rules see (``is_holiday``, ``days_until_holiday``); the first
    is the calendar of a customer whose time zone has no country."""
    holiday_subdivisions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Country -> the subdivision (region, state) whose holidays count too, e.g. ``{"ES": "MD"}``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """A branch, partner shop or ATM that geolocated rules can measure distances to."""

    id: str
    name: str
    kind: str
    latitude: float
    longitude: float


@dataclasses.dataclass(frozen=True, slots=True)
class Fallback:
    """The action answered for ``event`` events while the state store is unavailable (see
    :mod:`nba_service.policies.fallbacks`)."""

    event: str
    offer: str
    channel: str


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySet:
    """A validated policy set: what :func:`~nba_service.policies.parser.parse_policy_files` returns."""

    settings: GlobalSettings
    channels: tuple[ChannelSpec, ...]
    offers: tuple[OfferSpec, ...]
    files: Mapping[str, str]
    """The source text of every file, by name: what gets published and versioned."""
    places: tuple[Place, ...] = ()
    conditions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Named conditions (their source), usable by name in every rule."""
    fallbacks: Mapping[str, Fallback] = dataclasses.field(default_factory=dict)
    """Event type -> the action answered while the state store is unavailable."""

    def places_by_kind(self) -> dict[str, tuple[Place, ...]]:
        kinds: dict[str, list[Place]] = {}
        for place in self.places:
            kinds.setdefault(place.kind, []).append(place)
        return {kind: tuple(found) for kind, found in kinds.items()}
