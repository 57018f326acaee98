"""Reader of the ``offers`` section of a policy file.

An offer is read field by field, each checked against the rest of the set:
its event types must exist, its channels must be declared, its rules may use
only the fields of its event types (and its own ``variables``), its content
templates only the fields every one of its events carries. Every problem is
recorded in the file's :class:`Collector`; an offer is returned even with
problems (the parser raises once the whole set has been read).

>>> from nba_service.policies.model import ChannelSpec
>>> from nba_service.policies.yaml_source import read_documents
>>> col = Collector("offers.yaml")
>>> [root] = read_documents('''
... - {id: loan, name: Loan, category: lending, events: [atm_decline], value: 15, prior: 0.1,
...    channels: [push], content: {push: "{first_name}, short of {currency} {shortfall}?"}}''', col)
>>> [(spec.id, spec.line) for spec, _ in parse_offers(root, col, {"push": ChannelSpec("push", "Push")})]
[('loan', 2)]
>>> col.issues
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.compiler import CompiledExpression
from nba_service.policies.content_section import parse_offer_content
from nba_service.policies.model import Budget, ChannelSpec, Limit, OfferSpec, Suppression
from nba_service.policies.reason_section import parse_localized_text
from nba_service.policies.rule_functions import parse_duration
from nba_service.policies.yaml_source import IDENTIFIER, Collector, _Node, shown

__all__ = ["parse_offers", "parse_window"]

_OFFER_KEYS = {
    "id",
    "name",
    "category",
    "events",
    "eligible_when",
    "value",
    "weight",
    "lever",
    "prior",
    "channels",
    "variables",
    "content",
    "limits",
    "valid_from",
    "valid_until",
    "paused",
    "budget",
    "suppress_after",
    "cost",
    "reward",
    "product",
    "accepted_window",
    "agent_script",
}
_REQUIRED = ("id", "name", "category", "events", "value", "prior", "channels", "content")
_PROFILE_TEMPLATE_FIELDS = ("first_name", "segment")
_VARIABLE_KEYS = {"expression", "max_len"}


def parse_offers(node: _Node, col: Collector, channels: Mapping[str, ChannelSpec]) -> list[tuple[OfferSpec, _Node]]:
    """The offers of one ``offers`` section, each with its node; ``channels`` are the set's declared channels."""
    if not isinstance(node.value, list):
        col.add(node, "offers: expected a list of offers")
        return []
    out = []
    for i, item in enumerate(node.value):
        spec = _parse_offer(i, item, col, channels)
        if spec is not None:
            out.append((spec, item))
    return out


def _parse_offer(i: int, item: _Node, col: Collector, channels: Mapping[str, ChannelSpec]) -> OfferSpec | None:
    """Offer number ``i``; None when it is not a mapping with an id."""
    fields = col.mapping(item, f"offers[{i}]", _OFFER_KEYS, required=_REQUIRED)
    if fields is None or "id" not in fields:
        return None
    offer_id = col.ident(fields["id"], f"offers[{i}].id")
    where = f"offers[{i}] ({offer_id})"
    events, offer_channels = _events_and_channels(fields, where, col, channels)
    variables, variable_bounds = _parse_variables(fields.get("variables"), where, col, events)
    content, channel_content = parse_offer_content(
        fields.get("content"),
        where,
        col,
        offer_channels,
        channels,
        _template_fields(events, variables),
        variable_bounds,
        variables,
    )
    valid_from, valid_until = _parse_validity(fields, where, col)
    limits = _parse_offer_limits(fields.get("limits"), where, col, offer_channels, channels)
    name = col.text(fields.get("name"), f"{where}.name", offer_id)
    category = col.ident(fields.get("category"), f"{where}.category") if "category" in fields else ""
    value, value_expression = _parse_value(fields.get("value"), where, col, events, variables)
    return OfferSpec(
        id=offer_id,
        name=name,
        category=category,
        events=tuple(events),
        value=value,
        value_expression=value_expression,
        cost=col.number(fields.get("cost"), f"{where}.cost", 0.0, low=0),
        reward=_parse_reward(fields.get("reward"), f"{where}.reward", col),
        prior=col.number(fields.get("prior"), f"{where}.prior", 0.05, low=0, high=1, low_open=True, high_open=True),
        channels=tuple(offer_channels),
        content=content,
        weight=col.number(fields.get("weight"), f"{where}.weight", 1.0, low=0),
        lever=col.number(fields.get("lever"), f"{where}.lever", 1.0, low=0),
        eligible_when=col.expression(fields.get("eligible_when"), f"{where}.eligible_when", events),
        variables=variables,
        limits=tuple(limits),
        budget=_parse_budget(fields.get("budget"), f"{where}.budget", col),
        suppress_after=_parse_suppression(fields.get("suppress_after"), f"{where}.suppress_after", col),
        valid_from=valid_from,
        valid_until=valid_until,
        paused=col.boolean(fields.get("paused"), f"{where}.paused", False),
        product=col.ident(fields["product"], f"{where}.product") if "product" in fields else "",
        accepted_window_seconds=_parse_accepted_window(fields, where, col),
        agent_script=parse_localized_text(
            fields["agent_script"], f"{where}.agent_script", col, _template_fields(events, variables)
        )
        if "agent_script" in fields
        else None,
        file=col.file,
        line=item.line,
        channel_content=channel_content,
        variable_bounds=variable_bounds,
    )


def _events_and_channels(
    fields: Mapping[str, _Node], where: str, col: Collector, channels: Mapping[str, ChannelSpec]
) -> tuple[list[str], list[str]]:
    """The offer's event types and channels; an empty list is a problem only when nothing else is wrong."""
    before = len(col.issues)
    events = []
    for event_type, event_node in col.ident_list(fields.get("events"), f"{where}.events"):
        if event_type and event_type not in EVENT_FIELDS:
            col.add(event_node, f"{where}.events: unknown event type {event_type!r} (known: {', '.join(EVENT_FIELDS)})")
        else:
            events.append(event_type)
    if "events" in fields and not events and len(col.issues) == before:
        col.add(fields["events"], f"{where}.events: list at least one event type")
    offer_channels = []
    for channel_id, channel_node in col.ident_list(fields.get("channels"), f"{where}.channels"):
        if channel_id and channel_id not in channels:
            declared = ", ".join(channels) or "none"
            col.add(channel_node, f"{where}.channels: unknown channel {channel_id!r} (declared: {declared})")
        else:
            offer_channels.append(channel_id)
    if "channels" in fields and not offer_channels and len(col.issues) == before:
        col.add(fields["channels"], f"{where}.channels: no channel can deliver this offer")
    return events, offer_channels


def _parse_variables(
    node: _Node | None, where: str, col: Collector, events: list[str]
) -> tuple[dict[str, CompiledExpression], dict[str, int]]:
    """``variables``: name -> expression, usable in the offer's rules, value and content; or name ->
    ``{expression: ..., max_len: N}``, N the characters its value takes at most in content with a limit.
    Returns the variables and the declared ``max_len`` of each that has one."""
    variables: dict[str, CompiledExpression] = {}
    bounds: dict[str, int] = {}
    if node is None:
        return variables, bounds
    if not isinstance(node.value, dict):
        col.add(node, f"{where}.variables: expected a mapping of name to expression")
        return variables, bounds
    for name, (key_node, value_node) in node.value.items():
        if not IDENTIFIER.match(name):
            col.add(key_node, f"{where}.variables: {name!r} is not a valid name")
            continue
        here = f"{where}.variables.{name}"
        if isinstance(value_node.value, dict):
            fields = col.mapping(value_node, here, _VARIABLE_KEYS, required=("expression",))
            if not fields or "expression" not in fields:
                continue
            value_node = fields["expression"]
            if "max_len" in fields:
                max_len = fields["max_len"].value
                if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
                    col.add(fields["max_len"], f"{here}.max_len: expected a whole number >= 1, got {shown(max_len)}")
                else:
                    bounds[name] = max_len
        compiled = col.expression(value_node, here, events)
        if compiled is not None:
            variables[name] = compiled
    return variables, bounds


MAX_ACCEPTED_WINDOW_SECONDS = 365 * 86400.0
"""The longest ``accepted_window``: accepted offers are kept a year (``store.state.ACCEPTED_KEPT_SECONDS``)."""


def _parse_accepted_window(fields: Mapping[str, _Node], where: str, col: Collector) -> float | None:
    """``accepted_window``: how long after an acceptance the offer's product is not offered again (None: the
    set's ``settings.accepted_window``); only with a ``product``."""
    node = fields.get("accepted_window")
    if node is None:
        return None
    if "product" not in fields:
        col.add(node, f"{where}.accepted_window: only an offer that declares the product it sells has one")
        return None
    return parse_window(node, f"{where}.accepted_window", col)


def parse_window(node: _Node, where: str, col: Collector) -> float | None:
    """An ``accepted_window`` duration (``90d``), at most a year."""
    try:
        seconds = parse_duration(node.value)
    except ValueError as exc:
        col.add(node, f"{where}: {exc}")
        return None
    if seconds > MAX_ACCEPTED_WINDOW_SECONDS:
        col.add(node, f"{where}: at most 365d (accepted offers are kept for a year)")
        return None
    return seconds


def _parse_validity(fields: Mapping[str, _Node], where: str, col: Collector) -> tuple[float | None, float | None]:
    """``valid_from`` and ``valid_until`` as Unix times (None: open-ended)."""
    valid_from = col.timestamp(fields.get("valid_from"), f"{where}.valid_from")
    valid_until = col.timestamp(fields.get("valid_until"), f"{where}.valid_until")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        col.add(fields["valid_until"], f"{where}.valid_until: the offer ends before it starts")
    return valid_from, valid_until


def _parse_offer_limits(
    node: _Node | None,
    where: str,
    col: Collector,
    offer_channels: list[str],
    channels: Mapping[str, ChannelSpec],
) -> list[Limit]:
    """The offer's own contact limits; one narrowed to a channel must name one of the offer's channels, any
    other must count some of them (its direction, outbound by default, is the direction of one of them)."""
    limits = []
    for limit, limit_node in col.limits(node, f"{where}.limits", False):
        if limit.channel and limit.channel not in offer_channels:
            col.add(limit_node, f"{where}.limits: channel {limit.channel!r} is not one of this offer's channels")
        elif (
            not limit.channel
            and limit.direction_given
            and limit.direction != "any"
            and offer_channels
            and not any(c in channels and channels[c].direction == limit.direction for c in offer_channels)
        ):
            col.add(
                limit_node,
                f"{where}.limits: {limit.describe()} counts {limit.direction} contacts only, and none of this"
                f" offer's channels ({', '.join(offer_channels)}) is {limit.direction}: it would never count"
                " one. Say direction: any (every channel) or the direction of its channels",
            )
        limits.append(limit)
    return limits


def _parse_value(
    node: _Node | None, where: str, col: Collector, events: list[str], variables: Mapping[str, CompiledExpression]
) -> tuple[float, CompiledExpression | None]:
    """``value``: a positive number, or an expression computed per request (the number is then 1)."""
    if node is not None and isinstance(node.value, str):
        return 1.0, col.expression(node, f"{where}.value", events, variables)
    return col.number(node, f"{where}.value", 1.0, low=0, low_open=True), None


def _parse_reward(node: _Node | None, where: str, col: Collector) -> str:
    """The outcome the model learns as success: ``accepted`` (the default) or ``converted``."""
    if node is None:
        return "accepted"
    if node.value not in ("accepted", "converted"):
        col.add(node, f"{where}: expected accepted or converted, got {shown(node.value)}")
        return "accepted"
    return str(node.value)


def _count_and_window(node: _Node | None, where: str, col: Collector, count_key: str) -> tuple[int, float, str] | None:
    """(count, window seconds, window as written) of ``{<count_key>: N, per: 1d}``."""
    if node is None:
        return None
    fields = col.mapping(node, where, {count_key, "per"}, required=(count_key, "per"))
    if not fields or count_key not in fields or "per" not in fields:
        return None
    count = fields[count_key].value
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        col.add(fields[count_key], f"{where}.{count_key}: expected a whole number >= 1, got {count!r}")
        return None
    try:
        seconds = parse_duration(fields["per"].value)
    except ValueError as exc:
        col.add(fields["per"], f"{where}.per: {exc}")
        return None
    return count, seconds, str(fields["per"].value)


def _parse_budget(node: _Node | None, where: str, col: Collector) -> Budget | None:
    parsed = _count_and_window(node, where, col, "max")
    return Budget(*parsed) if parsed else None


def _parse_suppression(node: _Node | None, where: str, col: Collector) -> Suppression | None:
    parsed = _count_and_window(node, where, col, "declines")
    if parsed and parsed[1] > 365 * 86400:  # declines are kept a year (store.state.DECLINES_KEPT_SECONDS)
        col.add(node, f"{where}.per: at most 365d (declines are kept for a year)")
        return None
    return Suppression(*parsed) if parsed else None


def _template_fields(events: Iterable[str], variables: Iterable[str]) -> set[str]:
    """The fields a content template may use: those every one of the events carries, profile fields, variables."""
    fields: set[str] | None = None
    for event_type in events:
        these = set(EVENT_FIELDS[event_type])
        fields = these if fields is None else fields & these
    return set(fields or ()) | set(_PROFILE_TEMPLATE_FIELDS) | set(variables)
