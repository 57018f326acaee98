"""Policy validation: every problem named with its file, line and column."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
from tests.conftest import SAMPLE_POLICIES

CHANNELS = textwrap.dedent("""\
    channels:
      - id: push
        quiet_hours: {start: "21:00", end: "08:00"}
      - id: atm_screen
        needs_reachable: false
        default_consent: true
        available_when: "event.type == 'atm_decline'"
    """)

OFFER = textwrap.dedent("""\
    offers:
      - id: micro_loan
        name: Instant micro-loan
        category: lending
        events: [atm_decline]
        eligible_when: "event.shortfall > 0 and profile.segment != 'student'"
        value: 15
        prior: 0.1
        channels: [push, atm_screen]
        variables:
          loan_amount: "round_up(event.shortfall, 50)"
        content:
          push: "{first_name}, {loan_amount} {currency} in one tap."
          default: "An instant loan of {loan_amount} {currency}."
        limits:
          - {max: 2, per: 30d}
    """)


def _issues(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(i) for i in caught.value.issues]


def test_sample_policy_set_is_valid_and_covers_the_scenarios():
    policy = load_policy_dir(SAMPLE_POLICIES)
    assert len(policy.offers) >= 20
    assert len(policy.channels) >= 5
    events = {e for offer in policy.offers for e in offer.events}
    assert {"atm_decline", "location", "cart_abandon", "agent_contact", "app_open", "page_view"} <= events
    categories = {o.category for o in policy.offers}
    assert "lending" in categories and any(c.startswith("retail") for c in categories)


def test_a_minimal_set_compiles():
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER})
    (offer,) = policy.offers
    assert offer.channels == ("push", "atm_screen")
    assert offer.limits[0].max == 2 and offer.limits[0].per_seconds == 30 * 86400
    assert policy.channels[0].quiet_hours == (21 * 60, 8 * 60)


def test_unknown_event_field_is_reported_at_its_line_and_column():
    broken = OFFER.replace("event.shortfall > 0", "event.shortfal > 0")
    (issue,) = _issues({"channels.yaml": CHANNELS, "offers.yaml": broken})
    assert issue.startswith("offers.yaml:6:")
    line = broken.splitlines()[5]
    column = int(issue.split(":")[2])
    assert line[column - 1:].startswith("event.shortfal")
    assert "unknown field event.shortfal" in issue


@pytest.mark.parametrize(("old", "new", "where", "message"), [
    ("prior: 0.1", "prior: 1.5", "offers.yaml:8:", "prior: 1.5 must be < 1"),
    ("value: 15", "value: -3", "offers.yaml:7:", "value: -3 must be > 0"),
    ("    limits:", "    colour: red\n    limits:", "offers.yaml:15:", "unknown field 'colour'"),
    ("[push, atm_screen]", "[push, fax]", "offers.yaml:9:", "unknown channel 'fax'"),
    ("[atm_decline]", "[atm_declined]", "offers.yaml:5:", "unknown event type 'atm_declined'"),
    ("per: 30d", "per: 30 days", "offers.yaml:16:", "is not a duration"),
    ("{currency} in one tap", "{currncy} in one tap", "offers.yaml:13:", "unknown template field {currncy}"),
    ("\"event.shortfall > 0", "\"__import__('os').system('x') or event.shortfall > 0", "offers.yaml:6:",
     "unknown function"),
    ("\"event.shortfall > 0", "\"event.shortfall.__class__ or event.shortfall > 0", "offers.yaml:6:",
     "only event.<field> and profile.<field> may use a dot"),
    ("\"event.shortfall > 0", "\"(lambda: 1)() or event.shortfall > 0", "offers.yaml:6:", "unknown function"),
    ("\"event.shortfall > 0", "\"event.shortfall >> 0", "offers.yaml:6:", "rshift is not allowed"),
    ("and profile.segment", "and and profile.segment", "offers.yaml:6:", "syntax error"),
])
def test_offer_mistakes_are_named_with_file_and_line(old, new, where, message):
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": OFFER.replace(old, new)})
    assert any(i.startswith(where) and message in i for i in issues), issues


def test_every_problem_is_reported_at_once():
    broken = OFFER.replace("prior: 0.1", "prior: 2").replace("value: 15", "value: zero")
    duplicate = broken + broken.split("offers:\n", 1)[1]
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": duplicate})
    assert len([i for i in issues if "prior" in i]) == 2
    assert any(".value: unknown name 'zero'" in i for i in issues)  # text is read as a value expression
    assert any("duplicate offer id 'micro_loan'" in i for i in issues)


def test_window_ending_before_it_starts_is_refused():
    text = OFFER.replace("    limits:", "    valid_from: 2026-06-01\n    valid_until: 2026-05-01\n    limits:")
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": text})
    assert any("offers.yaml:16:" in i and "ends before it starts" in i for i in issues)


def test_channel_without_content_is_refused():
    text = OFFER.replace('      default: "An instant loan of {loan_amount} {currency}."\n', "")
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": text})
    assert any("no text for channel 'atm_screen'" in i for i in issues)


def test_yaml_syntax_error_names_the_line():
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": OFFER.replace("name: Instant", "name: [Instant")})
    assert issues[0].startswith("offers.yaml:")
    assert "YAML" in issues[0]


def test_settings_must_reference_declared_things():
    settings = ("settings:\n  contact_limits:\n    - {channel: pigeon, max: 1, per: 1d}\n"
                "    - {category: bonds, max: 1, per: 7d}\n  levers:\n    categories: {crypto: 2}\n")
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": OFFER, "settings.yaml": settings})
    assert any("settings.yaml:3:" in i and "unknown channel 'pigeon'" in i for i in issues)
    assert any("settings.yaml:4:" in i and "no offer has category 'bonds'" in i for i in issues)
    assert any("settings.yaml:6:" in i and "no offer has category 'crypto'" in i for i in issues)


def test_quiet_hours_accept_unquoted_times():
    policy = parse_policy_files({"channels.yaml": CHANNELS.replace('"21:00"', "21:30"), "offers.yaml": OFFER})
    assert policy.channels[0].quiet_hours == (21 * 60 + 30, 8 * 60)


def test_directory_errors(tmp_path: pathlib.Path):
    with pytest.raises(PolicyValidationError, match="no \\*.yaml policy files"):
        load_policy_dir(tmp_path)
    with pytest.raises(PolicyValidationError, match="not a directory"):
        load_policy_dir(tmp_path / "missing")


@pytest.mark.parametrize(("old", "new", "where", "message"), [
    ("{currency} in one tap", "{currency:>5} in one tap", "offers.yaml:13:", "has a format"),
    ("value: 15", "value: 15\n    value: 16", "offers.yaml:8:", "duplicate key 'value'"),
    ("    limits:", "    valid_from: 2026-02-30\n    limits:", "offers.yaml:15:", "'2026-02-30' is not a valid value"),
    ('push: "{first_name}, {loan_amount} {currency} in one tap."', "push: {first_name}", "offers.yaml:13:",
     "text starting with { must be quoted"),
    ("\"event.shortfall > 0", "\"attr('x') is None or event.shortfall > 0", "offers.yaml:6:",
     "compare with == None"),
    ("\"event.shortfall > 0", "\"attr('income') >= 35000 and event.shortfall > 0", "offers.yaml:6:",
     "attr('income') is text (or None), not a number: compare num(attr('income'), DEFAULT)"),
    ("\"event.shortfall > 0", "\"event.shortfall > '0'", "offers.yaml:6:",
     "compares a number with text (event.shortfall and '0')"),
])
def test_more_mistakes_get_plain_messages(old, new, where, message):
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": OFFER.replace(old, new)})
    assert any(i.startswith(where) and message in i for i in issues), issues
    assert not any("_Node" in i for i in issues)


PLACES = textwrap.dedent("""\
    places:
      - {id: shop_sol, name: Tienda Sol, kind: partner_shop, latitude: 40.4169, longitude: -3.7035}
      - {id: shop_far, name: Far Away Shop, kind: partner_shop, latitude: 41.3851, longitude: 2.1734}
    """)
SETTINGS = textwrap.dedent("""\
    settings:
      conditions:
        good_credit: "num(attr('credit_score'), 650) >= 620"
        near_partner: "nearest_km('partner_shop') <= 2"
        lending_ready: "good_credit and profile.known"
    """)


def test_named_conditions_and_places_compile_into_rules():
    offer = OFFER.replace("event.shortfall > 0 and profile.segment != 'student'",
                          "lending_ready and near_partner and event.shortfall > 0").replace(
        "    variables:\n", "    variables:\n      shop: \"nearest_name('partner_shop')\"\n").replace(
        '{loan_amount} {currency} in one tap.', '{loan_amount} {currency} in one tap, or pay by card at {shop}.')
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": offer, "places.yaml": PLACES,
                                 "settings.yaml": SETTINGS})
    assert [p.id for p in policy.places] == ["shop_sol", "shop_far"]
    assert set(policy.conditions) == {"good_credit", "near_partner", "lending_ready"}
    rule = policy.offers[0].eligible_when
    assert rule.source.startswith("lending_ready and near_partner")
    assert rule.names == {"event_shortfall", "profile_known"}  # the conditions were inlined
    assert "shop" in policy.offers[0].variables


@pytest.mark.parametrize(("settings", "offer_rule", "message"), [
    ('      loop_a: "loop_b"\n      loop_b: "loop_a"\n', "loop_a", "refers to itself"),
    ('      bad: "event.amount >"\n', "event.shortfall > 0", "settings.conditions.bad: syntax error"),
    ('      cash: "event.cart_value > 3"\n', "cash", "in condition 'cash': unknown field event.cart_value"),
    ('', "nearest_km('atm_partner') < 2", "needs a declared place kind"),
    ('      rich: "profile.known and attr(\'income\') > 30000"\n', "rich",
     "settings.conditions.rich: attr('income') is text (or None), not a number"),
])
def test_condition_and_place_mistakes(settings, offer_rule, message):
    settings_text = "settings:\n  conditions:\n" + settings if settings else "settings: {}\n"
    offer = OFFER.replace("event.shortfall > 0 and profile.segment != 'student'", offer_rule)
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": offer, "places.yaml": PLACES,
                      "settings.yaml": settings_text})
    assert any(message in i for i in issues), issues


@pytest.mark.parametrize(("file", "text", "where", "message"), [
    ("settings.yaml", "settings:\n  levers:\n    categories:\n      lending: {boost: 2}\n", "settings.yaml:4:",
     "settings.levers.categories.lending: expected a number, got a mapping"),
    ("offers.yaml", OFFER.replace('loan_amount: "round_up(event.shortfall, 50)"', "loan_amount: [event.shortfall, 50]"),
     "offers.yaml:11:", "offers[0] (micro_loan).variables.loan_amount: expected an expression in quotes, got a list"),
    ("offers.yaml", OFFER.replace("{max: 2, per: 30d}", "{max: [2], per: 30d}"), "offers.yaml:16:",
     "offers[0] (micro_loan).limits[0].max: expected a whole number >= 0, got a list"),
    ("offers.yaml", OFFER.replace("    limits:", "    valid_from: {day: 1}\n    limits:"), "offers.yaml:15:",
     "offers[0] (micro_loan).valid_from: a mapping is not an ISO date or date-time"),
], ids=["number", "expression", "limit max", "date"])
def test_a_mapping_or_list_where_a_value_belongs_is_named_by_its_kind(file, text, where, message):
    files = {"channels.yaml": CHANNELS, "offers.yaml": OFFER, file: text}
    issues = _issues(files)
    assert any(i.startswith(where) and message in i for i in issues), issues
    assert not any("_Node" in i or "object at 0x" in i for i in issues), issues
