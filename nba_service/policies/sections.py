"""Readers of the ``settings``, ``places`` and ``channels`` sections of a policy file.

Each reader takes the section's node and the file's :class:`Collector`,
records every problem there and returns what it could read, with the node
each item came from (the parser reports duplicates and cross-references at
those nodes). The ``offers`` section is read by
:mod:`nba_service.policies.offer_section`.

>>> from nba_service.policies.yaml_source import read_documents
>>> col = Collector("channels.yaml")
>>> [root] = read_documents("- {id: sms, quiet_hours: {start: '21:00', end: '08:00'}}", col)
>>> [(spec.id, spec.quiet_hours) for spec, _ in parse_channels(root, col)], col.issues
([('sms', (1260, 480))], [])
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

from nba_service.policies.compiler import Definitions, ExpressionError, parse_condition
from nba_service.policies.content_section import parse_channel_content, parse_language
from nba_service.policies.holiday_calendar import supported_countries
from nba_service.policies.model import CHANNEL_DIRECTIONS, QUIET_HOURS_ACTIONS, ChannelSpec, GlobalSettings, Place
from nba_service.policies.offer_section import parse_window
from nba_service.policies.rule_functions import FUNCTIONS
from nba_service.policies.scope import SCOPE_NAMES
from nba_service.policies.yaml_source import IDENTIFIER, Collector, _Node, shown

__all__ = [
    "parse_channels",
    "parse_conditions",
    "parse_places",
    "parse_settings",
    "settings_limit_directions",
    "settings_limit_targets",
]

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_SETTINGS_KEYS = {
    "no_action_threshold",
    "preferred_channel_boost",
    "levers",
    "contact_limits",
    "conditions",
    "sensitive",
    "holidays",
    "default_language",
    "accepted_window",
}
_PLACE_KEYS = {"id", "name", "kind", "latitude", "longitude"}
_LEVER_KEYS = {"global", "categories"}
_HOLIDAY_KEYS = {"countries", "subdivisions"}
MAX_HOLIDAY_COUNTRIES = 50
"""Countries a policy set may name in ``settings.holidays`` (each one's holidays are computed per year)."""
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CHANNEL_KEYS = {
    "id",
    "name",
    "needs_reachable",
    "default_consent",
    "available_when",
    "quiet_hours",
    "cost",
    "direction",
    "on_quiet_hours",
    "defer_weight",
    "content",
}


# --- settings -------------------------------------------------------------------------


def parse_settings(node: _Node, col: Collector) -> tuple[GlobalSettings, dict[str, _Node]]:
    """The settings, and the node of each category named in ``levers.categories`` (checked later)."""
    fields = col.mapping(node, "settings", _SETTINGS_KEYS)
    if fields is None:
        return GlobalSettings(), {}
    threshold = col.number(fields.get("no_action_threshold"), "settings.no_action_threshold", 0.0, low=0)
    boost = col.number(fields.get("preferred_channel_boost"), "settings.preferred_channel_boost", 1.0, low=0)
    global_lever, category_levers, lever_nodes = _parse_levers(fields.get("levers"), col)
    limits = [limit for limit, _ in col.limits(fields.get("contact_limits"), "settings.contact_limits", True)]
    sensitive = tuple(dict.fromkeys(name for name, _ in col.ident_list(fields.get("sensitive"), "settings.sensitive")))
    countries, subdivisions = _parse_holidays(fields.get("holidays"), col)
    settings = GlobalSettings(
        threshold,
        boost,
        global_lever,
        category_levers,
        tuple(limits),
        sensitive,
        holiday_countries=countries,
        holiday_subdivisions=subdivisions,
        default_language=parse_language(fields.get("default_language"), "settings.default_language", col),
        accepted_window_seconds=_parse_accepted_window(fields.get("accepted_window"), col),
    )
    return settings, lever_nodes


def _parse_accepted_window(node: _Node | None, col: Collector) -> float:
    """``settings.accepted_window``: how long after an acceptance an offer selling the same product is not
    offered again, for the offers with a ``product`` and no window of their own (default 90d)."""
    default = GlobalSettings().accepted_window_seconds
    if node is None:
        return default
    seconds = parse_window(node, "settings.accepted_window", col)
    return default if seconds is None else seconds


def _parse_holidays(node: _Node | None, col: Collector) -> tuple[tuple[str, ...], dict[str, str]]:
    """``settings.holidays``: the countries whose public holidays rules see, and a subdivision per country."""
    if node is None:
        return (), {}
    fields = col.mapping(node, "settings.holidays", _HOLIDAY_KEYS, required=("countries",))
    if not fields or "countries" not in fields:
        return (), {}
    countries: dict[str, _Node] = {}
    listed = fields["countries"]
    if not isinstance(listed.value, list) or not listed.value:
        col.add(listed, "settings.holidays.countries: expected a list of country codes, e.g. [ES, DE]")
    elif len(listed.value) > MAX_HOLIDAY_COUNTRIES:
        col.add(listed, f"settings.holidays.countries: {len(listed.value)} countries: at most {MAX_HOLIDAY_COUNTRIES}")
    else:
        known = supported_countries()
        for i, item in enumerate(listed.value):
            where = f"settings.holidays.countries[{i}]"
            code = item.value
            if isinstance(code, bool):  # YAML 1.1 reads an unquoted NO (Norway) as false
                col.add(item, f"{where}: {shown(code)} is not a country code (YAML reads NO unquoted as false: 'NO')")
            elif not isinstance(code, str) or not _COUNTRY.match(code) or code not in known:
                col.add(
                    item,
                    f"{where}: unknown country {shown(code)}: an ISO 3166-1 two-letter code the holidays package"
                    " knows, in capitals (ES, DE, GB, US, ...)",
                )
            elif code in countries:
                col.add(item, f"{where}: {code} is listed twice")
            else:
                countries[code] = item
    return tuple(countries), _parse_subdivisions(fields.get("subdivisions"), countries, col)


def _parse_subdivisions(node: _Node | None, countries: Mapping[str, _Node], col: Collector) -> dict[str, str]:
    """``settings.holidays.subdivisions``: country -> the subdivision whose holidays count too."""
    if node is None:
        return {}
    if not isinstance(node.value, dict):
        col.add(node, "settings.holidays.subdivisions: expected a mapping of country to subdivision, e.g. {ES: MD}")
        return {}
    out: dict[str, str] = {}
    for country, (key_node, value_node) in node.value.items():
        where = f"settings.holidays.subdivisions.{country}"
        if country not in countries:
            col.add(key_node, f"{where}: {country!r} is not one of settings.holidays.countries")
            continue
        known = supported_countries()[country]
        code = value_node.value
        if not isinstance(code, str) or code not in known:
            listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            col.add(value_node, f"{where}: unknown subdivision {shown(code)} of {country} (known: {listed or 'none'})")
            continue
        out[country] = code
    return out


def _parse_levers(node: _Node | None, col: Collector) -> tuple[float, dict[str, float], dict[str, _Node]]:
    """``settings.levers``: the global lever, the category levers and the node of each category."""
    global_lever = 1.0
    category_levers: dict[str, float] = {}
    lever_nodes: dict[str, _Node] = {}
    if node is None:
        return global_lever, category_levers, lever_nodes
    levers = col.mapping(node, "settings.levers", _LEVER_KEYS) or {}
    global_lever = col.number(levers.get("global"), "settings.levers.global", 1.0, low=0)
    if "categories" in levers:
        cats = levers["categories"]
        if not isinstance(cats.value, dict):
            col.add(cats, "settings.levers.categories: expected a mapping of category to multiplier")
        else:
            for name, (key_node, value_node) in cats.value.items():
                category_levers[name] = col.number(value_node, f"settings.levers.categories.{name}", 1.0, low=0)
                lever_nodes[name] = key_node
    return global_lever, category_levers, lever_nodes


def settings_limit_targets(node: _Node) -> list[tuple[str, str, _Node]]:
    """(channel or category, its name, its node) of every settings contact limit."""
    found = []
    if isinstance(node.value, dict) and "contact_limits" in node.value:
        limits = node.value["contact_limits"][1]
        if isinstance(limits.value, list):
            for item in limits.value:
                for kind in ("channel", "category"):
                    if isinstance(item.value, dict) and kind in item.value:
                        target = item.value[kind][1]
                        found.append((kind, str(target.value), target))
    return found


def settings_limit_directions(node: _Node) -> list[tuple[str | None, str, _Node]]:
    """(category or None, direction, its node) of every settings contact limit not narrowed to a channel that
    names its direction, outbound or inbound: such a limit must count some channel's contacts."""
    found = []
    if isinstance(node.value, dict) and "contact_limits" in node.value:
        limits = node.value["contact_limits"][1]
        if isinstance(limits.value, list):
            for item in limits.value:
                if not isinstance(item.value, dict) or "channel" in item.value or "direction" not in item.value:
                    continue  # left out: such a limit counts every channel if it covers none of the default's
                direction = item.value["direction"][1].value
                if direction not in ("outbound", "inbound"):
                    continue
                category = item.value["category"][1].value if "category" in item.value else None
                found.append((category if isinstance(category, str) else None, direction, item))
    return found


def parse_conditions(
    settings: tuple[_Node, Collector] | None, places: Mapping[str, Place]
) -> tuple[dict[str, str], Definitions]:
    """Named conditions from settings, parsed, and checked once as if used by any event type."""
    kinds = frozenset(p.kind for p in places.values())
    if settings is None:
        return {}, Definitions(place_kinds=kinds)
    node, col = settings
    raw = node.value.get("conditions") if isinstance(node.value, dict) else None
    if raw is None:
        return {}, Definitions(place_kinds=kinds)
    conditions_node = raw[1]
    if not isinstance(conditions_node.value, dict):
        col.add(conditions_node, "settings.conditions: expected a mapping of name to expression")
        return {}, Definitions(place_kinds=kinds)
    sources, parsed = _read_conditions(conditions_node, col)
    definitions = Definitions(conditions=parsed, place_kinds=kinds)
    for name, (_, value_node) in conditions_node.value.items():
        if name in parsed:  # whitelist, names and functions, with the fields of any event type
            col.definitions = definitions
            col.expression(value_node, f"settings.conditions.{name}", None)
    return sources, definitions


def _read_conditions(node: _Node, col: Collector) -> tuple[dict[str, str], dict[str, ast.expr]]:
    """The source and the parsed (not yet checked) body of each well-formed named condition."""
    sources: dict[str, str] = {}
    parsed = {}
    for name, (key_node, value_node) in node.value.items():
        where = f"settings.conditions.{name}"
        if not IDENTIFIER.match(name) or name in SCOPE_NAMES or name in FUNCTIONS:
            col.add(key_node, f"{where}: {name!r} cannot name a condition (use lower case, not a built-in name)")
            continue
        if not isinstance(value_node.value, str):
            col.add(value_node, f"{where}: expected an expression in quotes, got {shown(value_node.value)}")
            continue
        try:
            parsed[name] = parse_condition(value_node.value)
        except ExpressionError as exc:
            col.add(value_node, f"{where}: {exc.message}")
            continue
        sources[name] = value_node.value
    return sources, parsed


# --- places ---------------------------------------------------------------------------


def parse_places(node: _Node, col: Collector) -> list[tuple[Place, _Node]]:
    """The places of one ``places`` section, each with its node."""
    if not isinstance(node.value, list):
        col.add(node, "places: expected a list of places")
        return []
    out = []
    for i, item in enumerate(node.value):
        where = f"places[{i}]"
        fields = col.mapping(item, where, _PLACE_KEYS, required=("id", "kind", "latitude", "longitude"))
        if fields is None or any(k not in fields for k in ("id", "kind", "latitude", "longitude")):
            continue
        place_id = col.ident(fields["id"], f"{where}.id")
        out.append(
            (
                Place(
                    id=place_id,
                    name=col.text(fields.get("name"), f"{where}.name", place_id),
                    kind=col.ident(fields["kind"], f"{where}.kind"),
                    latitude=col.number(fields["latitude"], f"{where}.latitude", 0.0, low=-90, high=90),
                    longitude=col.number(fields["longitude"], f"{where}.longitude", 0.0, low=-180, high=180),
                ),
                item,
            )
        )
    return out


# --- channels -------------------------------------------------------------------------


def parse_channels(node: _Node, col: Collector) -> list[tuple[ChannelSpec, _Node]]:
    """The channels of one ``channels`` section, each with its node."""
    if not isinstance(node.value, list):
        col.add(node, "channels: expected a list of channels")
        return []
    out = []
    for i, item in enumerate(node.value):
        where = f"channels[{i}]"
        fields = col.mapping(item, where, _CHANNEL_KEYS, required=("id",))
        if fields is None or "id" not in fields:
            continue
        channel_id = col.ident(fields["id"], f"{where}.id")
        where = f"channels[{i}] ({channel_id})"
        needs_reachable = col.boolean(fields.get("needs_reachable"), f"{where}.needs_reachable", True)
        quiet_hours = _parse_quiet_hours(fields.get("quiet_hours"), f"{where}.quiet_hours", col)
        # Without a direction: a channel that needs the customer reachable sends to them (outbound).
        direction = col.choice(
            fields.get("direction"), f"{where}.direction", CHANNEL_DIRECTIONS, _OUTBOUND[needs_reachable]
        )
        on_quiet_hours = _parse_on_quiet_hours(fields, where, direction, quiet_hours, col)
        spec = ChannelSpec(
            id=channel_id,
            name=col.text(fields.get("name"), f"{where}.name", channel_id),
            needs_reachable=needs_reachable,
            default_consent=col.boolean(fields.get("default_consent"), f"{where}.default_consent", False),
            # Channel conditions run on every event type: only event.type is common to all.
            available_when=col.expression(fields.get("available_when"), f"{where}.available_when", ()),
            quiet_hours=quiet_hours,
            cost=col.number(fields.get("cost"), f"{where}.cost", 0.0, low=0),
            direction=direction,
            on_quiet_hours=on_quiet_hours,
            defer_weight=_parse_defer_weight(fields, where, on_quiet_hours, col),
            content_fields=parse_channel_content(fields.get("content"), f"{where}.content", col),
        )
        out.append((spec, item))
    return out


_OUTBOUND = {True: "outbound", False: "inbound"}


def _parse_on_quiet_hours(
    fields: Mapping[str, _Node], where: str, direction: str, quiet_hours: tuple[int, int] | None, col: Collector
) -> str:
    """``on_quiet_hours``: ``drop`` (the default) or ``defer``, which only an outbound channel with quiet hours
    can do (an inbound channel's moment is now: there is nothing to deliver later)."""
    node = fields.get("on_quiet_hours")
    action = col.choice(node, f"{where}.on_quiet_hours", QUIET_HOURS_ACTIONS, "drop")
    if action != "defer" or node is None:
        return action
    if direction != "outbound":
        col.add(
            node,
            f"{where}.on_quiet_hours: defer needs an outbound channel; this one is inbound (shown in the"
            " customer's own session, which is now or never)",
        )
        return "drop"
    if quiet_hours is None and "quiet_hours" not in fields:
        col.add(node, f"{where}.on_quiet_hours: defer needs quiet_hours, e.g. {{start: '21:00', end: '08:00'}}")
        return "drop"
    return action


def _parse_defer_weight(fields: Mapping[str, _Node], where: str, on_quiet_hours: str, col: Collector) -> float:
    """``defer_weight``: in (0, 1], 1 by default; what a deferred arm's priority is multiplied by. Only a channel
    that defers has one (a channel that drops is closed in its quiet hours: nothing to weight)."""
    node = fields.get("defer_weight")
    weight = col.number(node, f"{where}.defer_weight", 1.0, low=0, high=1, low_open=True)
    if node is None or on_quiet_hours == "defer":
        return weight
    given = fields.get("on_quiet_hours")
    if given is None or given.value == "drop":  # a refused or mistyped on_quiet_hours has its own message
        col.add(
            node,
            f"{where}.defer_weight: only a channel with on_quiet_hours: defer has one (it weights the actions the"
            " channel defers to the end of its quiet hours)",
        )
    return 1.0


def _parse_quiet_hours(node: _Node | None, where: str, col: Collector) -> tuple[int, int] | None:
    """(start, end) in minutes after local midnight, from ``{start: '21:00', end: '08:00'}``."""
    if node is None:
        return None
    fields = col.mapping(node, where, {"start", "end"}, required=("start", "end"))
    if not fields or "start" not in fields or "end" not in fields:
        return None
    minutes = []
    for key in ("start", "end"):
        raw = fields[key].value
        # YAML 1.1 reads an unquoted 21:00 as the sexagesimal number 1260.
        text = f"{raw // 60:02d}:{raw % 60:02d}" if isinstance(raw, int) and not isinstance(raw, bool) else str(raw)
        match = _HHMM.match(text)
        if not match:
            col.add(fields[key], f"{where}.{key}: {raw!r} is not a time of day like 21:00")
            return None
        minutes.append(int(match.group(1)) * 60 + int(match.group(2)))
    if minutes[0] == minutes[1]:
        col.add(node, f"{where}: start and end are the same time")
        return None
    return minutes[0], minutes[1]
