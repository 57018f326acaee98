"""Contact semantics per channel, without a server: how channels.yaml's direction and on_quiet_hours and a
limit's direction are read, checked and applied by the engine, and how a deferring channel's defer_weight
weights its arms."""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo

import pytest

from nba_service.domain import CustomerContext, CustomerProfile
from nba_service.domain.localtime import next_local_time
from nba_service.engine.explain import explain_decision, score_arms
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.learning.models import ModelBank
from nba_service.policies.diff import diff_policies
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from tests.conftest import SAMPLE_POLICIES
from tests.engine.test_pipeline import DECLINE, NOON_UTC, POLICY, _contacts, customer, decide

DEFER = {**POLICY, "channels.yaml": POLICY["channels.yaml"].replace(
    '    quiet_hours: {start: "21:00", end: "08:00"}\n',
    '    quiet_hours: {start: "21:00", end: "08:00"}\n    on_quiet_hours: defer\n')}


def issues(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(issue) for issue in caught.value.issues]


def test_direction_defaults_to_what_needs_reachable_says_and_can_be_explicit():
    channels = {c.id: c for c in parse_policy_files(POLICY).channels}
    assert [(c.id, c.direction, c.on_quiet_hours) for c in channels.values()] == [
        ("push", "outbound", "drop"), ("sms", "outbound", "drop"), ("atm_screen", "inbound", "drop")]
    explicit = {**POLICY, "channels.yaml": POLICY["channels.yaml"].replace(
        "  - id: sms\n", "  - id: sms\n    needs_reachable: false\n    direction: outbound\n")}
    sms = next(c for c in parse_policy_files(explicit).channels if c.id == "sms")
    assert (sms.needs_reachable, sms.direction) == (False, "outbound")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  - id: sms\n", "  - id: sms\n    direction: out\n",
     "channels.yaml:5:16: channels[1] (sms).direction: expected inbound or outbound, got 'out'"),
    ("  - id: sms\n", "  - id: sms\n    on_quiet_hours: [defer]\n",
     "channels.yaml:5:21: channels[1] (sms).on_quiet_hours: expected drop or defer, got a list"),
    ("  - id: sms\n", "  - id: sms\n    on_quiet_hours: defer\n",
     "channels.yaml:5:21: channels[1] (sms).on_quiet_hours: defer needs quiet_hours, e.g. {start: '21:00',"
     " end: '08:00'}"),
    ("    default_consent: true\n", "    default_consent: true\n    quiet_hours: {start: '22:00', end: '07:00'}\n"
                                     "    on_quiet_hours: defer\n",
     "channels.yaml:9:21: channels[2] (atm_screen).on_quiet_hours: defer needs an outbound channel; this one is"
     " inbound (shown in the customer's own session, which is now or never)"),
])
def test_bad_channel_semantics_are_refused_with_file_and_line(old, new, expected):
    assert issues({**POLICY, "channels.yaml": POLICY["channels.yaml"].replace(old, new, 1)}) == [expected]


def test_limits_that_could_never_count_a_contact_are_refused():
    tip_limit = POLICY["offers.yaml"].replace(
        '    content: {default: "Tip"}\n',
        '    content: {default: "Tip"}\n    limits:\n      - {max: 3, per: 1d, direction: outbound}\n')
    inbound_cards = POLICY["settings.yaml"].replace(
        "{category: cards, max: 1, per: 7d}", "{category: cards, max: 1, per: 7d, direction: inbound}")
    assert issues({**POLICY, "offers.yaml": tip_limit, "settings.yaml": inbound_cards}) == [
        "offers.yaml:35:9: offers[2] (tip).limits: at most 3 per 1d counts outbound contacts only, and none of"
        " this offer's channels (atm_screen) is outbound: it would never count one. Say direction: any (every"
        " channel) or the direction of its channels",
        "settings.yaml:8:7: settings.contact_limits: this limit counts inbound contacts only, and no channel of"
        " the offers of category cards (push, sms) is inbound: it would never count one. Say direction: any"
        " (every channel) or the direction of those channels",
    ]
    fixed = tip_limit.replace("- {max: 3, per: 1d, direction: outbound}", "- {max: 3, per: 1d, direction: any}")
    assert parse_policy_files({**POLICY, "offers.yaml": fixed}).offers[2].limits[0].direction == "any"
    # left out, as a policy set written before directions did: it counts every channel, as it did then
    implicit = tip_limit.replace("- {max: 3, per: 1d, direction: outbound}", "- {max: 3, per: 1d}")
    (limit,) = parse_policy_files({**POLICY, "offers.yaml": implicit}).offers[2].limits
    assert (limit.direction, limit.direction_given) == ("outbound", False)
    rows = PolicySnapshot.compile(parse_policy_files({**POLICY, "offers.yaml": implicit}), "9").limits.rows
    assert [row[3] for row in rows if row[5] == "at most 3 per 1d"] == [frozenset()]  # skips no channel
    on_a_channel = POLICY["settings.yaml"].replace(
        "{channel: sms, max: 1, per: 1d}", "{channel: sms, max: 1, per: 1d, direction: any}")
    assert issues({**POLICY, "settings.yaml": on_a_channel}) == [
        "settings.yaml:7:50: settings.contact_limits[1].direction: a limit on one channel counts that channel's"
        " contacts, whatever its direction: remove direction, or the channel"]


def test_a_category_cap_closes_only_its_outbound_arms():
    # the loan (push, sms, atm_screen) in a category capped at 1 sent message a week
    policy = {**POLICY, "settings.yaml": POLICY["settings.yaml"].replace(
        "{category: cards, max: 1, per: 7d}", "{category: lending, max: 1, per: 7d}")}
    snapshot = PolicySnapshot.compile(parse_policy_files(policy), "9")
    sent = _contacts((86400, "loan", "push", "lending"))
    decision = decide(snapshot, customer(), contacts=sent)
    assert (decision.offer_id, decision.channel) == ("loan", "atm_screen")
    reasons = {r.channel: (r.code, r.detail) for r in decision.reasons if r.channel}
    assert reasons["push"] == ("frequency_cap", "at most 1 in lending per 7d")
    # a screen message of the category counts nothing: the loan goes on push
    shown = _contacts((86400, "loan", "atm_screen", "lending"), (2 * 86400, "loan", "atm_screen", "lending"))
    assert decide(snapshot, customer(), contacts=shown).channel == "push"


@pytest.fixture(scope="module")
def deferring() -> PolicySnapshot:
    return PolicySnapshot.compile(parse_policy_files(DEFER), "10")


def test_a_deferring_channel_stays_open_in_quiet_hours_and_says_until_when(deferring):
    # 12:00 UTC is 21:00 in Tokyo: push is quiet, and defers to 08:00 there (23:00 UTC)
    decision = decide(deferring, customer(timezone="Asia/Tokyo"))
    assert (decision.offer_id, decision.channel) == ("loan", "push")
    assert decision.deliver_after == datetime.datetime(2026, 6, 10, 23, 0, tzinfo=datetime.UTC).timestamp()
    assert [(r.code, r.channel) for r in decision.reasons[:2]] == [("chosen", ""), ("deferred", "push")]
    assert decision.reasons[1].detail == (
        "quiet hours 21:00-08:00 in Asia/Tokyo, local time 21:00: deliver after Thu 2026-06-11 08:00 local time"
        " (2026-06-10T23:00:00Z)")
    # out of quiet hours nothing is deferred; and a channel that drops is still closed
    assert decide(deferring, customer()).deliver_after is None
    dropping = PolicySnapshot.compile(parse_policy_files(POLICY), "7")
    assert decide(dropping, customer(timezone="Asia/Tokyo")).channel == "sms"


def test_explain_shows_a_deferred_arm_as_open(deferring):
    bank = ModelBank()
    bank.bind(deferring)
    ctx = CustomerContext(customer(timezone="Asia/Tokyo"), now=NOON_UTC, origin_channel="atm")
    arms = {(a.offer_id, a.channel): a for a in score_arms(deferring, bank, ctx, DECLINE)}
    assert arms[("loan", "push")].closed == "" and arms[("loan", "push")].priority > 0
    assert arms[("loan", "push")].deferred == "deliver after Thu 2026-06-11 08:00 local time"
    assert arms[("loan", "sms")].deferred == ""


def test_the_delivery_time_follows_daylight_saving():
    madrid = zoneinfo.ZoneInfo("Europe/Madrid")
    # 23:30 on the Saturday before the clocks go forward: 08:00 on Sunday is CEST (UTC+2), 06:00 UTC
    night = datetime.datetime(2026, 3, 28, 23, 30, tzinfo=madrid).timestamp()
    assert next_local_time(night, "Europe/Madrid", 8 * 60) == datetime.datetime(
        2026, 3, 29, 6, 0, tzinfo=datetime.UTC).timestamp()
    # 02:00 the same night already past midnight: 08:00 the same day
    early = datetime.datetime(2026, 3, 29, 1, 0, tzinfo=datetime.UTC).timestamp()  # 03:00 CEST
    assert next_local_time(early, "Europe/Madrid", 8 * 60) == datetime.datetime(
        2026, 3, 29, 6, 0, tzinfo=datetime.UTC).timestamp()
    # 08:00 exactly is not in quiet hours: the next 08:00 is tomorrow's
    eight = datetime.datetime(2026, 6, 10, 8, 0, tzinfo=madrid).timestamp()
    assert next_local_time(eight, "Europe/Madrid", 8 * 60) == eight + 86400


def test_a_limit_direction_change_shows_in_the_diff():
    new = {**POLICY, "settings.yaml": POLICY["settings.yaml"].replace(
        "- {max: 5, per: 1d}", "- {max: 5, per: 1d, direction: any}")}
    changes = [str(c) for c in diff_policies(parse_policy_files(POLICY), parse_policy_files(new)).changes]
    assert changes == ["settings.contact_limits: - {max: 5, per: 1d}",
                       "settings.contact_limits: + {max: 5, per: 1d, direction: any}"]
    channels = {**DEFER, "channels.yaml": DEFER["channels.yaml"].replace(
        "    default_consent: true\n", "    default_consent: true\n    direction: outbound\n")}
    assert [str(c) for c in diff_policies(parse_policy_files(DEFER), parse_policy_files(channels)).changes] == [
        "atm_screen.direction: inbound -> outbound"]
    assert [str(c) for c in diff_policies(parse_policy_files(POLICY), parse_policy_files(DEFER)).changes] == [
        "push.on_quiet_hours: drop -> defer"]


def test_the_sample_channels_state_their_direction():
    policy = parse_policy_files({"channels.yaml": (SAMPLE_POLICIES / "channels.yaml").read_text(encoding="utf-8")})
    assert {c.id: c.direction for c in policy.channels} == {
        "push": "outbound", "sms": "outbound", "email": "outbound", "app_inbox": "outbound",
        "atm_screen": "inbound", "web_banner": "inbound", "agent_desktop": "inbound"}
    assert {c.id: c.on_quiet_hours for c in policy.channels if c.quiet_hours} == {"push": "defer", "sms": "drop"}


def weighted(weight: str) -> PolicySnapshot:
    """The deferring set with push's ``defer_weight``."""
    channels = DEFER["channels.yaml"].replace("    on_quiet_hours: defer\n",
                                              f"    on_quiet_hours: defer\n    defer_weight: {weight}\n")
    return PolicySnapshot.compile(parse_policy_files({**DEFER, "channels.yaml": channels}), "11")


def at_the_atm_at_night() -> CustomerProfile:
    # 21:00 in Tokyo (noon UTC): push defers to 08:00; push preferred (x 1.5), sms withdrawn, the ATM screen open
    return dataclasses.replace(customer(timezone="Asia/Tokyo", preferred="push"),
                               consents={"push": True, "sms": False, "atm_screen": True})


MORNING = datetime.datetime(2026, 6, 10, 23, 0, tzinfo=datetime.UTC).timestamp()  # 08:00 in Tokyo


def test_the_atm_screen_beats_a_deferred_push_worth_less_than_it_once_weighted():
    # the loan: 0.2 x 20 = 4 on the ATM screen, now; 0.2 x 20 x 1.5 = 6 on push, 3 weighted by 0.5 for the morning
    decision = decide(weighted("0.5"), at_the_atm_at_night())

    assert (decision.offer_id, decision.channel, decision.deliver_after) == ("loan", "atm_screen", None)
    assert decision.score == pytest.approx(4)
    assert "deferred" not in [r.code for r in decision.reasons]
    push = next(r for r in decision.reasons if r.channel == "push")
    assert (push.code, push.detail) == ("lower_priority", "priority 3 (6 x deferred 0.5) < 4 on atm_screen")
    # the runner-up, the card (push only for this customer), would be deferred too: it says until when
    (card,) = decision.alternatives
    assert (card.offer_id, card.channel, card.deliver_after) == ("card", "push", MORNING)
    assert card.score == pytest.approx(0.2 * 10 * 1.5 * 0.5)

    # unweighted (the default, 1) the push wins as before, deferred; weighted 0.9 it still does (5.4 > 4)
    assert decide(deferring_default(), at_the_atm_at_night()).channel == "push"
    mild = decide(weighted("0.9"), at_the_atm_at_night())
    assert (mild.channel, mild.deliver_after, mild.score) == ("push", MORNING, pytest.approx(5.4))
    assert mild.reasons[0].detail == "best priority: P=0.2000 x VLB=20 x deferred 0.9 on push"
    screen = next(r for r in mild.reasons if r.channel == "atm_screen")
    assert screen.detail == "priority 4 < 5.4 (6 x deferred 0.9) on push"
    # in the day nothing defers, and nothing is weighted: the push wins at 6
    day = decide(weighted("0.5"), dataclasses.replace(at_the_atm_at_night(), timezone="UTC"))
    assert (day.channel, day.deliver_after, day.score) == ("push", None, pytest.approx(6))


def deferring_default() -> PolicySnapshot:
    return PolicySnapshot.compile(parse_policy_files(DEFER), "10")


def test_explain_shows_the_weighted_priority_of_a_deferred_arm():
    snapshot = weighted("0.5")
    bank = ModelBank()
    bank.bind(snapshot)
    ctx = CustomerContext(at_the_atm_at_night(), now=NOON_UTC, origin_channel="atm")
    decision = DecisionEngine(bank, EpsilonGreedy(0.0)).decide(snapshot, ctx, DECLINE, top_k=3)
    offers = {o.offer_id: o for o in explain_decision(snapshot, bank, ctx, DECLINE, decision)}

    loan = {a.channel: a for a in offers["loan"].arms}
    assert [a.channel for a in offers["loan"].arms] == ["atm_screen", "push", "sms"]  # best first, closed last
    assert (loan["push"].defer_weight, loan["push"].priority) == (0.5, pytest.approx(3))
    assert loan["push"].deferred == "deliver after Thu 2026-06-11 08:00 local time"
    assert (loan["atm_screen"].defer_weight, loan["atm_screen"].priority) == (1.0, pytest.approx(4))
    assert (offers["card"].status, offers["card"].detail) == ("ranked", "priority 1.5 (3 x deferred 0.5) on push")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("    on_quiet_hours: defer\n", "    on_quiet_hours: defer\n    defer_weight: 0\n",
     "channels.yaml:5:19: channels[0] (push).defer_weight: 0 must be > 0"),
    ("    on_quiet_hours: defer\n", "    on_quiet_hours: defer\n    defer_weight: 1.5\n",
     "channels.yaml:5:19: channels[0] (push).defer_weight: 1.5 must be <= 1"),
    ("    on_quiet_hours: defer\n", "    on_quiet_hours: defer\n    defer_weight: half\n",
     "channels.yaml:5:19: channels[0] (push).defer_weight: expected a number, got 'half'"),
    ("  - id: sms\n", "  - id: sms\n    defer_weight: 0.5\n",
     "channels.yaml:6:19: channels[1] (sms).defer_weight: only a channel with on_quiet_hours: defer has one (it"
     " weights the actions the channel defers to the end of its quiet hours)"),
    ("  - id: sms\n", "  - id: sms\n    quiet_hours: {start: '22:00', end: '07:00'}\n    on_quiet_hours: drop\n"
                      "    defer_weight: 0.5\n",
     "channels.yaml:8:19: channels[1] (sms).defer_weight: only a channel with on_quiet_hours: defer has one (it"
     " weights the actions the channel defers to the end of its quiet hours)"),
])
def test_a_bad_defer_weight_is_refused_with_file_and_line(old, new, expected):
    assert issues({**DEFER, "channels.yaml": DEFER["channels.yaml"].replace(old, new, 1)}) == [expected]


def test_a_defer_weight_change_shows_in_the_diff_and_a_set_without_one_keeps_its_meaning():
    weights = {c.id: c.defer_weight for c in parse_policy_files(DEFER).channels}
    assert weights == {"push": 1.0, "sms": 1.0, "atm_screen": 1.0}
    half = {**DEFER, "channels.yaml": DEFER["channels.yaml"].replace(
        "    on_quiet_hours: defer\n", "    on_quiet_hours: defer\n    defer_weight: 0.5\n")}
    assert [str(c) for c in diff_policies(parse_policy_files(DEFER), parse_policy_files(half)).changes] == [
        "push.defer_weight: 1 -> 0.5"]
    sample = parse_policy_files({"channels.yaml": (SAMPLE_POLICIES / "channels.yaml").read_text(encoding="utf-8")})
    assert {c.id: c.defer_weight for c in sample.channels if c.defer_weight != 1.0} == {"push": 0.5}
