"""What a compiled rule runs with: the names it may read and the dicts that hold them.

A rule is evaluated as ``eval(code, evaluation_globals(), build_scope(...))``:
the globals (built once) hold the rule functions under their rewritten
names (``_f_days_since``), the scope (built once per request) holds the
flat variables the compiler rewrote the rule's names to (``event.amount``
-> ``event_amount``, ``profile.segment`` -> ``profile_segment``) and the
hidden arguments of the functions (``_ctx``, ``_event_attributes``, ``_open_carts``, ``_geo``).
The calendar names (``is_holiday``, ``days_until_holiday``, ``days_until_payday``)
are read in the customer's local date (:mod:`nba_service.policies.holiday_calendar`).
The globals also hold the guarded operators (``_op_mul``, ``_op_mod``) the
compiler turns a ``*`` or ``%`` into when its operands are not known to be
numbers.

>>> sorted(evaluation_globals())[:3]
['__builtins__', '_f_abs', '_f_attr']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nba_service.domain import EVENT_FIELDS, CustomerContext, Event
from nba_service.domain.localtime import local_minute
from nba_service.policies.holiday_calendar import NEVER_DAYS, HolidayCalendar, days_until_payday
from nba_service.policies.rule_functions import FUNCTIONS, guarded_mod, guarded_mul, num

__all__ = ["PROFILE_FIELDS", "SCOPE_NAMES", "build_scope", "evaluation_globals"]

PROFILE_FIELDS = ("segment", "first_name", "preferred_channel", "timezone", "known")
"""The fields a rule reads as ``profile.<field>``."""
SCOPE_NAMES = (
    "origin_channel",
    "local_hour",
    "weekday",
    "day_of_month",
    "month",
    "open_cart_value",
    "has_position",
    "is_holiday",
    "days_until_holiday",
    "days_until_payday",
)
"""The plain names (no dot) every rule may read."""
_NO_CARTS: frozenset[str] = frozenset()
_POSITIONED = frozenset(kind for kind, names in EVENT_FIELDS.items() if "latitude" in names)
"""Event types with an optional position: a rule reads 0 for a coordinate the event does not have (unless
it names a place of the set: then the place's)."""


def evaluation_globals() -> dict[str, Any]:
    """The shared, read-only globals every compiled expression runs with."""
    scope: dict[str, Any] = {"__builtins__": {}, "_op_mul": guarded_mul, "_op_mod": guarded_mod}
    for name, (func, _, _) in FUNCTIONS.items():
        scope["_f_" + name] = func
    return scope


def build_scope(
    ctx: CustomerContext,
    event: Event,
    places: Mapping[str, Any] | None = None,
    *,
    place_ids: Mapping[str, Any] | None = None,
    calendar: HolidayCalendar | None = None,
) -> dict[str, Any]:
    """The per-request variables every expression of the request reads.

    ``places`` are the policy's places by kind (for ``nearest_km``/``nearest_name``), ``place_ids`` the
    same places by id: an event whose ``place_id`` is one of them is at that place (0 km from it, and at
    its coordinates when it has none). ``calendar`` is the set's holiday calendar.
    """
    profile = ctx.profile
    local = local_minute(ctx.now, profile.timezone)
    today = local.toordinal()
    attributes = profile.attributes
    if calendar:
        is_holiday, days_until_holiday = calendar.day_for(attributes, profile.timezone, today)
    else:
        is_holiday, days_until_holiday = False, NEVER_DAYS
    payday = attributes.get("payday")
    open_cart = 0.0
    open_carts: set[str] | None = None  # the ids of the open carts, for cart_open(...)
    for journey in ctx.open_journeys:
        if journey.kind == "cart":
            if open_carts is None:
                open_cart = num(journey.fields.get("cart_value"), 0.0)
                open_carts = set()
            open_carts.add(journey.id)
    fields = event.fields
    latitude, longitude = fields.get("latitude"), fields.get("longitude")
    nearest: dict[str, tuple[float, str]] = {}  # by kind, filled as rules ask (see rule_functions._nearest)
    place = place_ids.get(fields.get("place_id") or "") if place_ids else None
    if place is not None:  # the client says the customer is at this place of the set
        nearest[place.kind] = (0.0, place.name)
        if latitude is None or longitude is None:
            latitude, longitude = place.latitude, place.longitude
    scope: dict[str, Any] = {
        "_ctx": ctx,
        "_event_attributes": event.attributes,
        "_open_carts": open_carts or _NO_CARTS,
        "_geo": (places or {}, latitude, longitude, nearest),
        "event_type": event.type,
        "origin_channel": ctx.origin_channel,
        "local_hour": local.hour,
        "weekday": local.weekday(),
        "day_of_month": local.day,
        "month": local.month,
        "open_cart_value": open_cart,
        "has_position": latitude is not None and longitude is not None,
        "is_holiday": is_holiday,
        "days_until_holiday": days_until_holiday,
        "days_until_payday": NEVER_DAYS if payday is None else days_until_payday(payday, today),
        "profile_segment": profile.segment,
        "profile_first_name": profile.first_name,
        "profile_preferred_channel": profile.preferred_channel,
        "profile_timezone": profile.timezone,
        "profile_known": profile.known,
    }
    for key, value in fields.items():
        scope["event_" + key] = value
    if "latitude" not in fields and event.type in _POSITIONED:  # no coordinates: the place's, else 0,0 (a number,
        # as typed: has_position says whether there is a position)
        scope["event_latitude"] = 0.0 if latitude is None else latitude
        scope["event_longitude"] = 0.0 if longitude is None else longitude
    return scope
