"""The customer's local time: quiet hours and calendar rules run on it."""

from __future__ import annotations

import datetime
import functools
import zoneinfo

__all__ = ["local_minute", "local_time", "next_local_time", "zone"]

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


def next_local_time(now: float, timezone: str, minute_of_day: int) -> float:
    """The first Unix time after ``now`` when the clock in ``timezone`` reads ``minute_of_day`` (today or
    tomorrow, daylight saving included): when quiet hours that end then are over.

    A wall time the clocks skip (in a spring-forward gap) is read as before the change, so the answer is
    then at most the gap's length late, never early.

    >>> import datetime
    >>> at = datetime.datetime(2026, 6, 10, 23, 10, tzinfo=zone("Europe/Madrid")).timestamp()
    >>> datetime.datetime.fromtimestamp(next_local_time(at, "Europe/Madrid", 8 * 60), zone("Europe/Madrid"))
    datetime.datetime(2026, 6, 11, 8, 0, tzinfo=zoneinfo.ZoneInfo(key='Europe/Madrid'))
    """
    tz = zone(timezone)
    today = local_time(now, timezone).date()
    hour, minute = divmod(minute_of_day, 60)
    moment = now
    for days in range(3):  # today, else tomorrow (a day after a 25-hour one: the day after)
        day = today + datetime.timedelta(days=days)
        moment = datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).timestamp()
        if moment > now:
            break
    return moment
