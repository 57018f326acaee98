"""Calendar facts of the customer's local day: public holidays and payday, as rules read them.

A policy set names the countries whose public holidays its rules see
(``settings.holidays``); the dates come from the maintained ``holidays``
package, computed once per (country, subdivision, year) in the process and
never fetched at run time. Each customer's calendar is the one of their
country: the profile attribute ``country`` (an ISO 3166-1 code) when it is
set, else the country of their time zone (the IANA zone table), else the
set's first country (a zone of no country: ``UTC``, ``Etc/GMT-3``); a country
the set does not name has no holidays.

A rule reads ``is_holiday`` and ``days_until_holiday`` (0 on a holiday, 9999
without a calendar) in the customer's local date, and ``days_until_payday``
from the profile attribute ``payday`` (a day of the month, 1 to 31; the last
day of a shorter month; 9999 without one).

On the request path everything is a lookup: a day's answer is kept per
(country, day), the holidays of a year per country, the payday per (payday, day).

>>> import datetime
>>> day = datetime.date(2026, 12, 30).toordinal()
>>> days_until_payday("31", day), days_until_payday("1", day), days_until_payday("x", day)
(1.0, 2.0, 9999.0)
>>> calendar = HolidayCalendar(("ES",))
>>> calendar.day("ES", day), calendar.day("ES", day + 2), calendar.day("DE", day)
((False, 2.0), (True, 0.0), (False, 9999.0))
"""

from __future__ import annotations

import bisect
import calendar as _months
import datetime
import functools
import importlib.resources
import pathlib
import threading
from collections.abc import Mapping

__all__ = [
    "NEVER_DAYS",
    "HolidayCalendar",
    "days_until_payday",
    "holiday_ordinals",
    "supported_countries",
    "zone_country",
]

NEVER_DAYS = 9999.0
"""What ``days_until_holiday`` and ``days_until_payday`` read when there is no such day (as ``days_since``)."""
_MEMO_DAYS = 50_000
"""(country, day) answers a calendar keeps before it starts over: a year of days for 100 countries."""


@functools.cache
def supported_countries() -> Mapping[str, tuple[str, ...]]:
    """The countries the ``holidays`` package knows (ISO 3166-1 codes), each with its subdivision codes."""
    import holidays  # about 60 ms: imported only by policy sets that name countries

    return {code: tuple(subdivisions) for code, subdivisions in holidays.list_supported_countries().items()}


@functools.lru_cache(maxsize=1024)
def holiday_ordinals(country: str, subdivision: str | None, year: int) -> tuple[int, ...]:
    """The public holidays of ``country`` (and ``subdivision``) in ``year``, as sorted day ordinals.

    >>> import datetime
    >>> [datetime.date.fromordinal(d).isoformat() for d in holiday_ordinals("ES", None, 2026)[:2]]
    ['2026-01-01', '2026-01-06']
    """
    import holidays

    dates = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return tuple(sorted(day.toordinal() for day in dates))


class HolidayCalendar:
    """The public holidays of a policy set's countries, answered per customer and local day.

    Thread-safe: the memo only grows (and is replaced, never emptied in place, when it is full).
    """

    def __init__(self, countries: tuple[str, ...] = (), subdivisions: Mapping[str, str] | None = None) -> None:
        self.countries = tuple(countries)
        self.subdivisions = dict(subdivisions or {})
        self._named = frozenset(self.countries)
        self._default = self.countries[0] if self.countries else None
        self._memo: dict[tuple[str, int], tuple[bool, float]] = {}
        self._customers: dict[tuple[str | None, str, int], tuple[bool, float]] = {}
        """(country attribute, time zone, day) -> the answer of :meth:`day_for`."""
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.countries)

    def warm(self, year: int) -> None:
        """Compute the holidays of ``year`` and the next one for every country now (off the request path)."""
        for country in self.countries:
            for each in (year, year + 1):
                holiday_ordinals(country, self.subdivisions.get(country), each)

    def country_of(self, attributes: Mapping[str, str], timezone: str) -> str | None:
        """The customer's country if the set names it: the ``country`` attribute, else their zone's."""
        code = attributes.get("country")
        if code:
            code = code.strip().upper()
        else:
            code = zone_country(timezone) or self._default
        return code if code in self._named else None

    def day_for(self, attributes: Mapping[str, str], timezone: str, ordinal: int) -> tuple[bool, float]:
        """:meth:`day` in the calendar of the customer with these attributes and time zone (one lookup once
        a customer of the same country attribute and zone has asked on that day)."""
        key = (attributes.get("country"), timezone, ordinal)
        found = self._customers.get(key)
        if found is None:
            found = self.day(self.country_of(attributes, timezone), ordinal)
            with self._lock:
                if len(self._customers) >= _MEMO_DAYS:
                    self._customers = {}
                self._customers[key] = found
        return found

    def day(self, country: str | None, ordinal: int) -> tuple[bool, float]:
        """(is it a holiday, days until the next one: 0 on a holiday) for ``country`` on day ``ordinal``."""
        if country is None or country not in self._named:
            return False, NEVER_DAYS
        key = (country, ordinal)
        found = self._memo.get(key)
        if found is None:
            found = self._compute(country, ordinal)
            with self._lock:
                if len(self._memo) >= _MEMO_DAYS:
                    self._memo = {}
                self._memo[key] = found
        return found

    def _compute(self, country: str, ordinal: int) -> tuple[bool, float]:
        subdivision = self.subdivisions.get(country)
        year = datetime.date.fromordinal(ordinal).year
        for each in (year, year + 1):  # the next holiday may be in January
            days = holiday_ordinals(country, subdivision, each)
            at = bisect.bisect_left(days, ordinal)
            if at < len(days):
                return days[at] == ordinal, float(days[at] - ordinal)
        return False, NEVER_DAYS


@functools.lru_cache(maxsize=8192)
def days_until_payday(payday: str | None, ordinal: int) -> float:
    """Days from day ``ordinal`` to the next payday (0 on it): ``payday`` is a day of the month, 1 to 31
    (the last day of a shorter month); anything else: :data:`NEVER_DAYS`."""
    if payday is None:
        return NEVER_DAYS
    text = payday.strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 31):
        return NEVER_DAYS
    day = int(text)
    today = datetime.date.fromordinal(ordinal)
    year, month = today.year, today.month
    for _ in range(2):
        pay = datetime.date(year, month, min(day, _months.monthrange(year, month)[1]))
        if pay >= today:
            return float((pay - today).days)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return NEVER_DAYS  # not reached: next month's payday is always after today


@functools.cache
def _zone_countries() -> Mapping[str, str]:
    """IANA zone -> ISO 3166-1 country code, from the zone table (its aliases resolved), as ``tzdata`` ships it."""
    table: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    try:
        folder = importlib.resources.files("tzdata").joinpath("zoneinfo")
        tab, zi = folder.joinpath("zone.tab").read_text(), folder.joinpath("tzdata.zi").read_text()
    except (ModuleNotFoundError, OSError):  # no tzdata package: the system's table, without aliases
        system = pathlib.Path("/usr/share/zoneinfo/zone.tab")
        tab, zi = (system.read_text() if system.is_file() else ""), ""
    for line in tab.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not line.startswith("#"):
            table[parts[2]] = parts[0]
    for line in zi.splitlines():
        if line.startswith("L "):
            parts = line.split()
            if len(parts) == 3:
                links.append((parts[1], parts[2]))
    for target, alias in links:
        if target in table and alias not in table:
            table[alias] = table[target]
    return table


def zone_country(timezone: str) -> str | None:
    """The country of an IANA zone (``Europe/Madrid``: ``ES``), None for a zone of no country (``UTC``).

    >>> zone_country("Europe/Madrid"), zone_country("US/Eastern"), zone_country("UTC")
    ('ES', 'US', None)
    """
    return _zone_countries().get(timezone)
