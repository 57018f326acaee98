"""Reader of the ``campaigns`` section of a policy file: outbound campaigns.

A campaign reaches a segment of the customers with the best action for each, on an outbound channel, under the
same contact policy as a live decision (``nba campaign run``, :mod:`nba_service.campaigns`)::

    campaigns:
      - id: overdraft_cross_sell
        name: Overdraft protection for card holders
        segment: "holds('current_account') and holds('credit_card') and not holds('overdraft_protection')"
        offers: [overdraft_protection]     # candidate offers; or event: app_open (the offers answering it)
        event: atm_decline                 # optional with offers: whose fields ...
        event_fields: {balance: 0, currency: EUR}   # ... the synthetic event has, as the offers' rules read them
        schedule: once                     # or cron, "0 9 * * 1" (minute hour day month weekday)
        timezone: Europe/Madrid            # of the schedule (default UTC)
        limits: {max_per_channel: {push: 5000}, max_total: 8000}
        send_window: {start: "09:00", end: "20:00"}   # the customer's local time
        priority: 10
        repeat_after: 90d                  # absent: a customer gets the campaign at most once

Each decision is made for a synthetic event of type ``campaign`` (:data:`CAMPAIGN_EVENT`, with the
``event_fields``) from origin channel ``campaign``, on the candidates' outbound channels only. The segment is a
rule over the customer only (the rule language without ``event.``). Every problem is recorded
in the file's :class:`Collector` with its line and column; the parser checks ids across the set.

>>> from nba_service.policies.yaml_source import read_documents
>>> col = Collector("c.yaml")
>>> [root] = read_documents("- {id: x, segment: \\"event.amount > 1\\", event: app_open, schedule: '61 * * * *'}", col)
>>> parse_campaigns(root, col, {}, {})
[]
>>> [str(issue) for issue in col.issues]  # doctest: +NORMALIZE_WHITESPACE
['c.yaml:1:21: campaigns[0] (x).segment: unknown field event.amount (known here: type)',
 'c.yaml:1:47: campaigns[0] (x).event: no offer answering app_open has an outbound channel',
 'c.yaml:1:67: campaigns[0] (x).schedule: minute: 61 is not in 0..59']
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.model import CampaignSpec, ChannelSpec, OfferSpec
from nba_service.policies.rule_functions import parse_duration
from nba_service.policies.yaml_source import Collector, _Node, shown

__all__ = ["CAMPAIGN_EVENT", "MAX_CAMPAIGNS", "check_cron", "parse_campaigns"]

MAX_CAMPAIGNS = 200
"""Campaigns in a policy set."""
CAMPAIGN_EVENT = "campaign"
"""The synthetic event type of a campaign that names offers and no event."""
_KEYS = {
    "id",
    "name",
    "segment",
    "offers",
    "event",
    "event_fields",
    "schedule",
    "timezone",
    "limits",
    "send_window",
    "priority",
    "repeat_after",
}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))


def parse_campaigns(
    node: _Node, col: Collector, offers: Mapping[str, OfferSpec], channels: Mapping[str, ChannelSpec]
) -> list[tuple[CampaignSpec, _Node]]:
    """The campaigns of one ``campaigns`` section, each with its node (one with a problem is left out)."""
    if not isinstance(node.value, list):
        col.add(node, "campaigns: expected a list of campaigns")
        return []
    out = []
    for i, item in enumerate(node.value):
        before = len(col.issues)
        spec = _parse_campaign(i, item, col, offers, channels)
        if spec is not None and len(col.issues) == before:
            out.append((spec, item))
    return out


def _parse_campaign(
    i: int, item: _Node, col: Collector, offers: Mapping[str, OfferSpec], channels: Mapping[str, ChannelSpec]
) -> CampaignSpec | None:
    fields = col.mapping(item, f"campaigns[{i}]", _KEYS, required=("id",))
    if fields is None or "id" not in fields:
        return None
    campaign_id = col.ident(fields["id"], f"campaigns[{i}].id")
    where = f"campaigns[{i}] ({campaign_id})"
    name = col.text(fields.get("name"), f"{where}.name", campaign_id)
    segment = col.expression(fields.get("segment"), f"{where}.segment", ())
    event = _event(fields, where, col)
    candidates = _offers(fields, where, col, offers, channels, event)
    event_fields = _event_fields(fields.get("event_fields"), where, col, event)
    schedule = _schedule(fields.get("schedule"), f"{where}.schedule", col)
    timezone = _timezone(fields.get("timezone"), f"{where}.timezone", col)
    max_per_channel, max_total = _limits(fields.get("limits"), f"{where}.limits", col, channels)
    send_window = _window(fields.get("send_window"), f"{where}.send_window", col)
    priority = col.number(fields.get("priority"), f"{where}.priority", 0.0, low=0, high=100)
    repeat = fields.get("repeat_after")
    repeat_seconds: float | None = None
    if repeat is not None:
        try:
            repeat_seconds = parse_duration(repeat.value)
        except ValueError as exc:
            col.add(repeat, f"{where}.repeat_after: {exc}")
    return CampaignSpec(
        id=campaign_id,
        name=name,
        segment=segment,
        offers=candidates,
        event=event,
        event_fields=event_fields,
        schedule=schedule,
        timezone=timezone,
        max_per_channel=max_per_channel,
        max_total=max_total,
        send_window=send_window,
        priority=priority,
        repeat_after_seconds=repeat_seconds,
        repeat_after=str(repeat.value) if repeat is not None else "",
        file=col.file,
        line=item.line,
    )


def _event(fields: Mapping[str, _Node], where: str, col: Collector) -> str:
    node = fields.get("event")
    if node is None:
        if "offers" not in fields:
            col.add(fields["id"], f"{where}: give the candidate offers (offers: [...]) or an event type (event: ...)")
        return ""
    event = col.ident(node, f"{where}.event")
    if event and event not in EVENT_FIELDS:
        col.add(node, f"{where}.event: unknown event type {event!r} (known: {', '.join(EVENT_FIELDS)})")
        return ""
    return event


def _offers(
    fields: Mapping[str, _Node],
    where: str,
    col: Collector,
    offers: Mapping[str, OfferSpec],
    channels: Mapping[str, ChannelSpec],
    event: str,
) -> tuple[str, ...]:
    """The candidate offers: those listed, else the (not paused) offers answering ``event``; each needs an
    outbound channel (a campaign sends; it shows nothing in a session)."""
    node = fields.get("offers")
    if node is None:
        found = tuple(o.id for o in offers.values() if event in o.events and not o.paused)
        if event and not any(_outbound(offers[o], channels) for o in found):
            col.add(fields["event"], f"{where}.event: no offer answering {event} has an outbound channel")
        return found
    listed = []
    for offer_id, item in col.ident_list(node, f"{where}.offers"):
        offer = offers.get(offer_id)
        if offer is None:
            col.add(item, f"{where}.offers: unknown offer {offer_id!r}")
        elif not _outbound(offer, channels):
            col.add(item, f"{where}.offers: {offer_id} has no outbound channel ({', '.join(offer.channels)})")
        else:
            listed.append(offer_id)
    if not node.value:
        col.add(node, f"{where}.offers: expected at least one offer")
    return tuple(dict.fromkeys(listed))


def _outbound(offer: OfferSpec, channels: Mapping[str, ChannelSpec]) -> bool:
    return any(c in channels and channels[c].direction == "outbound" for c in offer.channels)


def _event_fields(node: _Node | None, where: str, col: Collector, event: str) -> dict[str, object]:
    if node is None:
        return {}
    if not event:
        col.add(node, f"{where}.event_fields: needs event: (the type whose fields these are)")
        return {}
    if not isinstance(node.value, dict):
        col.add(node, f"{where}.event_fields: expected a mapping of field to value")
        return {}
    out: dict[str, object] = {}
    for name, (key_node, value_node) in node.value.items():
        if name not in EVENT_FIELDS[event]:
            col.add(key_node, f"{where}.event_fields: {event} has no field {name!r} ({', '.join(EVENT_FIELDS[event])})")
        elif isinstance(value_node.value, (dict, list)) or value_node.value is None:
            col.add(
                value_node, f"{where}.event_fields.{name}: expected a number or a text, got {shown(value_node.value)}"
            )
        else:
            out[str(name)] = value_node.value
    return out


def _schedule(node: _Node | None, where: str, col: Collector) -> str:
    if node is None:
        return "once"
    text = col.text(node, where, "once").strip()
    if text != "once":
        try:
            check_cron(text)
        except ValueError as exc:
            col.add(node, f"{where}: {exc}")
    return text


def check_cron(text: str) -> None:
    """Raise ValueError unless ``text`` is a cron expression of five fields (``*``, ``*/n``, ``a``, ``a-b``,
    ``a-b/n``, and lists of them).

    >>> check_cron("0 9 * * 1-5")
    >>> check_cron("0 9 * *")
    Traceback (most recent call last):
      ...
    ValueError: expected once, or five cron fields (minute hour day-of-month month day-of-week), got '0 9 * *'
    """
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"expected once, or five cron fields (minute hour day-of-month month day-of-week), got {text!r}"
        )
    for part, (name, low, high) in zip(parts, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            body, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"{name}: bad step {step!r} in {item!r}")
            if body == "*":
                continue
            ends = body.split("-")
            if len(ends) > 2 or not all(e.isdigit() for e in ends):
                raise ValueError(f"{name}: {item!r} is not *, a number, a range a-b, or a step */n")
            for end in ends:
                if not low <= int(end) <= high:
                    raise ValueError(f"{name}: {end} is not in {low}..{high}")
            if len(ends) == 2 and int(ends[0]) > int(ends[1]):
                raise ValueError(f"{name}: range {body} goes backwards")


def _timezone(node: _Node | None, where: str, col: Collector) -> str:
    if node is None:
        return "UTC"
    zone = col.text(node, where, "UTC")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        col.add(node, f"{where}: unknown time zone {zone!r} (an IANA name such as Europe/Madrid)")
        return "UTC"
    return zone


def _limits(
    node: _Node | None, where: str, col: Collector, channels: Mapping[str, ChannelSpec]
) -> tuple[dict[str, int], int | None]:
    if node is None:
        return {}, None
    fields = col.mapping(node, where, {"max_per_channel", "max_total"})
    if fields is None:
        return {}, None
    per_channel: dict[str, int] = {}
    per = fields.get("max_per_channel")
    if per is not None:
        if not isinstance(per.value, dict):
            col.add(per, f"{where}.max_per_channel: expected a mapping of channel to number, e.g. {{push: 5000}}")
        else:
            for channel, (key_node, value_node) in per.value.items():
                if channel not in channels or channels[channel].direction != "outbound":
                    known = ", ".join(c.id for c in channels.values() if c.direction == "outbound")
                    col.add(key_node, f"{where}.max_per_channel: {channel!r} is not an outbound channel ({known})")
                    continue
                count = _count(value_node, f"{where}.max_per_channel.{channel}", col)
                if count is not None:
                    per_channel[str(channel)] = count
    total = _count(fields["max_total"], f"{where}.max_total", col) if "max_total" in fields else None
    return per_channel, total


def _count(node: _Node, where: str, col: Collector) -> int | None:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        col.add(node, f"{where}: expected a whole number >= 0, got {shown(value)}")
        return None
    return value


def _window(node: _Node | None, where: str, col: Collector) -> tuple[int, int] | None:
    """(start, end) in minutes after the customer's local midnight, from ``{start: '09:00', end: '20:00'}``."""
    if node is None:
        return None
    fields = col.mapping(node, where, {"start", "end"}, required=("start", "end"))
    if fields is None or "start" not in fields or "end" not in fields:
        return None
    minutes = []
    for key in ("start", "end"):
        match = _CLOCK.match(str(fields[key].value))
        if match is None:
            col.add(fields[key], f"{where}.{key}: expected a time HH:MM in quotes, got {shown(fields[key].value)}")
            return None
        minutes.append(int(match.group(1)) * 60 + int(match.group(2)))
    if minutes[0] == minutes[1]:
        col.add(node, f"{where}: start and end are the same time (an empty window)")
        return None
    return minutes[0], minutes[1]
