"""Places a moment is at or near, public holidays and payday, as rules read them (issue 14, items 5 and 8)."""

from __future__ import annotations

import datetime
import textwrap

import pytest

from nba_service.domain import CustomerContext, CustomerProfile, Event, ValidationError
from nba_service.domain.validation import check_profile
from nba_service.policies.compiler import ExpressionError, compile_expression
from nba_service.policies.holiday_calendar import HolidayCalendar, days_until_payday, zone_country
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from tests.conftest import SAMPLE_POLICIES

CHANNELS = "channels:\n  - id: push\n"
OFFER = textwrap.dedent("""\
    offers:
      - id: near
        name: Near
        category: retail
        events: [location]
        eligible_when: "nearest_km('store') <= 0.3"
        value: 1
        prior: 0.1
        channels: [push]
        content: {default: "Hi"}
    """)
PLACES = textwrap.dedent("""\
    places:
      - {id: store_sol, name: Store Sol, kind: store, latitude: 40.4172, longitude: -3.7040}
      - {id: branch_sol, name: Branch Sol, kind: branch, latitude: 40.4169, longitude: -3.7035}
    """)


def _at(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def _day(iso: str) -> int:
    return datetime.date.fromisoformat(iso).toordinal()


def _snapshot(settings: str = "settings: {}\n") -> PolicySnapshot:
    files = {"channels.yaml": CHANNELS, "offers.yaml": OFFER, "places.yaml": PLACES, "settings.yaml": settings}
    return PolicySnapshot.compile(parse_policy_files(files), "1")


def _scope(snapshot: PolicySnapshot, event: Event, now: str = "2026-06-10T12:00:00+00:00",
           timezone: str = "Europe/Madrid", **attributes: str) -> dict:
    ctx = CustomerContext(CustomerProfile("c1", timezone=timezone, attributes=attributes), now=_at(now))
    return snapshot.scope(ctx, event)


def _eval(rule: str, scope: dict, event_type: str = "location") -> object:
    from nba_service.policies.compiler import Definitions
    from nba_service.policies.scope import evaluation_globals

    kinds = Definitions(place_kinds=frozenset({"store", "branch"}))
    return eval(compile_expression(rule, event_types=(event_type,), definitions=kinds).code, evaluation_globals(),
                scope)


# --- places ------------------------------------------------------------------------------------------------


def test_distance_decides_whether_a_ping_is_near_a_place():
    snapshot = _snapshot()
    near = _scope(snapshot, Event("location", {"latitude": 40.4180, "longitude": -3.7045, "place_id": ""}))
    half_km = _scope(snapshot, Event("location", {"latitude": 40.4217, "longitude": -3.7040}))
    atlantic = _scope(snapshot, Event("location", {"latitude": 35.0, "longitude": -40.0}))

    assert _eval("nearest_km('store')", near) == pytest.approx(0.098, abs=0.005)
    assert _eval("nearest_km('store') <= 0.3", near) is True
    assert _eval("nearest_km('store')", half_km) == pytest.approx(0.5, abs=0.01)
    assert _eval("nearest_km('store') <= 0.3", half_km) is False
    assert _eval("nearest_km('store')", atlantic) > 3000  # measured: a real position, far from everything
    assert _eval("nearest_name('store')", atlantic) == "Store Sol"


def test_a_ping_naming_a_place_of_the_set_is_at_that_place():
    snapshot = _snapshot()
    named = _scope(snapshot, Event("location", {"accuracy_m": 20.0, "place_id": "store_sol"}))
    assert _eval("has_position and nearest_km('store') == 0 and nearest_name('store') == 'Store Sol'", named)
    assert (named["event_latitude"], named["event_longitude"]) == (40.4172, -3.7040)  # the place's coordinates
    assert _eval("nearest_km('branch')", named) == pytest.approx(0.054, abs=0.005)  # measured from the place

    # the place the client names wins over coordinates it also sends (a geofence is surer than GPS)
    both = _scope(snapshot, Event("location", {"latitude": 35.0, "longitude": -40.0, "place_id": "store_sol"}))
    assert _eval("nearest_km('store')", both) == 0
    assert _eval("nearest_km('branch')", both) > 3000

    unknown = _scope(snapshot, Event("location", {"accuracy_m": 20.0, "place_id": "store-42"}))  # not in the set
    assert _eval("has_position", unknown) is False
    assert _eval("nearest_km('store')", unknown) == 99999


def test_missing_coordinates_are_no_position_and_an_explicit_zero_is_one():
    snapshot = _snapshot()
    missing = _scope(snapshot, Event("location", {"accuracy_m": 20.0, "place_id": ""}))
    zero = _scope(snapshot, Event("location", {"latitude": 0.0, "longitude": 0.0, "place_id": ""}))

    assert _eval("has_position", missing) is False
    assert _eval("event.latitude", missing) == 0.0  # still a number, as rules are type-checked
    assert (_eval("nearest_km('store')", missing), _eval("nearest_name('store')", missing)) == (99999, "")
    assert _eval("has_position", zero) is True
    assert 4000 < _eval("nearest_km('store')", zero) < 5000  # the Gulf of Guinea is a place too
    assert _eval("has_position", _scope(snapshot, Event("app_open", {"screen": "home"})), "app_open") is False


# --- holidays ----------------------------------------------------------------------------------------------


def test_holidays_are_read_in_the_customers_local_date():
    snapshot = _snapshot("settings:\n  holidays: {countries: [ES, US]}\n")
    christmas_eve_utc = "2026-12-24T23:30:00+00:00"  # already 25 December in Madrid, not yet in New York

    madrid = _scope(snapshot, Event("app_open", {}), christmas_eve_utc, "Europe/Madrid")
    new_york = _scope(snapshot, Event("app_open", {}), christmas_eve_utc, "America/New_York")
    assert (madrid["is_holiday"], madrid["days_until_holiday"]) == (True, 0.0)
    assert (new_york["is_holiday"], new_york["days_until_holiday"]) == (False, 1.0)  # tomorrow

    # a zone of no country reads the first country listed; a country the set does not name has no holidays
    utc = _scope(snapshot, Event("app_open", {}), christmas_eve_utc, "UTC")
    berlin = _scope(snapshot, Event("app_open", {}), christmas_eve_utc, "Europe/Berlin")
    assert (utc["is_holiday"], utc["days_until_holiday"]) == (False, 1.0)  # 24 December in Spain (UTC's date)
    assert (berlin["is_holiday"], berlin["days_until_holiday"]) == (False, 9999.0)
    # the profile attribute country wins over the zone
    spaniard_in_berlin = _scope(snapshot, Event("app_open", {}), christmas_eve_utc, "Europe/Berlin", country="es")
    assert spaniard_in_berlin["is_holiday"] is True


def test_days_until_holiday_crosses_the_year_end_and_counts_subdivisions():
    calendar = HolidayCalendar(("ES",))
    assert calendar.day("ES", _day("2026-12-26")) == (False, 6.0)  # New Year's Day 2027
    assert calendar.day("ES", _day("2026-12-31")) == (False, 1.0)
    assert calendar.day("ES", _day("2027-01-01")) == (True, 0.0)
    # Madrid's own day (2 May 2026, a Saturday) counts only with the subdivision
    assert calendar.day("ES", _day("2026-05-02")) == (False, 105.0)  # 15 August is the next national one
    assert HolidayCalendar(("ES",), {"ES": "MD"}).day("ES", _day("2026-05-02")) == (True, 0.0)


def test_without_holidays_in_the_settings_rules_read_no_holiday():
    scope = _scope(_snapshot(), Event("app_open", {}), "2026-12-25T12:00:00+00:00")
    assert (scope["is_holiday"], scope["days_until_holiday"]) == (False, 9999.0)


def test_the_zone_table_gives_a_zones_country():
    assert (zone_country("Europe/Berlin"), zone_country("Asia/Calcutta"), zone_country("Etc/GMT-3")) == (
        "DE", "IN", None)


# --- payday ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payday", "today", "days"), [
    ("25", "2026-06-20", 5.0),
    ("25", "2026-06-25", 0.0),
    ("1", "2026-01-30", 2.0),  # across the month end
    ("5", "2026-12-28", 8.0),  # across the year end
    ("31", "2026-02-20", 8.0),  # the last day of a shorter month: 28 February
    ("30", "2028-02-29", 0.0),  # a leap year's last day
    ("15", "2026-06-20", 25.0),  # next month's
    ("", "2026-06-20", 9999.0),
    ("0", "2026-06-20", 9999.0),
    ("32", "2026-06-20", 9999.0),
])
def test_days_until_payday(payday, today, days):
    assert days_until_payday(payday, _day(today)) == days


def test_days_until_payday_is_read_in_the_customers_local_date():
    snapshot = _snapshot()
    # 23:30 UTC on 24 June: already the 25th (payday) in Madrid, still the 24th in UTC
    assert _scope(snapshot, Event("app_open", {}), "2026-06-24T23:30:00+00:00", payday="25")["days_until_payday"] == 0
    assert _scope(snapshot, Event("app_open", {}), "2026-06-24T23:30:00+00:00", "UTC", payday="25")[
        "days_until_payday"] == 1
    assert _scope(snapshot, Event("app_open", {}))["days_until_payday"] == 9999  # no payday on file


@pytest.mark.parametrize("payday", ["0", "32", "last", "²", "-1", "12.5"])
def test_a_profile_with_a_payday_that_is_no_day_of_the_month_is_refused(payday):
    with pytest.raises(ValidationError, match=r"profile.attributes\['payday'\]: must be a day of the month from 1"):
        check_profile(CustomerProfile("c1", attributes={"payday": payday}))
    assert check_profile(CustomerProfile("c1", attributes={"payday": "28"})).attributes["payday"] == "28"


# --- rules and validation ----------------------------------------------------------------------------------


def test_calendar_and_position_names_are_typed_for_rules():
    compile_expression("is_holiday or days_until_holiday <= 2 or days_until_payday <= 5 or not has_position")
    with pytest.raises(ExpressionError, match="compares a number with text"):
        compile_expression("days_until_payday == 'soon'")
    with pytest.raises(ExpressionError, match="compares a number with text"):
        compile_expression("days_until_holiday < 'x'")


def _issues(settings: str) -> list[str]:
    files = {"channels.yaml": CHANNELS, "offers.yaml": OFFER, "places.yaml": PLACES, "settings.yaml": settings}
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(i) for i in caught.value.issues]


@pytest.mark.parametrize(("settings", "issue"), [
    ("settings:\n  holidays:\n    countries: [ES, XX]\n",
     "settings.yaml:3:21: settings.holidays.countries[1]: unknown country 'XX': an ISO 3166-1 two-letter code"),
    ("settings:\n  holidays:\n    countries: [es]\n", "settings.yaml:3:17: settings.holidays.countries[0]: unknown"
                                                      " country 'es'"),
    ("settings:\n  holidays:\n    countries: [ESP]\n", "settings.yaml:3:17: settings.holidays.countries[0]: unknown"
                                                       " country 'ESP'"),
    ("settings:\n  holidays:\n    countries: [ES, NO]\n", "settings.yaml:3:21: settings.holidays.countries[1]: False"
                                                          " is not a country code (YAML reads NO unquoted as false"),
    ("settings:\n  holidays:\n    countries: [ES, ES]\n", "settings.yaml:3:21: settings.holidays.countries[1]: ES is"
                                                          " listed twice"),
    ("settings:\n  holidays:\n    countries: []\n", "settings.yaml:3:16: settings.holidays.countries: expected a list"
                                                    " of country codes"),
    ("settings:\n  holidays: {country: ES}\n", "settings.yaml:2:14: settings.holidays: unknown field 'country'"),
    ("settings:\n  holidays:\n    countries: [ES]\n    subdivisions: {ES: XX}\n",
     "settings.yaml:4:24: settings.holidays.subdivisions.ES: unknown subdivision 'XX' of ES (known: AN, AR,"),
    ("settings:\n  holidays:\n    countries: [ES]\n    subdivisions: {DE: BE}\n",
     "settings.yaml:4:20: settings.holidays.subdivisions.DE: 'DE' is not one of settings.holidays.countries"),
])
def test_holiday_settings_mistakes_are_named_with_file_and_line(settings, issue):
    issues = _issues(settings)
    assert any(i.startswith(issue) for i in issues), issues


def test_holiday_settings_are_read_and_quoted_no_is_norway():
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER, "places.yaml": PLACES,
                                 "settings.yaml": "settings:\n  holidays:\n    countries: [ES, 'NO']\n"
                                                  "    subdivisions: {ES: MD}\n"})
    assert policy.settings.holiday_countries == ("ES", "NO")
    assert policy.settings.holiday_subdivisions == {"ES": "MD"}


def test_the_sample_set_uses_distance_holidays_and_payday():
    policy = load_policy_dir(SAMPLE_POLICIES)
    offers = {o.id: o for o in policy.offers}
    assert "ES" in policy.settings.holiday_countries
    assert "nearest_km('branch') <= 0.3" in offers["branch_appointment"].eligible_when.source
    assert "not is_holiday" in offers["branch_appointment"].eligible_when.source
    for offer in ("click_collect_cart", "instore_coupon"):
        assert "nearest_km('store') <= 0.3" in offers[offer].eligible_when.source
    assert "days_until_payday" in offers["micro_loan"].value_expression.source
    assert "days_until_holiday" in offers["micro_loan"].value_expression.source


def test_policy_diff_names_holiday_changes():
    from nba_service.policies.diff import diff_policies
    from nba_service.policies.parser import read_policy_dir

    old = read_policy_dir(SAMPLE_POLICIES)
    new = {**old, "settings.yaml": old["settings.yaml"].replace(
        "countries: [ES, DE, FR, GB, US, MX, AU, SG]", "countries: [ES, DE, FR, GB, US, MX, AU]\n"
                                                       "    subdivisions: {ES: MD}")}
    assert diff_policies(parse_policy_files(old), parse_policy_files(new)).render() == [
        "settings:", "  settings.holidays.countries: - SG", '  settings.holidays.subdivisions.ES: + "MD"',
        "2 settings changed"]
