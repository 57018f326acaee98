"""The customer's local time: quiet hours and calendar rules run on it."""

from __future__ import annotations

import datetime
import functools
import zoneinfo

__all__ = ["local_time", "zone"]

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
