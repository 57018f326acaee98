"""The ``campaigns`` section: parsed, validated with file:line, diffed (nba_service/policies/campaign_section.py)."""

from __future__ import annotations

import pytest

from nba_service.policies.diff import diff_policies
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import parse_policy_files, read_policy_dir
from tests.conftest import SAMPLE_POLICIES


def with_campaigns(text: str) -> dict[str, str]:
    files = read_policy_dir(SAMPLE_POLICIES)
    files["zz.yaml"] = text
    return files


def test_the_sample_set_has_a_campaign_the_demo_data_can_run():
    [campaign] = parse_policy_files(read_policy_dir(SAMPLE_POLICIES)).campaigns
    assert campaign.id == "overdraft_cross_sell" and campaign.offers == ("overdraft_protection",)
    assert campaign.send_window == (9 * 60, 20 * 60) and campaign.repeat_after_seconds is None
    assert campaign.max_per_channel == {"push": 5000, "sms": 1000} and campaign.max_total == 8000


def test_a_campaign_naming_an_event_takes_its_offers_with_an_outbound_channel():
    text = """campaigns:
  - id: app_push
    event: app_open
    schedule: "0 9 * * 1-5"
    timezone: Europe/Madrid
    repeat_after: 30d
"""
    campaign = parse_policy_files(with_campaigns(text)).campaigns[-1]
    offers = parse_policy_files(read_policy_dir(SAMPLE_POLICIES)).offers
    assert campaign.offers == tuple(o.id for o in offers if "app_open" in o.events and not o.paused)
    assert "card_upgrade" in campaign.offers
    assert (campaign.schedule, campaign.timezone, campaign.repeat_after_seconds) == (
        "0 9 * * 1-5",
        "Europe/Madrid",
        30 * 86400.0,
    )


def test_every_problem_is_reported_with_its_file_and_line():
    text = """campaigns:
  - id: bad
    segment: "event.amount > 3"
    offers: [atm_smaller_withdrawal, nope]
    event_fields: {balance: 1}
    schedule: "0 25 * * *"
    timezone: Mars/Olympus
    limits: {max_per_channel: {atm_screen: 5, push: -1}, max_total: 1.5}
    send_window: {start: "9am", end: "20:00"}
    repeat_after: soon
    colour: blue
  - id: bad
    offers: [overdraft_protection]
"""
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(with_campaigns(text))
    messages = [str(i) for i in caught.value.issues]
    expected = [
        "zz.yaml:3:15: campaigns[0] (bad).segment: unknown field event.amount",
        "zz.yaml:4:14: campaigns[0] (bad).offers: atm_smaller_withdrawal has no outbound channel (atm_screen)",
        "zz.yaml:4:38: campaigns[0] (bad).offers: unknown offer 'nope'",
        "zz.yaml:5:19: campaigns[0] (bad).event_fields: needs event:",
        "zz.yaml:6:15: campaigns[0] (bad).schedule: hour: 25 is not in 0..23",
        "zz.yaml:7:15: campaigns[0] (bad).timezone: unknown time zone 'Mars/Olympus'",
        "zz.yaml:8:32: campaigns[0] (bad).limits.max_per_channel: 'atm_screen' is not an outbound channel",
        "zz.yaml:8:53: campaigns[0] (bad).limits.max_per_channel.push: expected a whole number >= 0, got -1",
        "zz.yaml:8:69: campaigns[0] (bad).limits.max_total: expected a whole number >= 0, got 1.5",
        "zz.yaml:9:26: campaigns[0] (bad).send_window.start: expected a time HH:MM in quotes, got '9am'",
        "zz.yaml:10:19: campaigns[0] (bad).repeat_after: 'soon' is not a duration",
        "zz.yaml:11:5: campaigns[0]: unknown field 'colour'",
    ]
    for want in expected:
        assert any(m.startswith(want) for m in messages), (want, messages)
    assert not any("duplicate campaign id" in m for m in messages)  # the first one was refused
    good_twice = "campaigns:\n  - {id: x, offers: [overdraft_protection]}\n  - {id: x, offers: [card_upgrade]}\n"
    with pytest.raises(PolicyValidationError, match=r"zz.yaml:3:5: campaigns: duplicate campaign id 'x' \(first in"):
        parse_policy_files(with_campaigns(good_twice))


def test_policy_diff_shows_campaign_changes():
    old = parse_policy_files(read_policy_dir(SAMPLE_POLICIES))
    files = read_policy_dir(SAMPLE_POLICIES)
    files["bank.yaml"] = files["bank.yaml"].replace("push: 5000, sms: 1000", "push: 6000, sms: 1000")
    files["zz.yaml"] = "campaigns:\n  - {id: extra, offers: [card_upgrade]}\n"
    diff = diff_policies(old, parse_policy_files(files))
    lines = diff.render()
    assert "campaigns:" in lines
    assert any(line.strip().startswith("overdraft_cross_sell.max_per_channel.push: 5000 -> 6000") for line in lines)
    assert diff.added("campaigns") == ["extra"]
    assert "campaigns: 1 changed, 1 added" in diff.summary()
