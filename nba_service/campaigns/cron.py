"""The times a campaign's cron-like ``schedule`` names, in its time zone (:mod:`nba_service.campaigns.scheduler`).

Five fields, as :func:`~nba_service.policies.campaign_section.check_cron` validates them: minute (0-59), hour
(0-23), day of month (1-31), month (1-12), day of week (0-6, 0 = Sunday); each ``*``, ``*/n``, ``a``, ``a-b``,
``a-b/n`` or a list of them. As in cron, when both the day of month and the day of week are restricted (neither
starts with ``*``), a day matching either is a day of the schedule. Times are wall-clock times of the zone: a
time that a daylight-saving change skips happens an hour later that day, and one it repeats happens once.

>>> import datetime
>>> cron = Cron.parse("0 9 * * 1-5")
>>> at = datetime.datetime(2026, 6, 12, 10, 0, tzinfo=datetime.UTC).timestamp()  # a Friday
>>> datetime.datetime.fromtimestamp(cron.next_after(at, "Europe/Madrid"), datetime.UTC).isoformat()
'2026-06-15T07:00:00+00:00'
>>> datetime.datetime.fromtimestamp(cron.last_at_or_before(at, "Europe/Madrid"), datetime.UTC).isoformat()
'2026-06-12T07:00:00+00:00'
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo

from nba_service.policies.campaign_section import check_cron

__all__ = ["HORIZON_DAYS", "Cron"]

HORIZON_DAYS = 366 * 8
"""How far :meth:`Cron.next_after` looks (a 29 February that is a Monday comes within 28 years; 8 cover
every schedule but such)."""
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, _, step = item.partition("/")
        if body == "*":
            start, end = low, high
        else:
            ends = [int(e) for e in body.split("-")]
            start, end = ends[0], ends[-1]
            if step and len(ends) == 1:
                end = high  # "a/n": from a to the end of the range
        values.update(range(start, end + 1, int(step) if step else 1))
    return frozenset(values)


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Raises ValueError for what :func:`check_cron` refuses."""
        check_cron(text)
        parts = text.split()
        sets = [_field(p, low, high) for p, (low, high) in zip(parts, _RANGES, strict=True)]
        return cls(
            minutes=tuple(sorted(sets[0])),
            hours=tuple(sorted(sets[1])),
            days=sets[2],
            months=sets[3],
            weekdays=sets[4],
            any_day=parts[2].startswith("*"),
            any_weekday=parts[4].startswith("*"),
        )

    def _day(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        in_month, in_week = day.day in self.days, (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def _times(self, day: datetime.date, zone: zoneinfo.ZoneInfo, backwards: bool) -> list[float]:
        times = [
            datetime.datetime(day.year, day.month, day.day, h, m, tzinfo=zone).timestamp()
            for h in self.hours
            for m in self.minutes
        ]
        return sorted(times, reverse=backwards)

    def next_after(self, at: float, timezone: str) -> float | None:
        """The first time of the schedule after ``at`` (epoch seconds); None if none within
        :data:`HORIZON_DAYS` (a day that never comes, such as 31 February)."""
        zone = zoneinfo.ZoneInfo(timezone)
        start = datetime.datetime.fromtimestamp(at, zone).date() - datetime.timedelta(days=1)
        for offset in range(HORIZON_DAYS):
            day = start + datetime.timedelta(days=offset)
            if self._day(day):
                for t in self._times(day, zone, backwards=False):
                    if t > at:
                        return t
        return None

    def last_at_or_before(self, at: float, timezone: str) -> float | None:
        """The last time of the schedule at or before ``at``; None if none within :data:`HORIZON_DAYS`."""
        zone = zoneinfo.ZoneInfo(timezone)
        start = datetime.datetime.fromtimestamp(at, zone).date() + datetime.timedelta(days=1)
        for offset in range(HORIZON_DAYS):
            day = start - datetime.timedelta(days=offset)
            if self._day(day):
                for t in self._times(day, zone, backwards=True):
                    if t <= at:
                        return t
        return None
