"""The functions a rule may call, as they run at request time.

A rule writes ``days_since('app_open')``; the compiler
(:mod:`nba_service.policies.compiler`) rewrites that to
``_f_days_since(_ctx, 'app_open')``, and :data:`FUNCTIONS` says which
implementation that is, which hidden first argument it takes and how many
arguments the rule passes. Nothing here parses or compiles anything.

Every function here runs in bounded time and returns a bounded value (the
compiler's docstring says why a whole rule is bounded):
:func:`guarded_mul` and :func:`guarded_mod` are the ``*`` and ``%`` of a
rule whose operands are not known to be numbers, and refuse anything else.

>>> parse_duration("24h")
86400.0
>>> num("12.5"), num(None, 3)
(12.5, 3.0)
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Container, Mapping
from typing import Any

from nba_service.domain import CustomerContext
from nba_service.domain.journeys import cart_journey_id
from nba_service.domain.localtime import local_minute

__all__ = ["FUNCTIONS", "MAX_ROUND_DIGITS", "guarded_mod", "guarded_mul", "num", "parse_duration"]

MAX_ROUND_DIGITS = 20
"""``round(x, n)`` takes ``n`` from -20 to 20: ``round(1, -10**9)`` would compute ``10**10**9``."""
_NEVER_DAYS = 9999.0
_NEVER_KM = 99999.0
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``24h`` or ``7d``.

    >>> parse_duration("7d")
    604800.0
    """
    text = str(text).strip()
    if len(text) < 2 or text[-1] not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    try:
        amount = float(text[:-1])
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d") from None
    if amount <= 0 or not math.isfinite(amount):
        raise ValueError(f"{text!r} must be a positive duration")
    return amount * _DURATION_UNITS[text[-1]]


_DURATIONS: dict[str, float] = {}


def _cached_duration(text: str) -> float:
    seconds = _DURATIONS.get(text)
    if seconds is None:
        seconds = _DURATIONS[text] = parse_duration(text)
    return seconds


def num(value: Any, default: float = 0.0) -> float:
    """``value`` as a finite number, or ``default`` when it is not one (rules call it as ``num``)."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return float(default)
    return result if math.isfinite(result) else float(default)


def guarded_mul(left: Any, right: Any) -> Any:
    """``left * right`` for numbers only: repeating text or a list would build a value of any size.

    >>> guarded_mul(2, 2.5)
    5.0
    >>> guarded_mul("x", 3)
    Traceback (most recent call last):
      ...
    TypeError: '*' needs two numbers, got str and int
    """
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left * right
    raise TypeError(f"'*' needs two numbers, got {type(left).__name__} and {type(right).__name__}")


def guarded_mod(left: Any, right: Any) -> Any:
    """``left % right`` for numbers only: ``%`` on text formats it (``'%0999999999d' % 1``)."""
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left % right
    raise TypeError(f"'%' needs two numbers, got {type(left).__name__} and {type(right).__name__}")


def _round(value: Any, digits: Any = None) -> Any:
    """``round``, a float for a float (``round(1e308)`` would be a whole number of 309 digits)."""
    if digits is None:
        return float(round(value)) if isinstance(value, float) else round(value)
    if not isinstance(digits, int) or not -MAX_ROUND_DIGITS <= digits <= MAX_ROUND_DIGITS:
        raise ValueError(f"round() takes -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS} digits")
    return round(value, digits)


def _attr(ctx: CustomerContext, key: str) -> str | None:
    return ctx.profile.attributes.get(key)


def _event_attr(attributes: Mapping[str, str], key: str) -> str | None:
    return attributes.get(key)


def _request_attr(ctx: CustomerContext, key: str) -> str | None:
    return ctx.request_attributes.get(key)


def _reachable(ctx: CustomerContext, channel: str) -> bool:
    return channel in ctx.profile.reachable_channels


def _consent(ctx: CustomerContext, channel: str) -> bool:
    return bool(ctx.profile.consents.get(channel, False))


def _holds(ctx: CustomerContext, product: str) -> bool:
    """The customer holds ``product`` (profile ``holdings``)."""
    return product in ctx.profile.holdings


def _cart_open(open_carts: Container[str], cart_id: Any) -> bool:
    """The customer's cart ``cart_id`` is still open: abandoned, and no purchase or checkout closed it since
    (``''``: the cart abandoned without an id; ``None``, e.g. a missing ``event_attr``: no cart).
    ``open_carts`` are the ids of the customer's open carts, gathered once per request.

    >>> _cart_open(frozenset({"k1"}), "k1"), _cart_open(frozenset({"k1"}), "k2"), _cart_open(frozenset({"k1"}), None)
    (True, False, False)
    """
    return cart_id is not None and cart_journey_id(cart_id) in open_carts


def _count_events(ctx: CustomerContext, event_type: str, window: str) -> int:
    since = ctx.now - _cached_duration(window)
    return sum(1 for e in ctx.journey if e.type == event_type and e.timestamp >= since)


def _days_since(ctx: CustomerContext, event_type: str) -> float:
    for entry in ctx.journey:  # newest first
        if entry.type == event_type:
            return max(0.0, (ctx.now - entry.timestamp) / 86400.0)
    return _NEVER_DAYS


def _round_up(value: float, step: float) -> float:
    if step <= 0:
        raise ValueError("round_up step must be positive")
    return float(math.ceil(value / step)) * step  # a float: a whole number of 309 digits costs to multiply


def _days_until(ctx: CustomerContext, date: Any) -> float:
    """Days from the customer's local today to the next anniversary of ``date`` (YYYY-MM-DD or MM-DD)."""
    if not isinstance(date, str):
        return _NEVER_DAYS
    parts = date.strip().split("-")
    try:
        month, day = int(parts[-2]), int(parts[-1])
        today = local_minute(ctx.now, ctx.profile.timezone).date()
        target = _anniversary(today.year, month, day)
    except (ValueError, IndexError):
        return _NEVER_DAYS
    if target < today:
        target = _anniversary(today.year + 1, month, day)
    return float((target - today).days)


def _anniversary(year: int, month: int, day: int) -> datetime.date:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        if (month, day) == (2, 29):
            return datetime.date(year, 3, 1)  # a 29 February birthday in a common year
        raise


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def _nearest(geo: Any, kind: str) -> tuple[float, str]:
    """The nearest place of ``kind``: scanned once per request and kind (``geo[3]`` keeps the answers; it
    starts with the place the event names, at 0 km)."""
    places, latitude, longitude, found = geo
    nearest: tuple[float, str] | None = found.get(kind)
    if nearest is None:
        nearest = found[kind] = _scan(places, latitude, longitude, kind)
    return nearest


def _scan(places: Any, latitude: Any, longitude: Any, kind: str) -> tuple[float, str]:
    best, name = _NEVER_KM, ""
    if latitude is None or longitude is None:
        return best, name  # no position in this event (an explicit 0, 0 is a position)
    for place in places.get(kind, ()):
        distance = _haversine_km(latitude, longitude, place.latitude, place.longitude)
        if distance < best:
            best, name = distance, place.name
    return best, name


def _nearest_km(geo: Any, kind: str) -> float:
    return _nearest(geo, kind)[0]


def _nearest_name(geo: Any, kind: str) -> str:
    return _nearest(geo, kind)[1]


#: name -> (implementation, hidden first argument ("_ctx": the CustomerContext,
#: "_event_attributes": the custom event's attributes, "_open_carts": the ids of the
#: customer's open carts, "_geo": the policy's places and
#: the event's position, "": none), arguments (min, max))
FUNCTIONS: dict[str, tuple[Any, str, tuple[int, int]]] = {
    "attr": (_attr, "_ctx", (1, 1)),
    "event_attr": (_event_attr, "_event_attributes", (1, 1)),
    "request_attr": (_request_attr, "_ctx", (1, 1)),
    "reachable": (_reachable, "_ctx", (1, 1)),
    "consent": (_consent, "_ctx", (1, 1)),
    "holds": (_holds, "_ctx", (1, 1)),
    "cart_open": (_cart_open, "_open_carts", (1, 1)),
    "count_events": (_count_events, "_ctx", (2, 2)),
    "days_since": (_days_since, "_ctx", (1, 1)),
    "days_until": (_days_until, "_ctx", (1, 1)),
    "nearest_km": (_nearest_km, "_geo", (1, 1)),
    "nearest_name": (_nearest_name, "_geo", (1, 1)),
    "num": (num, "", (1, 2)),
    "round_up": (_round_up, "", (2, 2)),
    "min": (min, "", (2, 8)),
    "max": (max, "", (2, 8)),
    "abs": (abs, "", (1, 1)),
    "round": (_round, "", (1, 2)),
}
