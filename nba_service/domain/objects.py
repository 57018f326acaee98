"""Domain objects of a decision: plain, immutable data with no I/O.

The API layer converts protobuf messages to these and back; the store layer
reads and writes them; the engine decides over them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from nba_service.domain.enums import OutcomeStatus

__all__ = [
    "EVENT_FIELDS",
    "Alternative",
    "ContactRecord",
    "CustomerContext",
    "CustomerProfile",
    "CustomerView",
    "Decision",
    "DecisionRequest",
    "Event",
    "JourneyEntry",
    "LikelyReason",
    "OpenJourney",
    "PastDecision",
    "Reason",
    "RecordedEvent",
    "RecordedOutcome",
    "RenderedContent",
    "TimedRequest",
]

#: Fields of each event type, as rules see them (``event.<field>``).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "atm_decline": ("amount", "balance", "currency", "atm_id", "latitude", "longitude", "shortfall"),
    "location": ("latitude", "longitude", "accuracy_m", "place_id"),
    "cart_abandon": ("cart_id", "cart_value", "currency", "item_count"),
    "app_open": ("screen",),
    "page_view": ("url", "page_type"),
    "agent_contact": ("agent_id", "reason"),
    "custom": ("name",),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """The live moment: its type, typed fields and (for custom events) attributes."""

    type: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    item_ids: tuple[str, ...] = ()
    """A cart's items (``cart_abandon``): kept in the journey and the open cart, not among the fields rules
    read (they see ``item_count``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One checked ``Decide`` request, from any entry point (gRPC, an event file, a campaign)."""

    customer_id: str
    event: Event
    origin_channel: str = ""
    request_id: str = ""
    """The caller's id for the request (idempotency and tracing); empty: the server makes one."""
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Free attributes of the request (features ``req:<name>``)."""
    top_k: int = 3
    """Alternatives to return besides the chosen action."""


@dataclasses.dataclass(frozen=True, slots=True)
class TimedRequest:
    """A request at a known time, as the offline tools replay it (one line of an event file)."""

    request: DecisionRequest
    timestamp: float | None = None
    """Unix seconds; None: the line has no time (the tool's "now" applies)."""
    line: int = 0
    """The line of the event file it came from (0: not from a file)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerProfile:
    customer_id: str
    first_name: str = ""
    segment: str = ""
    preferred_channel: str = ""
    reachable_channels: frozenset[str] = frozenset()
    consents: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    timezone: str = "UTC"
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    known: bool = True
    """False for a customer with no stored profile: the decision uses these defaults."""
    holdings: frozenset[str] = frozenset()
    """Products the customer holds (ids, e.g. ``current_account``): an offer selling one is not offered."""

    @classmethod
    def unknown(cls, customer_id: str) -> CustomerProfile:
        return cls(customer_id=customer_id, known=False)

    def without_attributes(self, names: Iterable[str]) -> CustomerProfile:
        """The profile with the named attributes left out (sensitive values for a caller without ``pii``)."""
        hidden = set(names)
        return dataclasses.replace(self, attributes={k: v for k, v in self.attributes.items() if k not in hidden})


class JourneyEntry(NamedTuple):
    """One event of the customer's journey, on any channel.

    The event's fields stay JSON text until someone reads them: rules only need
    the type and time, so a decision does not pay to decode the whole journey.
    (A named tuple: a decision reads up to 50 of them, and a tuple is built in
    half the time of a frozen dataclass.)
    """

    timestamp: float
    type: str
    origin_channel: str
    payload: str = "{}"

    @property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.payload)


class ContactRecord(NamedTuple):
    """One action sent to the customer, counted by the contact policy."""

    timestamp: float
    offer_id: str
    channel: str
    category: str


@dataclasses.dataclass(frozen=True, slots=True)
class OpenJourney:
    """Something the customer started and has not finished, e.g. an abandoned cart."""

    kind: str
    id: str
    opened: float
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerContext:
    """Everything the engine knows about one customer at one moment."""

    profile: CustomerProfile
    now: float
    """Unix time of the decision, seconds."""
    origin_channel: str = ""
    journey: tuple[JourneyEntry, ...] = ()
    """Newest first."""
    contacts: tuple[ContactRecord, ...] = ()
    open_journeys: tuple[OpenJourney, ...] = ()
    request_attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    declines: tuple[tuple[float, str], ...] = ()
    """(time, offer id) of the customer's recent declines and dismissals."""
    accepted: tuple[tuple[float, str, str], ...] = ()
    """(time, offer id, product it sells or "") of the offers the customer accepted (or converted on) within
    the longest ``accepted_window`` of the policy set."""
    send_at: float | None = None
    """When the action will be sent, if later than ``now`` (an outbound campaign's send window in the
    customer's time zone): the channels' quiet hours are judged at that moment, not at ``now``."""


@dataclasses.dataclass(frozen=True, slots=True)
class Alternative:
    offer_id: str
    channel: str
    score: float
    agent_script: str = ""
    """Only on the agent's best actions: the offer's ``agent_script``, rendered ("" without one)."""
    agent_script_language: str = ""
    """The language ``agent_script`` is in."""
    deliver_after: float | None = None
    """Unix time this action would be delivered at, had it been chosen: its channel is in the customer's quiet
    hours and defers (``on_quiet_hours: defer``); None: it would be delivered now."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    """Why the decision came out as it did: about an offer, the whole decision (``offer_id`` empty) or,
    with ``channel`` set, why the chosen offer is not sent on that channel of its own."""

    offer_id: str
    code: str
    detail: str
    channel: str = ""
    """Set on a channel reason only: the chosen offer's channel it is about."""


@dataclasses.dataclass(frozen=True, slots=True)
class RenderedContent:
    """An action's content as its channel shows it, in the language chosen for the customer (empty fields:
    not given for this channel)."""

    body: str = ""
    title: str = ""
    subject: str = ""
    """An e-mail's subject line."""
    html: str = ""
    """An e-mail's HTML body (``body`` is its plain-text part)."""
    deep_link: str = ""
    image_url: str = ""
    cta_label: str = ""
    cta_action: str = ""
    language: str = ""
    """The language rendered (``es``), or empty when the offer's content has no languages."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer. ``offer_id`` is None for "no action"."""

    offer_id: str | None
    channel: str
    score: float
    propensity: float
    offer_name: str = ""
    category: str = ""
    content: str = ""
    """The rendered body (``rendered.body``): what a client reading no more shows."""
    alternatives: tuple[Alternative, ...] = ()
    reasons: tuple[Reason, ...] = ()
    policy_version: str = ""
    model_version: str = ""
    features: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """The model features of the request, kept for the outcome join."""
    rendered: RenderedContent | None = None
    """The action's structured content (title, subject, deep link...); None for no action."""
    deliver_after: float | None = None
    """Unix time to deliver the action at, when its channel is in the customer's quiet hours and defers
    (``on_quiet_hours: defer``); None: deliver now."""

    @property
    def no_action(self) -> bool:
        return self.offer_id is None


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """An outcome joined to its decision (or why it was not)."""

    status: OutcomeStatus
    learn: bool = False
    """True for the first outcome that settled the offer's reward: it went to the learner."""
    offer_id: str = ""
    channel: str = ""
    customer_id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A moment recorded without a decision (``RecordEvent``): when, and the open journeys it changed."""

    timestamp: float
    """Unix seconds of the journey entry."""
    opened: OpenJourney | None = None
    """The journey it opened or refreshed (a ``cart_abandon``'s cart)."""
    closed: tuple[OpenJourney, ...] = ()
    """The open journeys it closed (a purchase's cart, or every cart), as they were."""
    holding_added: str = ""
    """The product a ``product_opened`` event added to the customer's holdings ("" for other events, or
    when the customer held it already)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LikelyReason:
    """A probable reason for the customer's contact, from a ``reasons`` rule of the policy set over the journey."""

    id: str
    """The rule's id."""
    text: str
    """The rule's text, rendered in the agent's language."""
    score: float
    """The rule's score, decayed by the age of the newest matching event."""
    evidence: tuple[JourneyEntry, ...] = ()
    """The journey events the rule matched, newest first."""


@dataclasses.dataclass(frozen=True, slots=True)
class PastDecision:
    """A recorded decision as the agent desktop lists it."""

    decision_id: str
    timestamp: float
    event_type: str
    offer_id: str
    channel: str
    outcomes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CustomerView:
    """What the agent desktop shows."""

    profile: CustomerProfile
    journey: tuple[JourneyEntry, ...]
    open_journeys: tuple[OpenJourney, ...]
    recent_decisions: tuple[PastDecision, ...]
    likely_reasons: tuple[LikelyReason, ...] = ()
    """Why the customer is probably calling, most likely first (the policy set's ``reasons`` rules)."""
