"""The policy set as the service uses it: frozen values, and the error that lists what is wrong.

:mod:`nba_service.policies.parser` builds these from YAML files (every
problem a :class:`PolicyIssue` with its file, line and column, all of them
raised at once in a :class:`PolicyValidationError`);
:mod:`nba_service.policies.snapshot` compiles a :class:`PolicySet` for the
request path.

>>> Limit(max=2, per_seconds=604800.0, per="7d", channel="sms").describe()
'at most 2 on sms per 7d'
>>> Limit(max=1, per_seconds=2592000.0, per="30d", direction="any").describe()
'at most 1 on any channel per 30d'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from nba_service.policies.compiler import CompiledExpression
from nba_service.policies.content import ChannelContent, FieldLimit, pick_language

__all__ = [
    "CHANNEL_DIRECTIONS",
    "LIMIT_DIRECTIONS",
    "QUIET_HOURS_ACTIONS",
    "Budget",
    "CampaignSpec",
    "ChannelSpec",
    "GlobalSettings",
    "Limit",
    "LocalizedText",
    "OfferSpec",
    "Place",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "ReasonSpec",
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


CHANNEL_DIRECTIONS = ("inbound", "outbound")
"""A channel is ``inbound`` (shown in a session the customer started: an ATM screen, a web banner, the agent's
desktop) or ``outbound`` (sent to the customer: push, SMS, e-mail)."""
LIMIT_DIRECTIONS = ("outbound", "inbound", "any")
"""The channels a contact limit counts and closes: ``outbound`` ones (the default), ``inbound`` ones, or ``any``."""
QUIET_HOURS_ACTIONS = ("drop", "defer")
"""What an outbound channel does in its quiet hours: closed (``drop``, the default) or open, the action delivered
at the quiet hours' end (``defer``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """At most ``max`` contacts within ``per_seconds``, narrowed to a channel or category.

    A limit narrowed to a channel counts that channel's contacts; any other counts the contacts on the channels
    of its ``direction`` only (by default the outbound ones), and when reached closes only those channels.
    """

    max: int
    per_seconds: float
    per: str
    channel: str | None = None
    category: str | None = None
    direction: str = "outbound"
    """One of :data:`LIMIT_DIRECTIONS` (ignored, and left at the default, when ``channel`` is set)."""
    direction_given: bool = True
    """False when the policy left ``direction`` out: then a limit whose offers, category or policy set have no
    channel of the default direction counts every channel, as every limit did before channels had directions
    (a policy set written then keeps its meaning)."""

    def describe(self) -> str:
        scope = f" on {self.channel}" if self.channel else f" in {self.category}" if self.category else ""
        if not self.channel and self.direction != "outbound":
            scope += " on any channel" if self.direction == "any" else " on inbound channels"
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
    direction: str = "outbound"
    """``inbound`` or ``outbound`` (:data:`CHANNEL_DIRECTIONS`): which contact limits count it by default."""
    on_quiet_hours: str = "drop"
    """``drop`` (closed in its quiet hours) or ``defer`` (open; the action is delivered at their end)."""
    defer_weight: float = 1.0
    """In (0, 1]: what an arm on this channel is worth when it defers (its priority is multiplied by it in its
    quiet hours), against an arm delivered now. 1: a deferred action competes at its usual priority."""
    content_fields: tuple[FieldLimit, ...] | None = None
    """The content fields the channel takes, each with its limits (:mod:`nba_service.policies.content`);
    None: every field, no limit."""

    @property
    def outbound(self) -> bool:
        return self.direction == "outbound"


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
    product: str = ""
    """The product the offer sells (e.g. ``overdraft_protection``): not offered to a customer who holds it, or
    accepted an offer selling it within :attr:`accepted_window_seconds`; empty: no such check."""
    accepted_window_seconds: float | None = None
    """How long after an acceptance the product is not offered again (None: ``settings.accepted_window``)."""
    agent_script: LocalizedText | None = None
    """What the contact-centre agent says to propose the offer, per language (None: no script)."""
    channel_content: Mapping[str, ChannelContent] = dataclasses.field(default_factory=dict)
    """Per channel of the offer, its content compiled for that channel (``content`` is what was written:
    template path -> text, e.g. ``push.es.title``; a text alone is keyed by the channel)."""
    variable_bounds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """The declared ``max_len`` of the variables that have one (characters in content)."""

    def template_for(self, channel: str) -> str:
        """The body template of the channel's content (in its first language)."""
        content = self.channel_content.get(channel)
        if content is None:
            return self.content.get(channel) or self.content.get("default", "")
        body = content.variants[0].fields.get("body")
        return body.source if body is not None else ""


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
    accepted_window_seconds: float = 90 * 86400.0
    """``accepted_window``: how long after an acceptance an offer selling the same product is not offered
    again, for the offers that declare a ``product`` and no window of their own."""
    default_language: str = ""
    """The language of content for a customer whose ``language`` attribute none of an offer's languages
    matches (empty: the first language written)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LocalizedText:
    """A text template in one or more languages (an agent script, a likely reason's text).

    >>> t = LocalizedText({"en": "Hello", "es": "Hola", "pt-br": "Olá"})
    >>> [t.pick(x, "en") for x in ("es", "ES-mx", "pt", "de", "")]
    [('es', 'Hola'), ('es', 'Hola'), ('pt-br', 'Olá'), ('en', 'Hello'), ('en', 'Hello')]
    >>> LocalizedText({"": "Hello"}).pick("es", "en")
    ('en', 'Hello')
    """

    variants: Mapping[str, str]
    """Language (lower case, ``es``, ``pt-br``) -> template; one entry keyed ``""`` for a text written without
    languages (it is in the set's default language)."""

    def pick(self, language: str, default_language: str) -> tuple[str, str]:
        """(language, template) for ``language`` (any case, ``_`` or ``-``), chosen as offers' content is
        (:func:`~nba_service.policies.content.pick_language`): that language, else its base language (``es``
        for ``es-MX``), else another region of it (``pt-br`` for ``pt``), else ``default_language`` the same
        way, else the first written. A text without languages is in ``default_language``."""
        written = list(self.variants)
        chosen = written[pick_language(written, language, default_language)]
        return chosen or default_language, self.variants[chosen]


@dataclasses.dataclass(frozen=True, slots=True)
class ReasonSpec:
    """A rule of the ``reasons`` section: which journey events make a likely reason for the customer's
    contact, how likely (a score that decays with the events' age) and what the agent reads."""

    id: str
    event: str
    """The event type it matches in the journey."""
    within_seconds: float
    """Only events at most this old count."""
    within: str
    score: float
    text: LocalizedText
    when: CompiledExpression | None = None
    """A condition on the event (and on the customer, as in any rule); None: every event of the type."""
    half_life_seconds: float = 0.0
    """The score halves every this long of the newest event's age (0: it does not decay)."""
    min_count: int = 1
    """Events needed (within the window, meeting ``when``) for the reason to hold."""
    variables: Mapping[str, CompiledExpression] = dataclasses.field(default_factory=dict)
    file: str = ""
    line: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignSpec:
    """An outbound campaign of the ``campaigns`` section (:mod:`~nba_service.policies.campaign_section`): a
    segment of the customers, the offers it may send, its schedule, volume limits and send window."""

    id: str
    name: str
    segment: CompiledExpression | None
    """A rule over the customer (no event fields); None: every customer."""
    offers: tuple[str, ...]
    """The candidate offers (those answering ``event`` when the campaign names no offers)."""
    event: str = ""
    """The event type whose offers are the candidates (when ``offers`` are not listed) and whose fields
    ``event_fields`` sets; each decision is made for a synthetic event of type ``campaign``."""
    event_fields: Mapping[str, object] = dataclasses.field(default_factory=dict)
    """The synthetic event's fields (fields of ``event``), as the candidates' rules and content read them."""
    schedule: str = "once"
    """``once``, or a cron expression (minute hour day-of-month month day-of-week) in ``timezone``."""
    timezone: str = "UTC"
    max_per_channel: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Deliveries per run on each channel, at most."""
    max_total: int | None = None
    """Deliveries per run in all, at most (None: no limit)."""
    send_window: tuple[int, int] | None = None
    """(start, end) in minutes of the customer's local day (end < start: across midnight); None: any time."""
    priority: float = 0.0
    repeat_after_seconds: float | None = None
    """A customer is reached again by the campaign only this long after; None: never again."""
    repeat_after: str = ""
    file: str = ""
    line: int = 0


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
    reasons: tuple[ReasonSpec, ...] = ()
    """The rules of likely reasons for a contact (``GetCustomerContext``), in the order written."""
    campaigns: tuple[CampaignSpec, ...] = ()
    """The outbound campaigns (``nba campaign run``), in the order written."""

    def places_by_kind(self) -> dict[str, tuple[Place, ...]]:
        kinds: dict[str, list[Place]] = {}
        for place in self.places:
            kinds.setdefault(place.kind, []).append(place)
        return {kind: tuple(found) for kind, found in kinds.items()}
