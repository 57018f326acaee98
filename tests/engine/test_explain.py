"""Explanations: every candidate offer, what filtered it, and P x V x L x B that add up to the score."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from nba_service.domain import ContactRecord, CustomerContext, Event
from nba_service.engine.explain import explain_decision, score_arms
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.learning.models import ModelBank
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from tests.engine.test_pipeline import DECLINE, NOON_UTC, POLICY, customer

PAUSED = textwrap.dedent("""\
    offers:
      - id: flash
        name: Flash sale
        category: cards
        events: [atm_decline]
        value: 100
        prior: 0.5
        channels: [push]
        content: {default: "Sale"}
        paused: true
    """)


@pytest.fixture(scope="module")
def snapshot() -> PolicySnapshot:
    policy = {**POLICY, "paused.yaml": PAUSED}
    policy["settings.yaml"] = policy["settings.yaml"].replace("cards: 1.0", "cards: 1.25")
    return PolicySnapshot.compile(parse_policy_files(policy), "3")


def explain(snapshot, profile, contacts=(), event=DECLINE):
    bank = ModelBank()
    bank.bind(snapshot)
    ctx = CustomerContext(profile, now=NOON_UTC, origin_channel="atm", contacts=tuple(contacts))
    decision = DecisionEngine(bank, EpsilonGreedy(0.0)).decide(snapshot, ctx, event, top_k=len(snapshot.offers))
    return decision, {o.offer_id: o for o in explain_decision(snapshot, bank, ctx, event, decision)}


def test_p_v_l_b_multiply_to_the_engines_scores(snapshot):
    decision, offers = explain(snapshot, customer(preferred="sms"))

    chosen = offers[decision.offer_id]
    assert (chosen.status, chosen.rank) == ("chosen", 1)
    best = chosen.arms[0]
    assert best.channel == decision.channel == "sms"
    assert (best.p, best.v, best.l, best.b, best.boost) == (pytest.approx(0.2), 20, 1.0, 1.0, 1.5)
    assert best.p * best.v * best.l * best.b * best.boost == pytest.approx(decision.score, rel=1e-12)
    card = offers["card"]
    assert card.status == "ranked" and card.rank == 2
    assert card.arms[0].l == 1.25  # the category lever
    alternative = next(a for a in decision.alternatives if a.offer_id == "card")
    assert card.arms[0].priority == pytest.approx(alternative.score, rel=1e-12)


def test_every_candidate_with_what_filtered_it(snapshot):
    contacts = [ContactRecord(NOON_UTC - 3600, "card", "push", "cards")]
    decision, offers = explain(snapshot, customer(segment="student", timezone="Asia/Tokyo"), contacts)

    assert list(offers) == ["tip", "card", "loan", "flash"]  # nearest to winning first, paused last
    assert (offers["loan"].status, offers["loan"].detail) == (
        "not_eligible", "event.shortfall > 0 and profile.segment != 'student'")
    assert offers["loan"].arms == ()  # filtered before scoring: no numbers to show
    assert (offers["card"].status, offers["card"].detail) == ("frequency_cap", "at most 1 in cards per 7d")
    assert offers["flash"].status == "paused"
    assert offers["tip"].status == "below_threshold"
    assert offers["tip"].arms[0].priority == pytest.approx(0.1)
    assert decision.no_action


def test_closed_channels_say_why(snapshot):
    # 21:00 in Tokyo: push is in quiet hours; sms has no consent
    profile = dataclasses.replace(customer(timezone="Asia/Tokyo"), consents={"push": True, "sms": False})
    bank = ModelBank()
    bank.bind(snapshot)
    arms = {(a.offer_id, a.channel): a for a in score_arms(snapshot, bank, CustomerContext(profile, NOON_UTC), DECLINE)}
    assert arms[("loan", "push")].closed == "push: quiet hours 21:00-08:00 in Asia/Tokyo, local time 21:00"
    assert arms[("loan", "sms")].closed == "sms: no consent"
    assert arms[("loan", "atm_screen")].closed == ""


def test_an_event_no_offer_answers(snapshot):
    decision, offers = explain(snapshot, customer(), event=Event("app_open", {"screen": "home"}))
    assert decision.no_action and offers == {}
