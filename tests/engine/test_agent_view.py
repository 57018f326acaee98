"""Holdings and accepted offers in the engine, likely reasons and agent scripts: plain data in, no network."""

from __future__ import annotations

import datetime
import json
import textwrap
from zoneinfo import ZoneInfo

import pytest

from nba_service.domain import CustomerContext, CustomerProfile, Event, JourneyEntry, OpenJourney
from nba_service.engine.agent_view import agent_scripts, ago_text, likely_reasons
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.learning.models import ModelBank
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot

POLICY = {
    "settings.yaml": "settings: {default_language: en, accepted_window: 60d}\n",
    "channels.yaml": textwrap.dedent("""\
        channels:
          - {id: atm_screen, needs_reachable: false, default_consent: true}
          - {id: agent_desktop, needs_reachable: false, default_consent: true}
        """),
    "offers.yaml": textwrap.dedent("""\
        offers:
          - id: overdraft
            name: Overdraft protection
            category: lending
            product: overdraft_protection
            events: [atm_decline]
            value: 40
            prior: 0.05
            channels: [atm_screen]
            content: {default: "Overdraft"}
          - id: overdraft_followup
            name: Overdraft at the agent desk
            category: lending
            product: overdraft_protection
            accepted_window: 10d
            events: [agent_contact]
            value: 40
            prior: 0.1
            channels: [agent_desktop]
            variables: {limit: "500 if profile.segment == 'vip' else 300"}
            content: {default: "Propose overdraft"}
            agent_script:
              en: "{first_name}, overdraft protection up to {limit} EUR?"
              es: "{first_name}, ¿protección de descubierto hasta {limit} EUR?"
          - id: smaller_withdrawal
            name: Withdraw less
            category: service
            events: [atm_decline]
            value: 2
            prior: 0.3
            channels: [atm_screen]
            content: {default: "Withdraw less"}
          - id: chat
            name: Chat
            category: service
            events: [agent_contact]
            value: 5
            prior: 0.1
            channels: [agent_desktop]
            content: {default: "Chat"}
            agent_script: "Hello {first_name}"
        """),
    "reasons.yaml": textwrap.dedent("""\
        reasons:
          - id: declined
            event: atm_decline
            when: "event.shortfall > 0"
            within: 7d
            score: 100
            half_life: 6h
            text:
              en: "ATM withdrawal declined {ago}, short by {shortfall} {currency}"
              es: "Retirada rechazada {ago}; faltaban {shortfall} {currency}"
          - id: often_declined
            event: atm_decline
            within: 30d
            min_count: 2
            score: 10
            text: "{count} declines in 30 days"
          - id: cart
            event: cart_abandon
            when: "cart_open(event.cart_id)"
            within: 7d
            score: 50
            half_life: 2d
            variables: {items: "event.item_count"}
            text:
              en: "Cart of {cart_value} {currency} ({items} items) abandoned {ago} ({channel})"
              es: "Carrito de {cart_value} {currency} abandonado {ago} ({channel})"
        """),
}
NOW = datetime.datetime(2026, 6, 10, 12, 0, tzinfo=datetime.UTC).timestamp()
DECLINE = Event("atm_decline", {"amount": 100.0, "balance": 20.0, "currency": "EUR", "atm_id": "a", "shortfall": 80.0})
AGENT = Event("agent_contact", {"agent_id": "", "reason": ""})


@pytest.fixture(scope="module")
def snapshot() -> PolicySnapshot:
    return PolicySnapshot.compile(parse_policy_files(POLICY), "1")


def _engine(snapshot: PolicySnapshot) -> DecisionEngine:
    models = ModelBank()
    models.bind(snapshot)
    return DecisionEngine(models, EpsilonGreedy(0.0))


def _entry(ago_seconds: float, event_type: str, origin: str, **fields: object) -> JourneyEntry:
    return JourneyEntry(NOW - ago_seconds, event_type, origin, json.dumps(fields))


def _context(
    *journey: JourneyEntry,
    holdings: frozenset[str] = frozenset(),
    timezone: str = "UTC",
    now: float = NOW,
    **kwargs: object,
) -> CustomerContext:
    profile = CustomerProfile("c1", first_name="Ana", segment="vip", holdings=holdings, timezone=timezone)
    return CustomerContext(profile, now, journey=tuple(sorted(journey, key=lambda e: -e.timestamp)), **kwargs)


def _reasons(decision: object) -> dict[str, tuple[str, str]]:
    return {r.offer_id: (r.code, r.detail) for r in decision.reasons if r.offer_id and not r.channel}  # type: ignore[attr-defined]


# --- holdings and accepted offers ------------------------------------------------------------------------


def test_an_offer_selling_a_held_product_is_left_out_with_already_held(snapshot: PolicySnapshot) -> None:
    offered = _engine(snapshot).decide(snapshot, _context(), DECLINE)
    assert offered.offer_id == "overdraft"

    held = _engine(snapshot).decide(snapshot, _context(holdings=frozenset({"overdraft_protection"})), DECLINE)
    assert held.offer_id == "smaller_withdrawal"
    assert _reasons(held)["overdraft"] == ("already_held", "the customer holds overdraft_protection")


def test_an_acceptance_keeps_every_offer_of_its_product_out_for_each_offers_window(snapshot: PolicySnapshot) -> None:
    """Accepted at the ATM (overdraft) 5 days ago: the agent's offer of the same product (window 10d) and the
    ATM offer (the set's 60d) are both out; 20 days ago, the agent's is back; 70 days ago, both are."""
    engine = _engine(snapshot)

    def decide(days_ago: float, event: Event) -> object:
        ctx = _context(accepted=((NOW - days_ago * 86400, "overdraft", "overdraft_protection"),))
        return engine.decide(snapshot, ctx, event)

    recent = decide(5, AGENT)
    assert recent.offer_id == "chat"
    code, detail = _reasons(recent)["overdraft_followup"]
    assert code == "already_accepted"
    assert detail == "overdraft_protection accepted 5d ago (offer overdraft), within accepted_window 10d"
    assert _reasons(decide(5, DECLINE))["overdraft"][0] == "already_accepted"

    assert decide(20, AGENT).offer_id == "overdraft_followup"
    assert _reasons(decide(20, DECLINE))["overdraft"][0] == "already_accepted"
    assert decide(70, DECLINE).offer_id == "overdraft"


def test_an_acceptance_recorded_without_its_product_counts_by_the_offers_product_now(
    snapshot: PolicySnapshot,
) -> None:
    """An acceptance recorded before the offer declared a product (product "") still counts: the offer's
    product in the live set is the one that matters."""
    ctx = _context(accepted=((NOW - 3600, "overdraft_followup", ""),))
    assert _reasons(_engine(snapshot).decide(snapshot, ctx, DECLINE))["overdraft"][0] == "already_accepted"


# --- likely reasons --------------------------------------------------------------------------------------


def test_likely_reasons_rank_the_recent_decline_above_an_older_cart_with_their_evidence(
    snapshot: PolicySnapshot,
) -> None:
    decline = _entry(12 * 60 + 30, "atm_decline", "atm", amount=265.0, balance=80.0, currency="EUR", shortfall=185.0)
    cart = _entry(26 * 3600, "cart_abandon", "web", cart_id="k1", cart_value=80.0, currency="EUR", item_count=2)
    ctx = _context(decline, cart, open_journeys=_open_cart())

    reasons = likely_reasons(snapshot, ctx)
    assert [r.id for r in reasons] == ["declined", "cart"]
    assert reasons[0].text == "ATM withdrawal declined 12 minutes ago, short by 185 EUR"
    assert reasons[1].text == "Cart of 80 EUR (2 items) abandoned yesterday (web)"
    assert reasons[0].evidence == (decline,)
    assert reasons[1].evidence == (cart,)
    assert reasons[0].score == pytest.approx(100 * 0.5 ** ((12 * 60 + 30) / (6 * 3600)))
    assert reasons[1].score == pytest.approx(50 * 0.5 ** (26 / 48))

    spanish = likely_reasons(snapshot, ctx, "es-MX")
    assert [r.text for r in spanish] == [
        "Retirada rechazada hace 12 minutos; faltaban 185 EUR",
        "Carrito de 80 EUR abandonado ayer (web)",
    ]
    assert [r.text for r in likely_reasons(snapshot, ctx, "de")] == [r.text for r in reasons]  # the default, en


def test_a_reason_needs_its_condition_its_window_and_its_count(snapshot: PolicySnapshot) -> None:
    no_shortfall = _entry(60, "atm_decline", "atm", amount=0.0, balance=80.0, currency="EUR", shortfall=0.0)
    too_old = _entry(8 * 86400, "atm_decline", "atm", amount=90.0, balance=10.0, currency="EUR", shortfall=80.0)
    assert [r.id for r in likely_reasons(snapshot, _context(no_shortfall, too_old))] == ["often_declined"]
    assert likely_reasons(snapshot, _context(no_shortfall)) == ()  # one decline: not "often"
    cart = _entry(3600, "cart_abandon", "web", cart_id="k1", cart_value=80.0, currency="EUR", item_count=2)
    assert likely_reasons(snapshot, _context(cart)) == ()  # the cart was bought since: no open cart
    often = likely_reasons(snapshot, _context(no_shortfall, too_old, _entry(2 * 86400, "atm_decline", "atm")))
    assert [(r.id, r.text, len(r.evidence)) for r in often] == [("often_declined", "3 declines in 30 days", 3)]


def test_ago_reads_like_a_person(snapshot: PolicySnapshot) -> None:
    """NOW is Wednesday 10 June 2026, 12:00 UTC: minutes under an hour, hours the same day, then calendar days."""
    assert [ago_text(NOW - s, NOW, "en") for s in (5, 60, 3599, 3600, 7300, 86400, 3 * 86400)] == [
        "just now",
        "1 minute ago",
        "59 minutes ago",
        "1 hour ago",
        "2 hours ago",
        "yesterday",
        "3 days ago",
    ]
    assert ago_text(NOW - 3 * 86400, NOW, "es") == "hace 3 días"


def _at(day: int, hour: int, minute: int = 0, zone: str = "UTC") -> float:
    """A moment of June 2026 on the clock of ``zone`` (the 10th is a Wednesday)."""
    return datetime.datetime(2026, 6, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.parametrize(
    ("then", "now", "english", "spanish"),
    [
        ((8, 8), (10, 9), "2 days ago", "hace 2 días"),  # Monday 08:00 from Wednesday 09:00: 49 hours
        ((8, 10), (10, 9), "2 days ago", "hace 2 días"),  # 47 hours, still Monday
        ((9, 20), (10, 9), "yesterday", "ayer"),  # Tuesday 20:00: 13 hours, the day before
        ((9, 23), (10, 0, 30), "yesterday", "ayer"),  # 90 minutes, across midnight
        ((9, 23, 50), (10, 0, 10), "20 minutes ago", "hace 20 minutos"),  # under an hour: minutes
        ((10, 0, 5), (10, 23, 55), "23 hours ago", "hace 23 horas"),  # the same day
        ((10, 7), (10, 9), "2 hours ago", "hace 2 horas"),
        ((3, 12), (10, 9), "7 days ago", "hace 7 días"),
    ],
)
def test_ago_counts_calendar_days_in_the_customers_zone(
    then: tuple[int, ...], now: tuple[int, ...], english: str, spanish: str
) -> None:
    for zone in ("UTC", "Europe/Madrid", "America/New_York", "Asia/Tokyo"):
        at, moment = _at(*then, zone=zone), _at(*now, zone=zone)
        assert ago_text(at, moment, "en", zone) == english, zone
        assert ago_text(at, moment, "es-MX", zone) == spanish, zone


def test_the_same_moment_is_yesterday_in_one_zone_and_today_in_another() -> None:
    """Wednesday 09:00 UTC, an event 8 hours before: 01:00 the same day in UTC, 21:00 the day before in New
    York (05:00 there now), 10:00 and 18:00 the same day in Tokyo."""
    now = _at(10, 9)
    assert ago_text(now - 8 * 3600, now, "en", "UTC") == "8 hours ago"
    assert ago_text(now - 8 * 3600, now, "en", "America/New_York") == "yesterday"
    assert ago_text(now - 8 * 3600, now, "es", "Asia/Tokyo") == "hace 8 horas"
    assert ago_text(now - 8 * 3600, now, "en", "Not/AZone") == "8 hours ago"  # an unknown zone reads UTC


def test_a_reasons_ago_and_days_ago_read_the_profiles_zone(snapshot: PolicySnapshot) -> None:
    """The decline was Tuesday 21:00 in New York (Wednesday 01:00 UTC); the agent asks on Wednesday 05:00
    there (09:00 UTC)."""
    now = _at(10, 9)
    decline = JourneyEntry(now - 8 * 3600, "atm_decline", "atm", json.dumps({"currency": "EUR", "shortfall": 80.0}))
    new_york = likely_reasons(snapshot, _context(decline, timezone="America/New_York", now=now))
    assert [r.text for r in new_york] == ["ATM withdrawal declined yesterday, short by 80 EUR"]
    utc = likely_reasons(snapshot, _context(decline, now=now))
    assert [r.text for r in utc] == ["ATM withdrawal declined 8 hours ago, short by 80 EUR"]


def test_channel_reads_a_word_for_an_event_recorded_without_one(snapshot: PolicySnapshot) -> None:
    cart = _entry(5 * 60, "cart_abandon", "", cart_id="k1", cart_value=80.0, currency="EUR", item_count=2)
    ctx = _context(cart, open_journeys=_open_cart())
    assert [r.text for r in likely_reasons(snapshot, ctx)] == [
        "Cart of 80 EUR (2 items) abandoned 5 minutes ago (unknown channel)"
    ]
    assert [r.text for r in likely_reasons(snapshot, ctx, "es")] == [
        "Carrito de 80 EUR abandonado hace 5 minutos (canal desconocido)"
    ]


def test_a_bought_cart_is_no_reason_while_another_cart_is_open(snapshot: PolicySnapshot) -> None:
    """k1 (80 EUR) then k2 (30 EUR) left on the web; k2 bought since, k1 still open: the reason is k1's, with
    k1 alone as evidence (``open_cart_value > 0`` would hold for k2 too, and read it)."""
    k1 = _entry(3600, "cart_abandon", "web", cart_id="k1", cart_value=80.0, currency="EUR", item_count=2)
    k2 = _entry(600, "cart_abandon", "web", cart_id="k2", cart_value=30.0, currency="EUR", item_count=1)
    [reason] = likely_reasons(snapshot, _context(k1, k2, open_journeys=_open_cart()))
    assert reason.text == "Cart of 80 EUR (2 items) abandoned 1 hour ago (web)"
    assert reason.evidence == (k1,)


# --- agent scripts ---------------------------------------------------------------------------------------


def test_agent_scripts_in_the_agents_language_with_the_offers_variables(snapshot: PolicySnapshot) -> None:
    ctx = _context()
    ids = ("overdraft_followup", "chat", "smaller_withdrawal")
    assert agent_scripts(snapshot, ctx, AGENT, ids, "en") == {
        "overdraft_followup": ("Ana, overdraft protection up to 500 EUR?", "en"),
        "chat": ("Hello Ana", "en"),  # a text without languages is in the default language
    }
    assert agent_scripts(snapshot, ctx, AGENT, ids, "ES")["overdraft_followup"] == (
        "Ana, ¿protección de descubierto hasta 500 EUR?",
        "es",
    )
    assert agent_scripts(snapshot, ctx, AGENT, ids, "fr")["overdraft_followup"][1] == "en"  # the default


def _open_cart() -> tuple[OpenJourney, ...]:
    return (OpenJourney("cart", "k1", NOW - 26 * 3600, {"cart_value": 80.0}),)
