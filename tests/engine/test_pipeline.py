"""The engine alone: plain data in, a decision out; no network."""

from __future__ import annotations

import dataclasses
import datetime
import textwrap
import zoneinfo

import numpy as np
import pytest

from nba_service.domain import ContactRecord, CustomerContext, CustomerProfile, Event
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy, ThompsonSampling
from nba_service.learning.models import ModelBank
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot

POLICY = {
    "settings.yaml": textwrap.dedent("""\
        settings:
          no_action_threshold: 0.5
          preferred_channel_boost: 1.5
          levers: {global: 1.0, categories: {lending: 1.0, cards: 1.0}}
          contact_limits:
            - {max: 5, per: 1d}
            - {channel: sms, max: 1, per: 1d}
            - {category: cards, max: 1, per: 7d}
        """),
    "channels.yaml": textwrap.dedent("""\
        channels:
          - id: push
            quiet_hours: {start: "21:00", end: "08:00"}
          - id: sms
          - id: atm_screen
            needs_reachable: false
            default_consent: true
            available_when: "event.type == 'atm_decline'"
        """),
    "offers.yaml": textwrap.dedent("""\
        offers:
          - id: loan
            name: Instant loan
            category: lending
            events: [atm_decline]
            eligible_when: "event.shortfall > 0 and profile.segment != 'student'"
            value: 20
            prior: 0.2
            channels: [push, sms, atm_screen]
            variables: {loan_amount: "round_up(event.shortfall, 50)"}
            content:
              push: "{first_name}: {loan_amount} {currency} now"
              default: "Loan of {loan_amount} {currency}"
            limits:
              - {max: 2, per: 30d}
              - {channel: push, max: 1, per: 1d}
          - id: card
            name: Card upgrade
            category: cards
            events: [atm_decline]
            eligible_when: "num(attr('income'), 0) > 30000"
            value: 10
            prior: 0.2
            channels: [push, sms]
            content: {default: "Upgrade your card"}
          - id: tip
            name: Budget tip
            category: service
            events: [atm_decline]
            value: 1
            prior: 0.1
            channels: [atm_screen]
            content: {default: "Tip"}
        """),
}

NOON_UTC = datetime.datetime(2026, 6, 10, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
DECLINE = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": "a",
                                "latitude": 0.0, "longitude": 0.0, "shortfall": 100.0})


@pytest.fixture(scope="module")
def snapshot() -> PolicySnapshot:
    return PolicySnapshot.compile(parse_policy_files(POLICY), "7")


def engine(snapshot: PolicySnapshot, epsilon: float = 0.0, seed: int = 3) -> DecisionEngine:
    bank = ModelBank()
    bank.bind(snapshot)
    return DecisionEngine(bank, EpsilonGreedy(epsilon, seed))


def customer(timezone: str = "UTC", consent: bool = True, preferred: str = "", segment: str = "mass",
             **attributes: str) -> CustomerProfile:
    return CustomerProfile("c1", "Ana", segment, preferred, frozenset({"push", "sms"}),
                           {"push": consent, "sms": consent, "atm_screen": consent}, timezone,
                           {"income": "50000", **attributes})


def decide(snapshot, profile, now=NOON_UTC, contacts=(), epsilon=0.0, event=DECLINE):
    ctx = CustomerContext(profile, now=now, origin_channel="atm", contacts=tuple(contacts))
    return engine(snapshot, epsilon).decide(snapshot, ctx, event)


def test_best_offer_wins_with_content_rendered_for_its_channel(snapshot):
    decision = decide(snapshot, customer())
    # P=0.2 everywhere: loan 20 beats card 10 and tip 1
    assert (decision.offer_id, decision.channel) == ("loan", "push")
    assert decision.score == pytest.approx(0.2 * 20)
    assert decision.content == "Ana: 100 EUR now"
    assert [a.offer_id for a in decision.alternatives] == ["card"]  # tip: 0.1 x 1 is below the threshold
    assert any(r.offer_id == "tip" and r.code == "below_threshold" for r in decision.reasons)
    assert decision.policy_version == "7"


def test_preferred_channel_boost(snapshot):
    decision = decide(snapshot, customer(preferred="sms"))
    assert decision.channel == "sms"
    assert decision.score == pytest.approx(0.2 * 20 * 1.5)


def test_eligibility_rule_filters_with_its_source_as_reason(snapshot):
    decision = decide(snapshot, customer(segment="student"))
    assert decision.offer_id == "card" or decision.no_action
    reason = next(r for r in decision.reasons if r.offer_id == "loan")
    assert reason.code == "not_eligible"
    assert "student" in reason.detail


def test_no_consent_means_no_action(snapshot):
    decision = decide(snapshot, customer(consent=False))
    assert decision.no_action
    assert decision.propensity == 1.0
    assert all("no consent" in r.detail for r in decision.reasons if r.code == "no_channel")


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Tokyo", "America/Los_Angeles", "Asia/Kolkata"])
def test_quiet_hours_follow_the_customers_timezone(snapshot, timezone):
    # 12:00 UTC is 12:00, 21:00 (quiet), 05:00 (quiet) and 17:30 local
    local = datetime.datetime.fromtimestamp(NOON_UTC, zoneinfo.ZoneInfo(timezone))
    expected = not (local.hour >= 21 or local.hour < 8)
    decision = decide(snapshot, customer(timezone=timezone))
    assert (decision.channel == "push") == expected
    if not expected:
        assert decision.channel == "sms"


def test_quiet_hours_across_a_daylight_saving_change(snapshot):
    madrid = zoneinfo.ZoneInfo("Europe/Madrid")
    # 07:30 UTC is 08:30 in winter (CET, push allowed) but 09:30 in summer; 06:30 UTC is
    # 07:30 local in winter (quiet) and 08:30 local in summer (allowed).
    winter = datetime.datetime(2026, 3, 28, 6, 30, tzinfo=datetime.timezone.utc).timestamp()  # day before the change
    summer = datetime.datetime(2026, 3, 29, 6, 30, tzinfo=datetime.timezone.utc).timestamp()  # day of the change
    assert datetime.datetime.fromtimestamp(winter, madrid).hour == 7
    assert datetime.datetime.fromtimestamp(summer, madrid).hour == 8
    assert decide(snapshot, customer(timezone="Europe/Madrid"), now=winter).channel == "sms"
    assert decide(snapshot, customer(timezone="Europe/Madrid"), now=summer).channel == "push"


def _contacts(*entries: tuple[float, str, str, str]) -> list[ContactRecord]:
    return [ContactRecord(NOON_UTC - age, offer, channel, category) for age, offer, channel, category in entries]


def test_offer_cap_over_a_rolling_window(snapshot):
    # the loan's own limit (2 per 30d) counts and closes its outbound channels (push, sms) only:
    # reached, the loan is still shown on the ATM screen
    twice = _contacts((3 * 86400, "loan", "sms", "lending"), (10 * 86400, "loan", "sms", "lending"))
    decision = decide(snapshot, customer(), contacts=twice)
    assert (decision.offer_id, decision.channel) == ("loan", "atm_screen")
    assert _channel_reasons(decision)["push"] == ("frequency_cap", "at most 2 per 30d")
    # one of the two is older than 30 days: the loan is allowed again on push
    old = _contacts((3 * 86400, "loan", "sms", "lending"), (31 * 86400, "loan", "sms", "lending"))
    again = decide(snapshot, customer(), contacts=old)
    assert (again.offer_id, again.channel) == ("loan", "push")
    # counting every channel (direction: any), the limit takes the whole offer out
    policy = {**POLICY, "offers.yaml": POLICY["offers.yaml"].replace(
        "- {max: 2, per: 30d}", "- {max: 2, per: 30d, direction: any}")}
    every = PolicySnapshot.compile(parse_policy_files(policy), "8")
    screens = _contacts((3 * 86400, "loan", "atm_screen", "lending"), (10 * 86400, "loan", "atm_screen", "lending"))
    decision = decide(every, customer(), contacts=screens)
    assert decision.offer_id == "card"
    reason = next(r for r in decision.reasons if r.offer_id == "loan")
    assert (reason.code, reason.detail) == ("frequency_cap", "at most 2 on any channel per 30d")


def test_offer_channel_cap_moves_the_offer_to_another_channel(snapshot):
    decision = decide(snapshot, customer(), contacts=_contacts((3600, "loan", "push", "lending")))
    assert (decision.offer_id, decision.channel) == ("loan", "sms")


def test_channel_cap_across_offers(snapshot):
    decision = decide(snapshot, customer(preferred="sms"), contacts=_contacts((3600, "card", "sms", "cards")))
    assert decision.channel != "sms"


def test_category_cap(snapshot):
    decision = decide(snapshot, customer(segment="student", income="50000"),
                      contacts=_contacts((2 * 86400, "card", "push", "cards")))
    reason = next(r for r in decision.reasons if r.offer_id == "card")
    assert (reason.code, reason.detail) == ("frequency_cap", "at most 1 in cards per 7d")


def test_overall_cap_closes_the_outbound_channels(snapshot):
    # at most 5 a day counts (and closes) the outbound channels only: five ATM screen messages count for nothing
    screens = _contacts(*[(i * 3600 + 60, "tip", "atm_screen", "service") for i in range(5)])
    assert decide(snapshot, customer(), contacts=screens).channel == "push"
    # five sent messages reach it: push and sms are closed, the ATM screen is not
    sent = _contacts(*[(i * 3600 + 60, "card", "push", "cards") for i in range(5)])
    decision = decide(snapshot, customer(), contacts=sent)
    assert (decision.offer_id, decision.channel) == ("loan", "atm_screen")
    assert _channel_reasons(decision)["push"] == ("frequency_cap", "at most 5 per 1d")


def test_overall_cap_of_every_channel_means_no_action(snapshot):
    policy = {**POLICY, "settings.yaml": POLICY["settings.yaml"].replace(
        "- {max: 5, per: 1d}", "- {max: 5, per: 1d, direction: any}")}
    every = PolicySnapshot.compile(parse_policy_files(policy), "8")
    five = _contacts(*[(i * 3600 + 60, "tip", "atm_screen", "service") for i in range(5)])
    decision = decide(every, customer(), contacts=five)
    assert decision.no_action
    assert (decision.reasons[-1].code, decision.reasons[-1].detail) == ("frequency_cap", "at most 5 on any channel per 1d")


def test_a_failing_rule_filters_only_its_offer(snapshot):
    # attr('income') is "lots": num() falls back to 0 so the card is simply not eligible,
    # while round_up(x, 0) raises at run time (a step of 0).
    decision = decide(snapshot, customer(income="lots"))
    assert decision.offer_id == "loan"
    broken = PolicySnapshot.compile(parse_policy_files({
        **POLICY, "offers.yaml": POLICY["offers.yaml"].replace("num(attr('income'), 0) > 30000", "round_up(num(attr('income'), 0), 0) > 3")}),
        "8")
    decision = decide(broken, customer())
    assert decision.offer_id == "loan"
    reason = next(r for r in decision.reasons if r.offer_id == "card")
    assert reason.code == "rule_error"


def test_offer_outside_its_validity_window_is_skipped():
    policy = {**POLICY, "offers.yaml": POLICY["offers.yaml"].replace(
        "    value: 20\n", "    value: 20\n    valid_until: 2026-06-01\n")}
    snap = PolicySnapshot.compile(parse_policy_files(policy), "9")
    decision = decide(snap, customer())
    assert decision.offer_id == "card"
    assert any(r.offer_id == "loan" and r.code == "not_live" for r in decision.reasons)


def test_logged_propensity_matches_the_observed_frequency(snapshot):
    """Over many draws each option is chosen as often as its logged propensity says."""
    eng = engine(snapshot, epsilon=0.3, seed=11)
    ctx = CustomerContext(customer(), now=NOON_UTC, origin_channel="atm")
    draws = 6000
    counts: dict[str, int] = {}
    logged: dict[str, float] = {}
    for _ in range(draws):
        d = eng.decide(snapshot, ctx, DECLINE)
        counts[d.offer_id] = counts.get(d.offer_id, 0) + 1
        logged.setdefault(d.offer_id, d.propensity)
        assert logged[d.offer_id] == d.propensity
    # two options above the threshold: loan (greedy) and card
    assert set(counts) == {"loan", "card"}
    assert logged["loan"] == pytest.approx(0.7 + 0.15)
    assert logged["card"] == pytest.approx(0.15)
    for offer, p in logged.items():
        standard_error = np.sqrt(p * (1 - p) / draws)
        assert abs(counts[offer] / draws - p) < 4 * standard_error


def test_no_candidates_for_an_event_type(snapshot):
    decision = decide(snapshot, customer(), event=Event("app_open", {"screen": "home"}))
    assert decision.no_action
    assert decision.reasons[0].code == "no_candidates"


def test_a_failing_channel_condition_closes_the_channel():
    policy = {**POLICY, "channels.yaml": POLICY["channels.yaml"].replace(
        "available_when: \"event.type == 'atm_decline'\"", "available_when: \"round_up(1, 0) > 3\"")}
    snap = PolicySnapshot.compile(parse_policy_files(policy), "10")
    decision = decide(snap, customer(consent=True, segment="student", income="0"))
    # only "tip" remains eligible and it can only go to the atm_screen, whose condition raises
    assert decision.no_action
    assert any(r.offer_id == "tip" and "atm_screen" in r.detail for r in decision.reasons)


def test_truthy_rules_count_as_eligible_and_zero_levers_pause():
    policy = {**POLICY, "offers.yaml": POLICY["offers.yaml"].replace(
        "eligible_when: \"num(attr('income'), 0) > 30000\"", "eligible_when: \"attr('income')\"").replace(
        "    value: 20\n", "    value: 20\n    lever: 0\n")}
    snap = PolicySnapshot.compile(parse_policy_files({**policy, "settings.yaml": POLICY["settings.yaml"].replace(
        "no_action_threshold: 0.5", "no_action_threshold: 0")}), "11")
    decision = decide(snap, customer())
    assert decision.offer_id == "card"  # the loan's lever of 0 keeps it from being sent at all
    assert any(r.offer_id == "loan" and r.code == "below_threshold" for r in decision.reasons)


def test_places_and_calendar_facts_in_rules_and_content():
    policy = {
        **POLICY,
        "places.yaml": "places:\n"
                       "  - {id: sol, name: Tienda Sol, kind: partner_shop, latitude: 40.4169, longitude: -3.7035}\n"
                       "  - {id: bcn, name: Tienda Mar, kind: partner_shop, latitude: 41.3851, longitude: 2.1734}\n",
        "offers.yaml": POLICY["offers.yaml"].replace(
            "eligible_when: \"event.shortfall > 0 and profile.segment != 'student'\"",
            "eligible_when: \"nearest_km('partner_shop') <= 2 and days_until(attr('birthday')) <= 7\"").replace(
            "variables: {loan_amount: \"round_up(event.shortfall, 50)\"}",
            "variables: {loan_amount: \"round_up(event.shortfall, 50)\", shop: \"nearest_name('partner_shop')\"}").replace(
            'push: "{first_name}: {loan_amount} {currency} now"', 'push: "{first_name}: pay at {shop}"'),
    }
    snap = PolicySnapshot.compile(parse_policy_files(policy), "12")
    near_madrid = Event("atm_decline", {**DECLINE.fields, "latitude": 40.4170, "longitude": -3.7040})
    # NOON_UTC is 10 June 2026: a birthday on 14 June is 4 days away, one on 1 June is 356 days away
    decision = decide(snap, customer(birthday="1990-06-14"), event=near_madrid)
    assert (decision.offer_id, decision.content) == ("loan", "Ana: pay at Tienda Sol")
    assert decide(snap, customer(birthday="1990-06-01"), event=near_madrid).offer_id != "loan"
    assert decide(snap, customer(birthday="1990-06-14"), event=DECLINE).offer_id != "loan"  # 0, 0: far from Madrid


def test_costs_and_value_expressions_enter_the_priority():
    policy = {
        **POLICY,
        "channels.yaml": POLICY["channels.yaml"].replace("  - id: sms\n", "  - id: sms\n    cost: 1.0\n"),
        "offers.yaml": POLICY["offers.yaml"].replace(
            "    value: 20\n", "    value: \"event.shortfall * 0.5\"\n    cost: 4\n"),
    }
    snap = PolicySnapshot.compile(parse_policy_files(policy), "13")
    decision = decide(snap, customer(preferred="sms"))  # shortfall 100: V = 50, minus the offer's cost 4
    assert decision.offer_id == "loan"
    # on sms (boosted 1.5 as preferred, but costs 1 more): 0.2 x (50 - 4 - 1) x 1.5 = 13.5 > push 0.2 x 46 = 9.2
    assert (decision.channel, decision.score) == ("sms", pytest.approx(0.2 * 45 * 1.5))
    small = Event("atm_decline", {**DECLINE.fields, "shortfall": 10.0})
    assert decide(snap, customer(), event=small).offer_id == "card"  # V = 5 - 4: the card (10) wins


def test_value_expressions_of_several_offers_and_one_that_fails(caplog):
    policy = {**POLICY, "offers.yaml": POLICY["offers.yaml"]
              .replace("    value: 20\n", "    value: \"1000 / (event.amount - 120)\"\n")
              .replace("    value: 10\n", "    value: \"event.shortfall * 0.3\"\n")}
    snap = PolicySnapshot.compile(parse_policy_files(policy), "14")

    # amount 130: the loan is worth 1000 / 10 = 100, the card 0.3 x 100 = 30
    both = decide(snap, customer(), event=Event("atm_decline", {**DECLINE.fields, "amount": 130.0}))
    assert both.offer_id == "loan" and both.score == pytest.approx(0.2 * 100)
    assert both.alternatives[0].offer_id == "card" and both.alternatives[0].score == pytest.approx(0.2 * 30)

    # amount 120: the loan's expression divides by zero, so the loan is worth 0 (and logged); the card still 30
    failing = decide(snap, customer())
    assert failing.offer_id == "card" and failing.score == pytest.approx(0.2 * 30)
    assert ("loan", "below_threshold") in {(r.offer_id, r.code) for r in failing.reasons}
    assert any("value of loan" in r.getMessage() and "ZeroDivisionError" in r.getMessage() for r in caplog.records)

    # a value that is no number (here a list) is one failure like the others: worth 0, logged, never a crash
    listed = {**POLICY, "offers.yaml": POLICY["offers.yaml"].replace(
        "    value: 20\n", "    value: \"[event.shortfall, 1]\"\n")}  # the only computed value
    snap = PolicySnapshot.compile(parse_policy_files(listed), "16")
    decision = decide(snap, customer())
    assert decision.offer_id == "card" and ("loan", "below_threshold") in {(r.offer_id, r.code) for r in decision.reasons}
    assert any("value of loan" in r.getMessage() for r in caplog.records)


def test_declines_suppress_within_the_offers_window_only():
    policy = {**POLICY, "offers.yaml": POLICY["offers.yaml"].replace(
        "    value: 20\n", "    value: 20\n    suppress_after: {declines: 2, per: 7d}\n")}
    snap = PolicySnapshot.compile(parse_policy_files(policy), "15")
    day = 86400.0

    def with_declines(*ages_in_days: float, offer: str = "loan"):
        ctx = CustomerContext(customer(), now=NOON_UTC, origin_channel="atm",
                              declines=tuple((NOON_UTC - age * day, offer) for age in ages_in_days))
        return engine(snap).decide(snap, ctx, DECLINE)

    assert with_declines(1, 8).offer_id == "loan"  # one of the two is older than 7 days
    assert with_declines(1, 1, offer="card").offer_id == "loan"  # the card's declines do not count for the loan
    assert with_declines(1, 1, offer="gone").offer_id == "loan"  # nor those of an offer no longer in the policy
    suppressed = with_declines(1, 6)
    assert suppressed.offer_id == "card"
    assert ("loan", "suppressed", "declined 2 times in 7d") in {(r.offer_id, r.code, r.detail) for r in suppressed.reasons}


def _channel_reasons(decision) -> dict[str, tuple[str, str]]:
    """channel -> (code, detail) of the decision's channel reasons, all about the chosen offer."""
    found = {r.channel: (r.code, r.detail) for r in decision.reasons if r.channel}
    assert all(r.offer_id == decision.offer_id for r in decision.reasons if r.channel)
    return found


def test_every_other_channel_of_the_chosen_offer_says_why_it_was_not_used(snapshot):
    # 21:00 in Tokyo: push is in quiet hours, the loan goes on sms; atm_screen ties with it and ranks after
    decision = decide(snapshot, customer(timezone="Asia/Tokyo"))
    assert (decision.offer_id, decision.channel) == ("loan", "sms")
    assert [(r.code, r.channel) for r in decision.reasons[:3]] == [
        ("chosen", ""), ("quiet_hours", "push"), ("lower_priority", "atm_screen")]
    assert _channel_reasons(decision) == {
        "push": ("quiet_hours", "quiet hours 21:00-08:00 in Asia/Tokyo, local time 21:00"),
        "atm_screen": ("lower_priority", "priority 4, the same as on sms (ranked first)"),
    }
    # offer reasons are unchanged: no channel, and never about the chosen offer
    assert all(r.offer_id != "loan" for r in decision.reasons if not r.channel and r.code != "chosen")


def test_channel_reasons_name_consent_caps_and_priority(snapshot):
    no_sms = dataclasses.replace(customer(preferred="push"), consents={"push": True, "sms": False})
    pushed_today = _contacts((3600, "loan", "push", "lending"))  # the loan's limit: 1 on push per 1d
    decision = decide(snapshot, no_sms, contacts=pushed_today)
    assert (decision.offer_id, decision.channel) == ("loan", "atm_screen")
    assert _channel_reasons(decision) == {
        "push": ("frequency_cap", "at most 1 on push per 1d"),
        "sms": ("no_consent", "no consent"),
    }
    boosted = decide(snapshot, customer(preferred="sms"))  # sms 0.2 x 20 x 1.5 = 6 beats push and atm_screen (4)
    assert (boosted.offer_id, boosted.channel) == ("loan", "sms")
    assert _channel_reasons(boosted) == {
        "push": ("lower_priority", "priority 4 < 6 on sms"),
        "atm_screen": ("lower_priority", "priority 4 < 6 on sms"),
    }


def test_a_better_channel_left_by_exploration_says_so(snapshot):
    # Thompson sampling picks among arms (epsilon-greedy only among offers): with wide draws it
    # sometimes sends the loan on push although sms, the preferred channel, ranks higher
    bank = ModelBank()
    bank.bind(snapshot)
    eng = DecisionEngine(bank, ThompsonSampling(draws=16, seed=5, scale=10.0))
    ctx = CustomerContext(customer(preferred="sms"), now=NOON_UTC, origin_channel="atm")
    explored = next(d for d in (eng.decide(snapshot, ctx, DECLINE) for _ in range(500))
                    if (d.offer_id, d.channel) == ("loan", "push"))
    assert _channel_reasons(explored)["sms"] == ("exploration", "priority 6, but exploration chose push (4)")


def _madrid(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).replace(tzinfo=zoneinfo.ZoneInfo("Europe/Madrid")).timestamp()


@pytest.fixture(scope="module")
def sample() -> PolicySnapshot:
    from nba_service.policies.parser import load_policy_dir
    from tests.conftest import SAMPLE_POLICIES

    return PolicySnapshot.compile(load_policy_dir(SAMPLE_POLICIES), "1")


@pytest.mark.parametrize(("at", "payday", "winner", "score"), [
    ("2026-06-10T12:00", "", "overdraft_protection", 0.05 * 40),  # micro_loan: 0.12 x 15 = 1.8
    ("2026-06-22T12:00", "25", "micro_loan", 0.12 * 25),  # payday in 3 days: micro_loan is worth 25
    ("2026-06-22T12:00", "28", "overdraft_protection", 0.05 * 40),  # in 6 days
    ("2026-12-30T12:00", "", "micro_loan", 0.12 * 25),  # 2 days before New Year's Day (Spain)
    ("2026-12-29T12:00", "", "overdraft_protection", 0.05 * 40),  # 3 days before
])
def test_the_sample_micro_loan_is_worth_more_before_payday_and_before_a_holiday(sample, at, payday, winner, score):
    attributes = {"credit_score": "720", **({"payday": payday} if payday else {})}
    walk_in = CustomerProfile("c1", "Ana", "mass", "", frozenset(), {}, "Europe/Madrid", attributes)
    event = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": "a",
                                  "latitude": 35.0, "longitude": -40.0, "shortfall": 100.0})  # no partner shop near
    decision = engine(sample).decide(sample, CustomerContext(walk_in, now=_madrid(at), origin_channel="atm"), event)
    assert (decision.offer_id, decision.channel) == (winner, "atm_screen")  # session channel only: no boost
    assert decision.score == pytest.approx(score)


@pytest.mark.parametrize(("at", "place", "eligible"), [
    ("2026-12-09T11:00", {"place_id": "branch_sol"}, True),  # a Wednesday, at the branch
    ("2026-12-09T11:00", {"latitude": 40.4175, "longitude": -3.7030}, True),  # 80 m away
    ("2026-12-09T11:00", {"latitude": 40.4100, "longitude": -3.7150}, False),  # 1.2 km from every branch
    ("2026-12-09T11:00", {"latitude": 35.0, "longitude": -40.0}, False),  # mid-Atlantic
    ("2026-12-09T11:00", {}, False),  # no position at all
    ("2026-12-08T11:00", {"place_id": "branch_sol"}, False),  # a Tuesday, but a public holiday: closed
])
def test_the_sample_branch_appointment_needs_an_open_branch_within_300_m(sample, at, place, eligible):
    family = CustomerProfile("c1", "Ana", "family", "push", frozenset({"push"}), {"push": True}, "Europe/Madrid", {})
    event = Event("location", {"accuracy_m": 500.0, "place_id": "", **place})  # too vague for the in-store coupon
    decision = engine(sample).decide(sample, CustomerContext(family, now=_madrid(at), origin_channel="app"), event)
    if eligible:
        assert decision.offer_id == "branch_appointment"
        assert decision.content.startswith("Ana, you're close to our Branch Puerta del Sol: ")
    else:
        assert decision.offer_id != "branch_appointment"
        assert any(r.offer_id == "branch_appointment" and r.code == "not_eligible" for r in decision.reasons)
