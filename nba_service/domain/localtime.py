"""The customer's local time: quiet hours and calendar rules run on it."""

from __future__ import annotations

import datetime
import functools
import zoneinfo

__all__ = ["local_minute", "local_time", "zone"]

_UTC = zoneinfo.ZoneInfo("UTC")


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``; an empty or unknown name is UTC."""
    if not name:
        return _UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return _UTC


def local_time(now: float, timezone: str) -> datetime.datetime:
    """Unix time ``now`` as a wall-clock time in ``timezone`` (daylight saving included)."""
    return datetime.datetime.fromtimestamp(now, zone(timezone))


def local_minute(now: float, timezone: str) -> datetime.datetime:
    """The start of the minute of ``now`` in ``timezone``: what quiet hours, calendar rules and features read.

    Cached per (minute, zone): the requests of a minute share the conversion.
    """
    return _minute(int(now // 60), timezone)


@functools.lru_cache(maxsize=4096)
def _minute(minute: int, timezone: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(minute * 60, zone(timezone))
