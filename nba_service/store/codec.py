"""How domain objects are written in Redis: compact JSON and ``|``-joined members.

JSON goes through orjson (in C, about ten times the standard library's speed
on the small objects of a decision), compact and UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from nba_service.domain import ContactRecord, CustomerContext, CustomerProfile, JourneyEntry, OpenJourney

__all__ = [
    "accepted_member",
    "contact_member",
    "decode_accepted",
    "decode_contact",
    "decode_context",
    "decode_journey",
    "decode_open_journey",
    "decode_profile",
    "dumps",
    "encode_journey",
    "encode_open_journey",
    "encode_profile",
    "loads",
    "pairs",
]

loads = orjson.loads


def dumps(value: Any) -> str:
    """Compact JSON text (no spaces, UTF-8 as is); numpy numbers are written as numbers."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def encode_profile(profile: CustomerProfile) -> str:
    """The profile as stored; ``holdings`` only when it holds products (a profile without any is written
    as before holdings existed)."""
    data: dict[str, Any] = {
        "first_name": profile.first_name,
        "segment": profile.segment,
        "preferred_channel": profile.preferred_channel,
        "reachable_channels": sorted(profile.reachable_channels),
        "consents": dict(profile.consents),
        "timezone": profile.timezone,
        "attributes": dict(profile.attributes),
    }
    if profile.holdings:
        data["holdings"] = sorted(profile.holdings)
    return dumps(data)


def decode_profile(customer_id: str, raw: bytes | str | None) -> CustomerProfile:
    if raw is None:
        return CustomerProfile.unknown(customer_id)
    data = loads(raw)
    return CustomerProfile(
        customer_id=customer_id,
        first_name=data.get("first_name", ""),
        segment=data.get("segment", ""),
        preferred_channel=data.get("preferred_channel", ""),
        reachable_channels=frozenset(data.get("reachable_channels", ())),
        consents=data.get("consents", {}),
        timezone=data.get("timezone") or "UTC",
        attributes=data.get("attributes", {}),
        holdings=frozenset(data.get("holdings", ())),
    )


def encode_journey(timestamp: float, event_type: str, origin: str, fields: Mapping[str, Any]) -> str:
    return f"{timestamp:.3f}|{event_type}|{origin}|{dumps(dict(fields))}"


def decode_journey(raw: bytes) -> JourneyEntry:
    ts, event_type, origin, payload = raw.decode().split("|", 3)
    return JourneyEntry(float(ts), event_type, origin, payload)


def contact_member(decision_id: str, offer_id: str, channel: str, category: str) -> str:
    return f"{offer_id}|{channel}|{category}|{decision_id}"


def decode_contact(member: bytes, score: float) -> ContactRecord:
    offer_id, channel, category, _ = member.decode().split("|", 3)
    return ContactRecord(score, offer_id, channel, category)


def encode_open_journey(opened: float, fields: Mapping[str, Any]) -> str:
    return dumps({"opened": opened, "fields": dict(fields)})


def decode_open_journey(field: bytes, raw: bytes) -> OpenJourney:
    kind, _, ident = field.decode().partition(":")
    data = loads(raw)
    return OpenJourney(kind, ident, float(data["opened"]), data.get("fields", {}))


def pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    """(member, score) or (field, value) pairs of a flat Redis reply."""
    items = iter(flat)
    return zip(items, items, strict=False)


def decode_context(
    customer_id: str,
    now: float,
    origin_channel: str,
    request_attributes: Mapping[str, str],
    raw_profile: bytes | None,
    raw_journey: Iterable[bytes],
    raw_contacts: Iterable[tuple[bytes, Any]],
    raw_open: Iterable[tuple[bytes, bytes]],
    raw_declines: Iterable[tuple[bytes, Any]],
    raw_accepted: Iterable[tuple[bytes, Any]] = (),
) -> CustomerContext:
    """A decision's context from the six reads of one customer (see ``StateStore.read_context``).

    Contacts, declines and accepted offers are (member, score) pairs, open journeys (field, value) pairs.
    """
    return CustomerContext(
        profile=decode_profile(customer_id, raw_profile),
        now=now,
        origin_channel=origin_channel,
        journey=tuple(map(decode_journey, raw_journey)),
        contacts=tuple(decode_contact(member, float(score)) for member, score in raw_contacts),
        open_journeys=tuple(decode_open_journey(field, value) for field, value in raw_open),
        request_attributes=request_attributes,
        declines=tuple((float(score), member.split(b"|", 1)[0].decode()) for member, score in raw_declines),
        accepted=tuple(decode_accepted(member, score) for member, score in raw_accepted),
    )


def accepted_member(offer_id: str, product: str, decision_id: str) -> str:
    """A member of the customer's accepted offers (:func:`nba_service.store.keys.accepted`)."""
    return f"{offer_id}|{product}|{decision_id}"


def decode_accepted(member: bytes, score: Any) -> tuple[float, str, str]:
    """(time, offer id, product) of an accepted-offers member."""
    offer_id, product, _ = member.decode().split("|", 2)
    return float(score), offer_id, product
