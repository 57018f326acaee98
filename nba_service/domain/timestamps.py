"""Times as people write them (ISO 8601) and as the service keeps them (Unix seconds).

>>> parse_iso("2026-06-10T12:00:00Z"), parse_iso("2026-06-10")
(1781092800.0, 1781049600.0)
>>> format_iso(1781092800.0)
'2026-06-10T12:00:00.000Z'
"""

from __future__ import annotations

import datetime

__all__ = ["format_iso", "parse_iso", "to_unix"]


def to_unix(moment: datetime.datetime | datetime.date) -> float:
    """A date-time (UTC when it has no offset) or a date (its midnight, UTC) as Unix seconds."""
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime(moment.year, moment.month, moment.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_iso(text: str) -> float:
    """An ISO 8601 date or date-time as Unix seconds (UTC when it has no offset).

    Raises ``ValueError`` when ``text`` is neither; callers say where it came from.
    """
    return to_unix(datetime.datetime.fromisoformat(text))


def format_iso(timestamp: float) -> str:
    """Unix seconds as an ISO 8601 UTC date-time with milliseconds."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
