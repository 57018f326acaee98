"""Domain objects of a decision: plain, immutable data with no I/O.

The API layer converts protobuf messages to these and back; the store layer
reads and writes them; the engine decides over them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "EVENT_FIELDS",
    "Alternative",
    "ContactRecord",
    "CustomerContext",
    "CustomerProfile",
    "Decision",
    "Event",
    "JourneyEntry",
    "OpenJourney",
    "OutcomeKind",
    "Reason",
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


class OutcomeKind(enum.Enum):
    """What happened to a decision. Which outcomes count as success is the offer's ``reward``
    (accepted or converted, or converted only); declined and dismissed count as failure."""

    IMPRESSED = "impressed"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONVERTED = "converted"
    DISMISSED = "dismissed"



@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """The live moment: its type, typed fields and (for custom events) attributes."""

    type: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)


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

    @classmethod
    def unknown(cls, customer_id: str) -> CustomerProfile:
        return cls(customer_id=customer_id, known=False)


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


@dataclasses.dataclass(frozen=True, slots=True)
class Alternative:
    offer_id: str
    channel: str
    score: float


@dataclasses.dataclass(frozen=True, slots=True)
class Reason:
    offer_id: str
    code: str
    detail: str


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
    alternatives: tuple[Alternative, ...] = ()
    reasons: tuple[Reason, ...] = ()
    policy_version: str = ""
    model_version: str = ""
    features: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """The model features of the request, kept for the outcome join."""

    @property
    def no_action(self) -> bool:
        return self.offer_id is None
