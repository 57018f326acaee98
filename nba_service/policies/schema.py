"""Policy set schema: YAML files -> validated, compiled policy objects.

Every problem is reported with the file, line and column it comes from, all of
them at once, so a marketer fixes a set in one pass::

    policies/bank.yaml:42:20: offers[3].eligible_when: unknown field event.amout (...)

Nothing here touches Redis; :mod:`nba_service.store.policy_store` stores and
versions what this module accepts.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import pathlib
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from nba_service.domain import EVENT_FIELDS
from nba_service.domain.timestamps import parse_iso, to_unix
from nba_service.policies.expressions import (
    FUNCTIONS,
    SCOPE_NAMES,
    CompiledExpression,
    Definitions,
    ExpressionError,
    compile_expression,
    parse_condition,
    parse_duration,
)

__all__ = [
    "Budget",
    "ChannelSpec",
    "GlobalSettings",
    "Limit",
    "OfferSpec",
    "Place",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "Suppression",
    "load_policy_dir",
    "parse_policy_files",
    "read_policy_dir",
]

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_TOP_KEYS = {"settings", "channels", "offers", "places"}
_SETTINGS_KEYS = {"no_action_threshold", "preferred_channel_boost", "levers", "contact_limits", "conditions"}
_PLACE_KEYS = {"id", "name", "kind", "latitude", "longitude"}
_LEVER_KEYS = {"global", "categories"}
_CHANNEL_KEYS = {"id", "name", "needs_reachable", "default_consent", "available_when", "quiet_hours", "cost"}
_OFFER_KEYS = {
    "id", "name", "category", "events", "eligible_when", "value", "weight", "lever", "prior",
    "channels", "variables", "content", "limits", "valid_from", "valid_until", "paused", "budget", "suppress_after",
    "cost", "reward",
}
_LIMIT_KEYS = {"max", "per", "channel", "category"}
_PROFILE_TEMPLATE_FIELDS = ("first_name", "segment")


# --- results --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class PolicyIssue:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyValidationError(ValueError):
    """The policy set is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        head = f"{len(issues)} problem(s) in the policy set"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in issues))


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """At most ``max`` contacts within ``per_seconds``, narrowed to a channel or category."""

    max: int
    per_seconds: float
    per: str
    channel: str | None = None
    category: str | None = None

    def describe(self) -> str:
        scope = f" on {self.channel}" if self.channel else f" in {self.category}" if self.category else ""
        return f"at most {self.max}{scope} per {self.per}"


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """At most ``max`` sends of an offer over all customers per fixed window (e.g. per day, UTC)."""

    max: int
    per_seconds: float
    per: str


@dataclasses.dataclass(frozen=True, slots=True)
class Suppression:
    """After ``declines`` declines (or dismissals) of an offer within ``per``, stop offering it."""

    declines: int
    per_seconds: float
    per: str


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelSpec:
    id: str
    name: str
    needs_reachable: bool = True
    default_consent: bool = False
    available_when: CompiledExpression | None = None
    quiet_hours: tuple[int, int] | None = None
    """(start, end) in minutes after local midnight; may wrap past midnight."""
    cost: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class OfferSpec:
    id: str
    name: str
    category: str
    events: tuple[str, ...]
    value: float
    prior: float
    channels: tuple[str, ...]
    content: Mapping[str, str]
    weight: float = 1.0
    lever: float = 1.0
    cost: float = 0.0
    """What sending the offer costs (a voucher, a discount), subtracted from its value."""
    reward: str = "accepted"
    """The outcome the model learns as success: ``accepted`` (or converted) or ``converted`` only."""
    value_expression: CompiledExpression | None = None
    """When ``value`` is an expression (e.g. a share of the cart), computed per request."""
    eligible_when: CompiledExpression | None = None
    variables: Mapping[str, CompiledExpression] = dataclasses.field(default_factory=dict)
    limits: tuple[Limit, ...] = ()
    budget: Budget | None = None
    suppress_after: Suppression | None = None
    valid_from: float | None = None
    valid_until: float | None = None
    paused: bool = False
    file: str = ""
    line: int = 0

    def template_for(self, channel: str) -> str:
        return self.content.get(channel) or self.content.get("default", "")


@dataclasses.dataclass(frozen=True, slots=True)
class GlobalSettings:
    no_action_threshold: float = 0.0
    preferred_channel_boost: float = 1.0
    global_lever: float = 1.0
    category_levers: Mapping[str, float] = dataclasses.field(default_factory=dict)
    contact_limits: tuple[Limit, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """A branch, partner shop or ATM that geolocated rules can measure distances to."""

    id: str
    name: str
    kind: str
    latitude: float
    longitude: float


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySet:
    settings: GlobalSettings
    channels: tuple[ChannelSpec, ...]
    offers: tuple[OfferSpec, ...]
    files: Mapping[str, str]
    """The source text of every file, by name: what gets published and versioned."""
    places: tuple[Place, ...] = ()
    conditions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Named conditions (their source), usable by name in every rule."""

    def places_by_kind(self) -> dict[str, tuple[Place, ...]]:
        kinds: dict[str, list[Place]] = {}
        for place in self.places:
            kinds.setdefault(place.kind, []).append(place)
        return {kind: tuple(found) for kind, found in kinds.items()}


# --- YAML with positions --------------------------------------------------------------

class _Node:
    """A parsed YAML value with the position it came from."""

    __slots__ = ("column", "line", "quoted", "value")

    def __init__(self, value: Any, line: int, column: int, quoted: bool = False) -> None:
        self.value = value
        self.line = line
        self.column = column
        self.quoted = quoted


def _to_nodes(node: yaml.Node) -> _Node:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, tuple[_Node, _Node]] = {}
        for key_node, value_node in node.value:
            key = _to_nodes(key_node)
            if str(key.value) in mapping:
                raise _DuplicateKey(key)
            mapping[str(key.value)] = (key, _to_nodes(value_node))
        return _Node(mapping, line, column)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_to_nodes(item) for item in node.value], line, column)
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    try:
        value = _SCALAR_LOADER.construct_object(node)
    except ValueError as exc:  # e.g. an unquoted date that does not exist: 2026-02-30
        raise _BadScalar(_Node(node.value, line, column), str(exc)) from None
    return _Node(value, line, column, quoted)


class _DuplicateKey(Exception):
    def __init__(self, key: _Node) -> None:
        self.key = key


class _BadScalar(Exception):
    def __init__(self, node: _Node, reason: str) -> None:
        self.node = node
        self.reason = reason


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_SCALAR_LOADER = yaml.SafeLoader("")


class _Collector:
    """Collects issues for one file while walking its nodes."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[PolicyIssue] = []
        self.definitions = Definitions()
        """The set's named conditions and place kinds, known once settings and places are read."""

    def add(self, node: _Node | None, message: str, line_offset: int = 0, column: int | None = None) -> None:
        line = (node.line if node else 1) + line_offset
        col = column if column is not None else (node.column if node else 1)
        self.issues.append(PolicyIssue(self.file, line, col, message))

    def mapping(self, node: _Node, where: str, allowed: set[str], required: Iterable[str] = ()) -> dict[str, _Node] | None:
        if not isinstance(node.value, dict):
            self.add(node, f"{where}: expected a mapping of keys to values")
            return None
        out: dict[str, _Node] = {}
        for key, (key_node, value_node) in node.value.items():
            if key not in allowed:
                self.add(key_node, f"{where}: unknown field {key!r} (allowed: {', '.join(sorted(allowed))})")
                continue
            out[key] = value_node
        for key in required:
            if key not in out and key in allowed:
                self.add(node, f"{where}: missing required field {key!r}")
        return out

    def number(self, node: _Node | None, where: str, default: float, low: float | None = None,
               high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
        if node is None:
            return default
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.add(node, f"{where}: expected a number, got {value!r}")
            return default
        if low is not None and (value < low or (low_open and value == low)):
            self.add(node, f"{where}: {value} must be {'>' if low_open else '>='} {low}")
        if high is not None and (value > high or (high_open and value == high)):
            self.add(node, f"{where}: {value} must be {'<' if high_open else '<='} {high}")
        return float(value)

    def boolean(self, node: _Node | None, where: str, default: bool) -> bool:
        if node is None:
            return default
        if not isinstance(node.value, bool):
            self.add(node, f"{where}: expected true or false, got {node.value!r}")
            return default
        return node.value

    def text(self, node: _Node | None, where: str, default: str = "") -> str:
        if node is None:
            return default
        if not isinstance(node.value, str) or not node.value.strip():
            self.add(node, f"{where}: expected non-empty text, got {_shown(node.value)}"
                           + (" (text starting with { must be quoted)" if isinstance(node.value, dict) else ""))
            return default
        return node.value

    def ident(self, node: _Node | None, where: str) -> str:
        value = self.text(node, where)
        if value and not _ID.match(value):
            self.add(node, f"{where}: {value!r} is not an id (lower case letters, digits and _, starting with a letter)")
        return value

    def ident_list(self, node: _Node | None, where: str) -> list[tuple[str, _Node]]:
        if node is None:
            return []
        if not isinstance(node.value, list):
            self.add(node, f"{where}: expected a list")
            return []
        return [(self.ident(item, f"{where}[{i}]"), item) for i, item in enumerate(node.value)]

    def expression(self, node: _Node | None, where: str, event_types: Iterable[str] | None = (),
                   extra_names: Iterable[str] = ()) -> CompiledExpression | None:
        if node is None:
            return None
        source = node.value
        if not isinstance(source, str):
            self.add(node, f"{where}: expected an expression in quotes, got {source!r}")
            return None
        try:
            return compile_expression(source, event_types=event_types, extra_names=extra_names,
                                      filename=f"{self.file}:{node.line}", definitions=self.definitions)
        except ExpressionError as exc:
            # Point into the expression when it sits on one line (plain or quoted scalar).
            column = node.column + (exc.column - 1) + (1 if node.quoted else 0)
            self.add(node, f"{where}: {exc.message}", line_offset=exc.line - 1,
                     column=column if exc.line == 1 else exc.column)
            return None

    def limits(self, node: _Node | None, where: str, allow_category: bool) -> list[tuple[Limit, _Node]]:
        if node is None:
            return []
        if not isinstance(node.value, list):
            self.add(node, f"{where}: expected a list of limits")
            return []
        out = []
        allowed = _LIMIT_KEYS if allow_category else _LIMIT_KEYS - {"category"}
        for i, item in enumerate(node.value):
            here = f"{where}[{i}]"
            fields = self.mapping(item, here, allowed, required=("max", "per"))
            if fields is None or "max" not in fields or "per" not in fields:
                continue
            maximum = fields["max"].value
            if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0:
                self.add(fields["max"], f"{here}.max: expected a whole number >= 0, got {maximum!r}")
                continue
            try:
                seconds = parse_duration(fields["per"].value)
            except ValueError as exc:
                self.add(fields["per"], f"{here}.per: {exc}")
                continue
            channel = self.ident(fields["channel"], f"{here}.channel") if "channel" in fields else None
            category = self.ident(fields["category"], f"{here}.category") if "category" in fields else None
            if channel and category:
                self.add(item, f"{here}: a limit narrows to a channel or a category, not both")
            out.append((Limit(maximum, seconds, str(fields["per"].value), channel, category), item))
        return out

    def timestamp(self, node: _Node | None, where: str) -> float | None:
        if node is None:
            return None
        value = node.value
        if isinstance(value, (datetime.datetime, datetime.date)):
            return to_unix(value)
        if isinstance(value, str):
            try:
                return parse_iso(value)
            except ValueError:
                pass
        self.add(node, f"{where}: {value!r} is not an ISO date or date-time")
        return None


# --- parsing --------------------------------------------------------------------------

def read_policy_dir(path: str | pathlib.Path) -> dict[str, str]:
    """The text of every ``*.yaml``/``*.yml`` file in ``path``, by file name."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise PolicyValidationError([PolicyIssue(str(folder), 1, 1, "not a directory of policy files")])
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise PolicyValidationError([PolicyIssue(str(folder), 1, 1, "no *.yaml policy files in this directory")])
    return {f.name: f.read_text(encoding="utf-8") for f in files}


def load_policy_dir(path: str | pathlib.Path) -> PolicySet:
    """Read, validate and compile a policy directory."""
    return parse_policy_files(read_policy_dir(path), base=str(path))


def parse_policy_files(files: Mapping[str, str], base: str = "") -> PolicySet:
    """Validate and compile a policy set given as ``{file name: YAML text}``."""
    issues: list[PolicyIssue] = []
    settings_parts: list[tuple[_Node, _Collector]] = []
    channel_parts: list[tuple[_Node, _Collector]] = []
    offer_parts: list[tuple[_Node, _Collector]] = []
    place_parts: list[tuple[_Node, _Collector]] = []
    collectors: list[_Collector] = []
    for name in sorted(files):
        shown = str(pathlib.Path(base) / name) if base else name
        col = _Collector(shown)
        collectors.append(col)
        try:
            documents = list(yaml.compose_all(files[name], Loader=yaml.SafeLoader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            col.issues.append(PolicyIssue(shown, line, column, f"YAML: {exc.problem or exc.context}"))
            continue
        for document in documents:
            if document is None:
                continue
            try:
                root = _to_nodes(document)
            except _DuplicateKey as exc:
                col.add(exc.key, f"duplicate key {exc.key.value!r}: each key may appear once in a mapping")
                continue
            except _BadScalar as exc:
                col.add(exc.node, f"{exc.node.value!r} is not a valid value: {exc.reason}")
                continue
            top = col.mapping(root, "file", _TOP_KEYS)
            if top is None:
                continue
            if "settings" in top:
                settings_parts.append((top["settings"], col))
            if "channels" in top:
                channel_parts.append((top["channels"], col))
            if "offers" in top:
                offer_parts.append((top["offers"], col))
            if "places" in top:
                place_parts.append((top["places"], col))

    if len(settings_parts) > 1:
        node, col = settings_parts[1]
        col.add(node, "settings: defined in more than one file")
    settings, category_lever_nodes = (
        _parse_settings(*settings_parts[0]) if settings_parts else (GlobalSettings(), {})
    )
    places: dict[str, Place] = {}
    for node, col in place_parts:
        for place, item in _parse_places(node, col):
            if place.id in places:
                col.add(item, f"places: duplicate place id {place.id!r}")
            places[place.id] = place
    condition_sources, definitions = _parse_conditions(settings_parts, places)
    for col in collectors:
        col.definitions = definitions
    channels: dict[str, ChannelSpec] = {}
    for node, col in channel_parts:
        for spec, item in _parse_channels(node, col):
            if spec.id in channels:
                col.add(item, f"channels: duplicate channel id {spec.id!r}")
            channels[spec.id] = spec
    offers: dict[str, OfferSpec] = {}
    for node, col in offer_parts:
        for spec, item in _parse_offers(node, col, channels):
            if spec.id in offers:
                col.add(item, f"offers: duplicate offer id {spec.id!r} (first in {offers[spec.id].file}:{offers[spec.id].line})")
                continue
            offers[spec.id] = spec

    # Cross references that need the whole set.
    categories = {o.category for o in offers.values()}
    if settings_parts:
        _, col = settings_parts[0]
        for kind, name, node in _settings_limit_targets(settings_parts[0][0]):
            if kind == "channel" and name not in channels:
                col.add(node, f"settings.contact_limits: unknown channel {name!r}")
            if kind == "category" and name not in categories:
                col.add(node, f"settings.contact_limits: no offer has category {name!r}")
        for category, node in category_lever_nodes.items():
            if category not in categories:
                col.add(node, f"settings.levers.categories: no offer has category {category!r}")
    if not channels:
        issues.append(PolicyIssue(base or "<policy set>", 1, 1, "the policy set declares no channels"))
    for col in collectors:
        issues.extend(col.issues)
    if issues:
        issues.sort(key=lambda i: (i.file, i.line, i.column))
        raise PolicyValidationError(issues)
    return PolicySet(settings=settings, channels=tuple(channels.values()), offers=tuple(offers.values()),
                     places=tuple(places.values()), conditions=condition_sources,
                     files=dict(files))


def _parse_places(node: _Node, col: _Collector) -> list[tuple[Place, _Node]]:
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
        out.append((Place(
            id=place_id,
            name=col.text(fields.get("name"), f"{where}.name", place_id),
            kind=col.ident(fields["kind"], f"{where}.kind"),
            latitude=col.number(fields["latitude"], f"{where}.latitude", 0.0, low=-90, high=90),
            longitude=col.number(fields["longitude"], f"{where}.longitude", 0.0, low=-180, high=180),
        ), item))
    return out


def _parse_conditions(settings_parts: list[tuple[_Node, _Collector]],
                      places: Mapping[str, Place]) -> tuple[dict[str, str], Definitions]:
    """Named conditions from settings, parsed, and checked once as if used by any event type."""
    kinds = frozenset(p.kind for p in places.values())
    if not settings_parts:
        return {}, Definitions(place_kinds=kinds)
    node, col = settings_parts[0]
    raw = node.value.get("conditions") if isinstance(node.value, dict) else None
    if raw is None:
        return {}, Definitions(place_kinds=kinds)
    conditions_node = raw[1]
    if not isinstance(conditions_node.value, dict):
        col.add(conditions_node, "settings.conditions: expected a mapping of name to expression")
        return {}, Definitions(place_kinds=kinds)
    sources: dict[str, str] = {}
    parsed = {}
    for name, (key_node, value_node) in conditions_node.value.items():
        where = f"settings.conditions.{name}"
        if not _ID.match(name) or name in SCOPE_NAMES or name in FUNCTIONS:
            col.add(key_node, f"{where}: {name!r} cannot name a condition (use lower case, not a built-in name)")
            continue
        if not isinstance(value_node.value, str):
            col.add(value_node, f"{where}: expected an expression in quotes, got {_shown(value_node.value)}")
            continue
        try:
            parsed[name] = parse_condition(value_node.value)
        except ExpressionError as exc:
            col.add(value_node, f"{where}: {exc.message}")
            continue
        sources[name] = value_node.value
    definitions = Definitions(conditions=parsed, place_kinds=kinds)
    for name, (key_node, value_node) in conditions_node.value.items():
        if name in parsed:  # whitelist, names and functions, with the fields of any event type
            col.definitions = definitions
            col.expression(value_node, f"settings.conditions.{name}", None)
    return sources, definitions


def _settings_limit_targets(node: _Node) -> list[tuple[str, str, _Node]]:
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


def _parse_settings(node: _Node, col: _Collector) -> tuple[GlobalSettings, dict[str, _Node]]:
    fields = col.mapping(node, "settings", _SETTINGS_KEYS)
    if fields is None:
        return GlobalSettings(), {}
    threshold = col.number(fields.get("no_action_threshold"), "settings.no_action_threshold", 0.0, low=0)
    boost = col.number(fields.get("preferred_channel_boost"), "settings.preferred_channel_boost", 1.0, low=0)
    global_lever, category_levers, lever_nodes = 1.0, {}, {}
    if "levers" in fields:
        levers = col.mapping(fields["levers"], "settings.levers", _LEVER_KEYS) or {}
        global_lever = col.number(levers.get("global"), "settings.levers.global", 1.0, low=0)
        if "categories" in levers:
            cats = levers["categories"]
            if not isinstance(cats.value, dict):
                col.add(cats, "settings.levers.categories: expected a mapping of category to multiplier")
            else:
                for name, (key_node, value_node) in cats.value.items():
                    category_levers[name] = col.number(value_node, f"settings.levers.categories.{name}", 1.0, low=0)
                    lever_nodes[name] = key_node
    limits = [limit for limit, _ in col.limits(fields.get("contact_limits"), "settings.contact_limits", True)]
    return GlobalSettings(threshold, boost, global_lever, category_levers, tuple(limits)), lever_nodes


def _parse_quiet_hours(node: _Node | None, where: str, col: _Collector) -> tuple[int, int] | None:
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


def _parse_channels(node: _Node, col: _Collector) -> list[tuple[ChannelSpec, _Node]]:
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
        spec = ChannelSpec(
            id=channel_id,
            name=col.text(fields.get("name"), f"{where}.name", channel_id),
            needs_reachable=col.boolean(fields.get("needs_reachable"), f"{where}.needs_reachable", True),
            default_consent=col.boolean(fields.get("default_consent"), f"{where}.default_consent", False),
            # Channel conditions run on every event type: only event.type is common to all.
            available_when=col.expression(fields.get("available_when"), f"{where}.available_when", ()),
            quiet_hours=_parse_quiet_hours(fields.get("quiet_hours"), f"{where}.quiet_hours", col),
            cost=col.number(fields.get("cost"), f"{where}.cost", 0.0, low=0),
        )
        out.append((spec, item))
    return out


def _parse_offers(node: _Node, col: _Collector, channels: Mapping[str, ChannelSpec]) -> list[tuple[OfferSpec, _Node]]:
    if not isinstance(node.value, list):
        col.add(node, "offers: expected a list of offers")
        return []
    out = []
    for i, item in enumerate(node.value):
        where = f"offers[{i}]"
        fields = col.mapping(item, where, _OFFER_KEYS,
                             required=("id", "name", "category", "events", "value", "prior", "channels", "content"))
        if fields is None or "id" not in fields:
            continue
        offer_id = col.ident(fields["id"], f"{where}.id")
        where = f"offers[{i}] ({offer_id})"
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
                col.add(channel_node, f"{where}.channels: unknown channel {channel_id!r} (declared: {', '.join(channels) or 'none'})")
            else:
                offer_channels.append(channel_id)
        if "channels" in fields and not offer_channels and len(col.issues) == before:
            col.add(fields["channels"], f"{where}.channels: no channel can deliver this offer")
        variables: dict[str, CompiledExpression] = {}
        if "variables" in fields:
            vars_node = fields["variables"]
            if not isinstance(vars_node.value, dict):
                col.add(vars_node, f"{where}.variables: expected a mapping of name to expression")
            else:
                for name, (key_node, value_node) in vars_node.value.items():
                    if not _ID.match(name):
                        col.add(key_node, f"{where}.variables: {name!r} is not a valid name")
                        continue
                    compiled = col.expression(value_node, f"{where}.variables.{name}", events)
                    if compiled is not None:
                        variables[name] = compiled
        content = _parse_content(fields.get("content"), where, col, offer_channels, events, variables)
        valid_from = col.timestamp(fields.get("valid_from"), f"{where}.valid_from")
        valid_until = col.timestamp(fields.get("valid_until"), f"{where}.valid_until")
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            col.add(fields["valid_until"], f"{where}.valid_until: the offer ends before it starts")
        limits = []
        for limit, limit_node in col.limits(fields.get("limits"), f"{where}.limits", False):
            if limit.channel and limit.channel not in offer_channels:
                col.add(limit_node, f"{where}.limits: channel {limit.channel!r} is not one of this offer's channels")
            limits.append(limit)
        spec = OfferSpec(
            id=offer_id,
            name=col.text(fields.get("name"), f"{where}.name", offer_id),
            category=col.ident(fields.get("category"), f"{where}.category") if "category" in fields else "",
            events=tuple(events),
            value=(col.number(fields.get("value"), f"{where}.value", 1.0, low=0, low_open=True)
                   if not isinstance(fields.get("value", _Node(0, 0, 0)).value, str) else 1.0),
            value_expression=(col.expression(fields["value"], f"{where}.value", events, variables)
                              if "value" in fields and isinstance(fields["value"].value, str) else None),
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
            file=col.file,
            line=item.line,
        )
        out.append((spec, item))
    return out


def _count_and_window(node: _Node | None, where: str, col: _Collector, count_key: str) -> tuple[int, float, str] | None:
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


def _parse_reward(node: _Node | None, where: str, col: _Collector) -> str:
    if node is None:
        return "accepted"
    if node.value not in ("accepted", "converted"):
        col.add(node, f"{where}: expected accepted or converted, got {_shown(node.value)}")
        return "accepted"
    return str(node.value)


def _parse_budget(node: _Node | None, where: str, col: _Collector) -> Budget | None:
    parsed = _count_and_window(node, where, col, "max")
    return Budget(*parsed) if parsed else None


def _parse_suppression(node: _Node | None, where: str, col: _Collector) -> Suppression | None:
    parsed = _count_and_window(node, where, col, "declines")
    if parsed and parsed[1] > 365 * 86400:  # declines are kept a year (store.state.DECLINES_KEPT_SECONDS)
        col.add(node, f"{where}.per: at most 365d (declines are kept for a year)")
        return None
    return Suppression(*parsed) if parsed else None


def _template_fields(events: Iterable[str], variables: Iterable[str]) -> set[str]:
    fields: set[str] | None = None
    for event_type in events:
        these = set(EVENT_FIELDS[event_type])
        fields = these if fields is None else fields & these
    return set(fields or ()) | set(_PROFILE_TEMPLATE_FIELDS) | set(variables)


def _parse_content(node: _Node | None, where: str, col: _Collector, channels: list[str],
                   events: list[str], variables: Mapping[str, CompiledExpression]) -> dict[str, str]:
    if node is None:
        return {}
    if not isinstance(node.value, dict):
        col.add(node, f"{where}.content: expected a mapping of channel (or default) to text")
        return {}
    allowed = _template_fields(events, variables)
    content: dict[str, str] = {}
    for key, (key_node, value_node) in node.value.items():
        if key != "default" and key not in channels:
            col.add(key_node, f"{where}.content: {key!r} is neither one of the offer's channels nor 'default'")
            continue
        text = col.text(value_node, f"{where}.content.{key}")
        try:
            fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(text)
                      if field is not None]
        except ValueError as exc:
            col.add(value_node, f"{where}.content.{key}: bad template: {exc}")
            continue
        for name, spec, conversion in fields:
            if spec or conversion:
                col.add(value_node, f"{where}.content.{key}: {{{name}...}} has a format; write {{{name}}}: "
                                    "numbers are formatted for people automatically (100, 12.50)")
            elif name not in allowed:
                col.add(value_node, f"{where}.content.{key}: unknown template field {{{name}}} "
                                    f"(known: {', '.join(sorted(allowed))})")
        content[key] = text
    for channel in channels:
        if channel not in content and "default" not in content:
            col.add(node, f"{where}.content: no text for channel {channel!r} and no 'default'")
    return content
