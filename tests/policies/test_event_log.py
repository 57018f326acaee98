"""Event files: one DecideRequest a line, read with the API's own checks."""

from __future__ import annotations

import io
import json

import pytest

from nba_service.api.event_log import (
    EventLogError,
    append_request,
    event_object,
    parse_line,
    read_requests,
    to_timed_request,
)
from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import atm_decline

NOON = 1781092800.0  # 2026-06-10T12:00:00Z


def test_append_and_read_back(tmp_path):
    request = atm_decline("c1", amount=100.0, balance=-12.5)
    request.attributes["campaign"] = "spring"
    custom = pb.DecideRequest(customer_id="c2", origin_channel="web", event=pb.Event(
        custom=pb.CustomEvent(name="price_drop", attributes={"product": "shoes"})))
    path = tmp_path / "events.jsonl"
    append_request(path, request, NOON)
    with path.open("a") as handle:
        append_request(handle, custom, None)

    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "timestamp": "2026-06-10T12:00:00.000Z", "customer_id": "c1", "origin_channel": "atm",
        "event": {"atm_decline": {"amount": 100, "balance": -12.5, "currency": "EUR", "atm_id": "atm-7",
                                  "latitude": 40.4168, "longitude": -3.7038}},
        "attributes": {"campaign": "spring"}}
    first, second = [to_timed_request(r) for r in read_requests(path)]
    assert (first.request.customer_id, first.request.origin_channel, first.timestamp, first.line) == (
        "c1", "atm", NOON, 1)
    assert first.request.event.fields["shortfall"] == 112.5 and first.request.attributes == {"campaign": "spring"}
    assert second.timestamp is None
    assert (second.request.event.type, dict(second.request.event.attributes)) == ("custom", {"product": "shoes"})


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "line 3: not valid JSON"),
    ("[1, 2]", "line 3: each line must be a JSON object"),
    ('{"customer_id": "c1", "event": {"atm_decline": {"amount": -5}}}',
     "line 3: event.atm_decline.amount: must not be negative, got -5.0"),
    ('{"customer_id": "", "event": {"app_open": {}}}', "line 3: customer_id: is required"),
    ('{"customer_id": "c1"}', "line 3: event: is required"),
    ('{"customer_id": "c1", "event": {"app_open": {}}, "colour": "red"}', 'no field named "colour"'),
    ('{"timestamp": "yesterday", "customer_id": "c1", "event": {"app_open": {}}}',
     "line 3: timestamp: 'yesterday' is not an ISO 8601 date-time"),
])
def test_refused_lines_say_why_with_their_number(line, message):
    text = '{"customer_id": "c1", "event": {"app_open": {"screen": "home"}}}\n\n' + line + "\n"
    results = list(read_requests(io.StringIO(text)))
    with pytest.raises(EventLogError) as refused:
        for result in results:
            if isinstance(result, EventLogError):
                raise result
            to_timed_request(result)
    assert message in str(refused.value)


def test_timestamps_as_iso_with_offset_or_unix_seconds():
    assert parse_line('{"timestamp": "2026-06-10T14:00:00+02:00", "customer_id": "c1"}').timestamp == NOON
    assert parse_line('{"timestamp": "2026-06-10T12:00:00", "customer_id": "c1"}').timestamp == NOON
    assert parse_line('{"timestamp": 1781092800, "customer_id": "c1"}').timestamp == NOON


def test_event_from_command_line_fields():
    assert event_object("cart_abandon", {"cart_value": "80.5", "item_ids": "a, b"}) == {
        "cart_abandon": {"cart_value": 80.5, "item_ids": ["a", "b"]}}
    with pytest.raises(EventLogError, match=r"atm_decline has no field 'amout' \(fields: amount, balance"):
        event_object("atm_decline", {"amout": "100"})
    with pytest.raises(EventLogError, match="atm_decline.amount: 'lots' is not a number"):
        event_object("atm_decline", {"amount": "lots"})
    with pytest.raises(EventLogError, match="unknown event type 'atm'"):
        event_object("atm", {})
