"""What a compiled rule runs with: the names it may read and the dicts that hold them.

A rule is evaluated as ``eval(code, evaluation_globals(), build_scope(...))``:
the globals (built once) hold the rule functions under their rewritten
names (``_f_days_since``), the scope (built once per request) holds the
flat variables the compiler rewrote the rule's names to (``event.amount``
-> ``event_amount``, ``profile.segment`` -> ``profile_segment``) and the
hidden arguments of the functions (``_ctx``, ``_event_attributes``, ``_geo``).
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
from nba_service.policies.rule_functions import FUNCTIONS, guarded_mod, guarded_mul, num

__all__ = ["PROFILE_FIELDS", "SCOPE_NAMES", "build_scope", "evaluation_globals"]

PROFILE_FIELDS = ("segment", "first_name", "preferred_channel", "timezone", "known")
"""The fields a rule reads as ``profile.<field>``."""
SCOPE_NAMES = ("origin_channel", "local_hour", "weekday", "day_of_month", "month", "open_cart_value")
"""The plain names (no dot) every rule may read."""
_POSITIONED = frozenset(kind for kind, names in EVENT_FIELDS.items() if "latitude" in names)
"""Event types with an optional position: a rule reads 0 for a coordinate the event does not have."""


def evaluation_globals() -> dict[str, Any]:
    """The shared, read-only globals every compiled expression runs with."""
    scope: dict[str, Any] = {"__builtins__": {}, "_op_mul": guarded_mul, "_op_mod": guarded_mod}
    for name, (func, _, _) in FUNCTIONS.items():
        scope["_f_" + name] = func
    return scope


def build_scope(ctx: CustomerContext, event: Event, places: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The per-request variables every expression of the request reads.

    ``places`` are the policy's places by kind (for ``nearest_km``/``nearest_name``).
    """
    profile = ctx.profile
    local = local_minute(ctx.now, profile.timezone)
    open_cart = 0.0
    for journey in ctx.open_journeys:
        if journey.kind == "cart":
            open_cart = num(journey.fields.get("cart_value"), 0.0)
            break
    fields = event.fields
    scope: dict[str, Any] = {
        "_ctx": ctx,
        "_event_attributes": event.attributes,
        "_geo": (places or {}, fields.get("latitude"), fields.get("longitude"), {}),  # {}: nearest, by kind
        "event_type": event.type,
        "origin_channel": ctx.origin_channel,
        "local_hour": local.hour,
        "weekday": local.weekday(),
        "day_of_month": local.day,
        "month": local.month,
        "open_cart_value": open_cart,
        "profile_segment": profile.segment,
        "profile_first_name": profile.first_name,
        "profile_preferred_channel": profile.preferred_channel,
        "profile_timezone": profile.timezone,
        "profile_known": profile.known,
    }
    for key, value in fields.items():
        scope["event_" + key] = value
    if "latitude" not in fields and event.type in _POSITIONED:  # no position: rules read 0,0 (a number, as typed)
        scope["event_latitude"] = scope["event_longitude"] = 0.0
    return scope
