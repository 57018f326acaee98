"""Contact semantics per channel, over a real server and Redis: inbound and outbound channels, contact caps
by direction, and quiet hours that defer a push to the customer's morning instead of dropping it, weighted by
the channel's defer_weight against a channel that delivers now."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import textwrap
import time
import zoneinfo

import pytest

from nba_service.cli import main
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, night_zone, profile


def test_a_push_in_quiet_hours_is_deferred_to_the_customers_morning(server, redis_client):
    zone = night_zone()  # 23:xx there now (00:xx if the hour turns during the test)
    # push is the only channel open at night (sms quiet, the ATM screen withdrawn): worth half (defer_weight 0.5)
    # but nothing delivered now competes with it
    only_push = profile("n1", timezone=zone, channels=("push", "sms"),
                        consent={"push": True, "sms": True, "atm_screen": False})
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=only_push), timeout=5)
    before = time.time()

    response = server.stub.Decide(atm_decline("n1"), timeout=5)

    # push (the customer's preferred channel) defers in its quiet hours: still used, delivered at 08:00 local
    assert response.channel == "push" and not response.no_action
    deliver_after = response.deliver_after_ms / 1000
    local = datetime.datetime.fromtimestamp(deliver_after, zoneinfo.ZoneInfo(zone))
    assert (local.hour, local.minute, local.second) == (8, 0, 0)
    assert 8 * 3600 - 60 <= deliver_after - before <= 9 * 3600  # the next 08:00: 8 to 9 hours after 23:xx
    # the reason right after "chosen" says so, on the response's own channel
    assert [r.code for r in response.reasons[:2]] == ["chosen", "deferred"]
    deferred = response.reasons[1]
    assert (deferred.offer_id, deferred.channel) == (response.action.offer_id, "push")
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deliver_after))
    assert re.fullmatch(
        rf"quiet hours 21:00-08:00 in {re.escape(zone)}, local time (23|00):\d\d: "
        rf"deliver after {local:%a %Y-%m-%d} 08:00 local time \({utc}\)",
        deferred.detail,
    ), deferred.detail
    # sms, also quiet but "drop", is closed as before
    sms = next(r for r in response.reasons if r.channel == "sms")
    assert sms.code == "quiet_hours"
    # the recorded decision keeps when to deliver
    meta = json.loads(redis_client.hget(keys.decision(response.decision_id), "meta"))
    assert meta["deliver_after"] == pytest.approx(deliver_after, abs=0.001)
    # the alternatives, all on push too, would be deferred to the same morning
    assert response.alternatives and {(a.channel, a.deliver_after_ms) for a in response.alternatives} == {
        ("push", response.deliver_after_ms)}


def test_at_night_the_atm_screen_beats_a_push_deferred_to_the_morning(server):
    """An ATM decline at 23:xx: the push (preferred, x 1.2) would wait 8-9 hours for 08:00; the sample's
    defer_weight 0.5 makes it worth half, below the message on the screen the customer is looking at now."""
    zone = night_zone()
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "n3", timezone=zone, channels=("push", "sms", "email"), consent={"push": True, "sms": False})), timeout=5)

    response = server.stub.Decide(atm_decline("n3"), timeout=5)

    assert (response.action.offer_id, response.channel) == ("overdraft_protection", "atm_screen")
    assert response.deliver_after_ms == 0 and "deferred" not in [r.code for r in response.reasons]
    assert "turn on overdraft protection" in response.action.content.lower()
    push = next(r for r in response.reasons if r.channel == "push")
    assert push.code == "lower_priority"
    # its priority halved, and what it was before: 2.4 (0.05 x 40 x 1.2) x 0.5 = 1.2 < 2 (0.05 x 40)
    assert push.detail == "priority 1.2 (2.4 x deferred 0.5) < 2 on atm_screen", push.detail
    # every alternative can be shown now: none is deferred
    assert response.alternatives and all(a.deliver_after_ms == 0 for a in response.alternatives)

    # in the day the same customer gets the push at once, at its full priority
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "n4", timezone=daytime_zone(), channels=("push", "sms", "email"), consent={"push": True, "sms": False})),
        timeout=5)
    day = server.stub.Decide(atm_decline("n4"), timeout=5)
    assert (day.action.offer_id, day.channel, day.deliver_after_ms) == ("overdraft_protection", "push", 0)
    assert day.score == pytest.approx(2.4, abs=0.01)


def test_a_push_in_the_day_is_delivered_now(server, redis_client):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("n2", timezone=daytime_zone())), timeout=5)

    response = server.stub.Decide(atm_decline("n2"), timeout=5)

    assert response.channel == "push" and response.deliver_after_ms == 0
    assert "deferred" not in [r.code for r in response.reasons]
    meta = json.loads(redis_client.hget(keys.decision(response.decision_id), "meta"))
    assert "deliver_after" not in meta


# A set of two channels, one of each direction, one offer on each, and two caps a day: 2 sent messages
# (outbound, the default) and 6 contacts of any kind.
CAPS = {
    "channels.yaml": textwrap.dedent("""\
        channels:
          - id: push
            direction: outbound
            needs_reachable: true
            default_consent: false
          - id: atm_screen
            direction: inbound
            needs_reachable: false
            default_consent: true
            available_when: "event.type == 'atm_decline'"
        """),
    "settings.yaml": textwrap.dedent("""\
        settings:
          no_action_threshold: 0.01
          contact_limits:
            - {max: 2, per: 1d}
            - {max: 6, per: 1d, direction: any}
        """),
    "offers.yaml": textwrap.dedent("""\
        offers:
          - id: screen_tip
            name: Withdraw what is available
            category: service
            events: [atm_decline]
            value: 2
            prior: 0.3
            channels: [atm_screen]
            content: {default: "Withdraw {balance} {currency} instead?"}
          - id: app_tip
            name: Savings tip
            category: savings
            events: [app_open]
            value: 2
            prior: 0.3
            channels: [push]
            content: {default: "Put a little aside every month"}
        """),
}


def app_open(customer_id: str) -> pb.DecideRequest:
    return pb.DecideRequest(customer_id=customer_id, origin_channel="app",
                            event=pb.Event(app_open=pb.AppOpen(screen="home")))


def test_screen_messages_do_not_use_up_an_outbound_cap_and_sent_ones_do(start_server, redis_client):
    PolicyStore(redis_client).publish(CAPS, author="tests", message="caps by direction")
    server = start_server()
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "k1", channels=("push",), timezone=daytime_zone())), timeout=5)

    def decide(request: pb.DecideRequest) -> pb.DecideResponse:
        return server.stub.Decide(request, timeout=5)

    screens = [decide(atm_decline("k1")) for _ in range(3)]
    assert [(r.action.offer_id, r.channel) for r in screens] == [("screen_tip", "atm_screen")] * 3
    # three screen messages (inbound) count nothing toward "2 sent a day": both pushes go out
    pushes = [decide(app_open("k1")) for _ in range(2)]
    assert [(r.action.offer_id, r.channel) for r in pushes] == [("app_tip", "push")] * 2
    # two sent messages (outbound) reach it: no third push
    third = decide(app_open("k1"))
    assert third.no_action
    reason = next(r for r in third.reasons if r.offer_id == "app_tip")
    assert (reason.code, reason.detail) == ("no_channel", "push: at most 2 per 1d")
    # the outbound cap does not close the ATM screen; the cap of any channel counts all 5 contacts so far
    assert (decide(atm_decline("k1")).channel) == "atm_screen"
    sixth = decide(atm_decline("k1"))
    assert sixth.no_action
    assert (sixth.reasons[-1].code, sixth.reasons[-1].detail) == ("frequency_cap", "at most 6 on any channel per 1d")


def nba(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def line_of(path, text: str) -> int:
    """The 1-based line of ``text`` in the file at ``path``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_bad_defer_weight_is_refused_at_publish(capsys, redis_url, redis_client, tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, folder)
    channels = folder / "channels.yaml"
    text = channels.read_text()
    for old, new in (
        ("    defer_weight: 0.5 ", "    defer_weight: 2 "),  # push: out of (0, 1]
        ("    on_quiet_hours: drop", "    defer_weight: 0.5\n    on_quiet_hours: drop"),  # sms drops
    ):
        assert old in text
        text = text.replace(old, new, 1)
    channels.write_text(text)

    code, _, err = nba(capsys, "policy", "publish", str(folder), "--redis-url", redis_url)

    assert code != 0
    assert (f"{channels}:{line_of(channels, 'defer_weight: 2 ')}:19: channels[0] (push).defer_weight: "
            "2 must be <= 1") in err
    assert (f"{channels}:{line_of(channels, 'defer_weight: 0.5')}:19: channels[1] (sms).defer_weight: only a "
            "channel with on_quiet_hours: defer has one") in err
    assert "nothing was published" in err
    assert PolicyStore(redis_client).live() is None


def test_a_bad_direction_or_on_quiet_hours_is_refused_at_publish(capsys, redis_url, redis_client, tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, folder)
    channels = folder / "channels.yaml"
    text = channels.read_text()
    for old, new in (
        ("    direction: outbound\n", "    direction: sideways\n"),  # push, the first channel
        ("    on_quiet_hours: drop", "    on_quiet_hours: later"),  # sms
        ("    direction: inbound\n", "    direction: inbound\n    on_quiet_hours: defer  # a screen\n"),  # atm_screen
    ):
        assert old in text
        text = text.replace(old, new, 1)
    channels.write_text(text)
    settings = folder / "settings.yaml"
    settings.write_text(settings.read_text().replace("{max: 12, per: 7d}", "{max: 12, per: 7d, direction: both}"))

    code, _, err = nba(capsys, "policy", "publish", str(folder), "--redis-url", redis_url)

    assert code != 0
    assert (f"{channels}:{line_of(channels, 'direction: sideways')}:16: channels[0] (push).direction: "
            "expected inbound or outbound, got 'sideways'") in err
    assert (f"{channels}:{line_of(channels, 'on_quiet_hours: later')}:21: channels[1] (sms).on_quiet_hours: "
            "expected drop or defer, got 'later'") in err
    assert (f"{channels}:{line_of(channels, 'defer  # a screen')}:21: channels[4] (atm_screen).on_quiet_hours: "
            "defer needs an outbound channel") in err
    assert (f"{settings}:{line_of(settings, 'direction: both')}:") in err
    assert "settings.contact_limits[1].direction: expected outbound, inbound or any, got 'both'" in err
    assert "nothing was published" in err
    assert PolicyStore(redis_client).live() is None
