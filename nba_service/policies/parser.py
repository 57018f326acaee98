"""Policy files -> a validated :class:`~nba_service.policies.model.PolicySet`.

Every problem is reported with the file, line and column it comes from, all of
them at once, so a marketer fixes a set in one pass::

    policies/bank.yaml:42:20: offers[3].eligible_when: unknown field event.amout (...)

Reading goes in stages: each file's YAML is read with positions
(:mod:`~nba_service.policies.yaml_source`) and split into its sections; the
settings, places, named conditions, channels and offers are read in that order
(:mod:`~nba_service.policies.sections`, :mod:`~nba_service.policies.offer_section`),
each able to check what the earlier ones declared; then what needs the whole
set is checked, the fallbacks and the likely-reason rules
(:mod:`~nba_service.policies.reason_section`) are read, and every issue is
raised together.

Nothing here touches Redis; :mod:`nba_service.store.policy_store` stores and
versions what this module accepts.

A set is bounded before anything in it is read: at most :data:`MAX_FILES`
files and :data:`MAX_SET_BYTES` in all (each file at most
:data:`~nba_service.policies.yaml_source.MAX_FILE_BYTES`, with the YAML
limits of :mod:`~nba_service.policies.yaml_source`); then at most
:data:`MAX_OFFERS` offers and :data:`MAX_PLACES` places, rules within the
limits of :mod:`~nba_service.policies.compiler`, and the rules that run on
one event type within :data:`MAX_EVENT_COST`. So validating the largest set
allowed takes about two seconds on a 2-core server, and a replica refuses
anything larger before compiling it.

>>> parse_policy_files({"p.yaml": "channels: [{id: push}]"}).channels[0].name
'push'
>>> parse_policy_files({"p.yaml": "offers: []"})
Traceback (most recent call last):
  ...
nba_service.policies.model.PolicyValidationError: 1 problem(s) in the policy set:
  <policy set>:1:1: the policy set declares no channels
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pathlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from nba_service.policies.campaign_section import MAX_CAMPAIGNS, parse_campaigns
from nba_service.policies.compiler import PLACE_COST, CompiledExpression
from nba_service.policies.fallbacks import read_fallbacks
from nba_service.policies.model import (
    CampaignSpec,
    ChannelSpec,
    GlobalSettings,
    OfferSpec,
    Place,
    PolicyIssue,
    PolicySet,
    PolicyValidationError,
    ReasonSpec,
)
from nba_service.policies.offer_section import parse_offers
from nba_service.policies.reason_section import MAX_REASONS, parse_reasons
from nba_service.policies.sections import (
    parse_channels,
    parse_conditions,
    parse_places,
    parse_settings,
    settings_limit_directions,
    settings_limit_targets,
)
from nba_service.policies.yaml_source import MAX_NODES, MIB, Collector, ValueCount, _Node, read_documents

__all__ = [
    "MAX_EVENT_COST",
    "MAX_FILES",
    "MAX_OFFERS",
    "MAX_PLACES",
    "MAX_SET_BYTES",
    "MAX_STORED_BYTES",
    "check_set_size",
    "load_policy_dir",
    "parse_policy_files",
    "read_policy_dir",
]

MAX_FILES = 200
"""Files in a policy set."""
MAX_SET_BYTES = 4 * MIB
"""Bytes (UTF-8) of a whole policy set, its file names included."""
MAX_STORED_BYTES = 2 * MAX_SET_BYTES + 64 * 1024
"""What a valid set can take in Redis (its files as JSON: an escape doubles a character at most): a replica
refuses a stored version larger than this before decoding it
(:data:`nba_service.store.policy_store.MAX_VERSION_BYTES`, kept equal by a test)."""
MAX_OFFERS = 3_000
"""Offers in a policy set."""
MAX_PLACES = 10_000
"""Places in a policy set."""
MAX_EVENT_COST = 50_000
"""What the rules evaluated on one event may cost (eligibility rules and values of the offers of its type,
every channel rule, the variables of one offer, places scanned), in the units of
:attr:`~nba_service.policies.compiler.CompiledExpression.cost`: a few milliseconds at most."""

_TOP_KEYS = {"settings", "channels", "offers", "places", "fallbacks", "reasons", "campaigns"}

_Part = tuple[_Node, Collector]
_Spec = TypeVar("_Spec", ReasonSpec, CampaignSpec)
"""A section of one file, with the collector of that file."""


def read_policy_dir(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text of every ``*.yaml``/``*.yml`` file in ``path``, by file name; a set too large is not read."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise PolicyValidationError([PolicyIssue(str(folder), 1, 1, "not a directory of policy files")])
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise PolicyValidationError([PolicyIssue(str(folder), 1, 1, "no *.yaml policy files in this directory")])
    _check_size({str(f): len(f.name.encode()) + f.stat().st_size for f in files})
    return {f.name: f.read_text(encoding="utf-8") for f in files}


def check_set_size(files: Mapping[str, str], base: str = "") -> None:
    """Raise :class:`PolicyValidationError` when ``files`` are too many or too large to be read at all.

    The first check of :func:`parse_policy_files`: cheap, before any YAML is read.

    >>> check_set_size({"p.yaml": "x" * (5 * 1024 * 1024)})
    Traceback (most recent call last):
      ...
    nba_service.policies.model.PolicyValidationError: 1 problem(s) in the policy set:
      p.yaml:1:1: the policy set is 5.0 MiB (this file: 5.0 MiB): at most 4 MiB in all
    """
    if sum(len(text) for text in files.values()) > MAX_SET_BYTES:  # characters: fewer than bytes
        sizes = {name: len(text) for name, text in files.items()}
    else:
        sizes = {name: len(name.encode()) + len(text.encode("utf-8", "surrogatepass")) for name, text in files.items()}
    _check_size({(str(pathlib.Path(base) / name) if base else name): size for name, size in sizes.items()})


def _check_size(sizes: Mapping[str, int]) -> None:
    """Refuse a set of more than :data:`MAX_FILES` files or :data:`MAX_SET_BYTES` (``sizes``: bytes by path)."""
    if len(sizes) > MAX_FILES:
        path = sorted(sizes)[MAX_FILES]
        raise PolicyValidationError(
            [
                PolicyIssue(
                    path, 1, 1, f"the policy set has {len(sizes):,} files: at most {MAX_FILES} (this is one more)"
                )
            ]
        )
    total = sum(sizes.values())
    if total > MAX_SET_BYTES:
        largest = max(sizes, key=lambda path: sizes[path])
        raise PolicyValidationError(
            [
                PolicyIssue(
                    largest,
                    1,
                    1,
                    f"the policy set is {total / MIB:.1f} MiB (this file: {sizes[largest] / MIB:.1f} MiB):"
                    f" at most {MAX_SET_BYTES // MIB} MiB in all",
                )
            ]
        )


def load_policy_dir(path: str | pathlib.Path) -> PolicySet:
    """Read, validate and compile a policy directory."""
    return parse_policy_files(read_policy_dir(path), base=str(path))


def parse_policy_files(files: Mapping[str, str], base: str = "") -> PolicySet:
    """Validate and compile a policy set given as ``{file name: YAML text}``."""
    check_set_size(files, base)
    with _collector_paused():
        return _parse(files, base)


_pauses = 0
_was_enabled = True
_pauses_lock = threading.Lock()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while a set is parsed, in whichever thread.

    Parsing allocates about a million short-lived objects, none in a cycle, and the full collections they
    would trigger each walk the whole heap holding the GIL. Paused, a replica parses the 3,000 offers of
    the limit in a thread in about half the time (1.7 to 2.2 s instead of 3.3 to 3.8 s next to a busy
    event loop), so the loop shares the GIL for half as long; the one collection left afterwards walks
    what survives.
    """
    global _pauses, _was_enabled
    with _pauses_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


def _parse(files: Mapping[str, str], base: str) -> PolicySet:
    sections = _read_sections(files, base)
    if sections.count.values > MAX_NODES:  # not all of it was read: what follows would only add noise
        _raise_issues(sections.collectors, base, has_channels=True)
    settings_part = sections.settings[0] if sections.settings else None
    settings, category_lever_nodes = _read_settings(sections.settings)
    places = _read_places(sections.places)
    condition_sources, definitions = parse_conditions(settings_part, places)
    for col in sections.collectors:
        col.definitions = definitions
    channels = _read_channels(sections.channels)
    offers, offer_nodes = _read_offers(sections.offers, channels)
    if settings_part is not None:
        _check_settings_targets(settings_part, category_lever_nodes, channels, offers)
    _check_event_costs(offers, offer_nodes, channels, places)
    fallbacks = read_fallbacks(sections.fallbacks, channels, offers)
    reasons = _read_reasons(sections.reasons)
    campaigns = _read_campaigns(sections.campaigns, offers, channels)
    _raise_issues(sections.collectors, base, has_channels=bool(channels))
    return PolicySet(
        settings=settings,
        channels=tuple(channels.values()),
        offers=tuple(offers.values()),
        places=tuple(places.values()),
        conditions=condition_sources,
        files=dict(files),
        fallbacks=fallbacks,
        reasons=tuple(reasons.values()),
        campaigns=tuple(campaigns.values()),
    )


@dataclasses.dataclass(slots=True)
class _Sections:
    """Every file's collector, and each section of every file, in file-name order."""

    collectors: list[Collector] = dataclasses.field(default_factory=list)
    count: ValueCount = dataclasses.field(default_factory=ValueCount)
    """The values read in all the files (for :data:`~nba_service.policies.yaml_source.MAX_NODES`)."""
    settings: list[_Part] = dataclasses.field(default_factory=list)
    channels: list[_Part] = dataclasses.field(default_factory=list)
    offers: list[_Part] = dataclasses.field(default_factory=list)
    places: list[_Part] = dataclasses.field(default_factory=list)
    fallbacks: list[_Part] = dataclasses.field(default_factory=list)
    reasons: list[_Part] = dataclasses.field(default_factory=list)
    campaigns: list[_Part] = dataclasses.field(default_factory=list)


def _read_sections(files: Mapping[str, str], base: str) -> _Sections:
    """Stage 1: read each file's YAML documents and sort their top-level sections."""
    sections = _Sections()
    for name in sorted(files):
        col = Collector(str(pathlib.Path(base) / name) if base else name)
        sections.collectors.append(col)
        for root in read_documents(files[name], col, sections.count):
            top = col.mapping(root, "file", _TOP_KEYS)
            if top is None:
                continue
            if "settings" in top:
                sections.settings.append((top["settings"], col))
            if "channels" in top:
                sections.channels.append((top["channels"], col))
            if "offers" in top:
                sections.offers.append((top["offers"], col))
            if "places" in top:
                sections.places.append((top["places"], col))
            if "fallbacks" in top:
                sections.fallbacks.append((top["fallbacks"], col))
            if "reasons" in top:
                sections.reasons.append((top["reasons"], col))
            if "campaigns" in top:
                sections.campaigns.append((top["campaigns"], col))
    return sections


def _read_settings(parts: list[_Part]) -> tuple[GlobalSettings, dict[str, _Node]]:
    """Stage 2: the one settings section (defaults without one), and its category lever nodes."""
    if len(parts) > 1:
        node, col = parts[1]
        col.add(node, "settings: defined in more than one file")
    return parse_settings(*parts[0]) if parts else (GlobalSettings(), {})


def _read_places(parts: list[_Part]) -> dict[str, Place]:
    """Stage 3: the places of every file, by id (a duplicate is an issue)."""
    places: dict[str, Place] = {}
    for node, col in parts:
        for place, item in parse_places(node, col):
            if place.id in places:
                col.add(item, f"places: duplicate place id {place.id!r}")
            elif len(places) == MAX_PLACES:
                col.add(item, f"places: more than {MAX_PLACES:,} places in the policy set")
            places[place.id] = place
    return places


def _read_channels(parts: list[_Part]) -> dict[str, ChannelSpec]:
    """Stage 4 (after the named conditions): the channels of every file, by id (a duplicate is an issue)."""
    channels: dict[str, ChannelSpec] = {}
    for node, col in parts:
        for spec, item in parse_channels(node, col):
            if spec.id in channels:
                col.add(item, f"channels: duplicate channel id {spec.id!r}")
            channels[spec.id] = spec
    return channels


def _read_offers(
    parts: list[_Part], channels: Mapping[str, ChannelSpec]
) -> tuple[dict[str, OfferSpec], dict[str, _Part]]:
    """Stage 5: the offers of every file, by id, and the node each came from; the first of two with one id
    is kept."""
    offers: dict[str, OfferSpec] = {}
    nodes: dict[str, _Part] = {}
    for node, col in parts:
        for spec, item in parse_offers(node, col, channels):
            if spec.id in offers:
                first = offers[spec.id]
                col.add(item, f"offers: duplicate offer id {spec.id!r} (first in {first.file}:{first.line})")
                continue
            if len(offers) == MAX_OFFERS:
                col.add(item, f"offers: more than {MAX_OFFERS:,} offers in the policy set")
            offers[spec.id] = spec
            nodes[spec.id] = (item, col)
    return offers, nodes


def _read_reasons(parts: list[_Part]) -> dict[str, ReasonSpec]:
    """Stage 7b (after the costs and the fallbacks): the likely-reason rules of every file, by id (a duplicate
    is an issue); at most :data:`~nba_service.policies.reason_section.MAX_REASONS`."""
    return _by_id(parts, parse_reasons, "reasons", "reason id", f"{MAX_REASONS} reason rules", MAX_REASONS)


def _read_campaigns(
    parts: list[_Part], offers: Mapping[str, OfferSpec], channels: Mapping[str, ChannelSpec]
) -> dict[str, CampaignSpec]:
    """Stage 7c: the outbound campaigns of every file, by id (a duplicate is an issue); at most
    :data:`~nba_service.policies.campaign_section.MAX_CAMPAIGNS`."""

    def parse(node: _Node, col: Collector) -> Iterable[tuple[CampaignSpec, _Node]]:
        return parse_campaigns(node, col, offers, channels)

    return _by_id(parts, parse, "campaigns", "campaign id", f"{MAX_CAMPAIGNS} campaigns", MAX_CAMPAIGNS)


def _by_id(
    parts: list[_Part],
    parse: Callable[[_Node, Collector], Iterable[tuple[_Spec, _Node]]],
    section: str,
    what: str,
    most: str,
    limit: int,
) -> dict[str, _Spec]:
    """The specs ``parse`` reads from every file's section, by id: a duplicate id, or a spec beyond ``limit``,
    is an issue at its item."""
    specs: dict[str, _Spec] = {}
    for node, col in parts:
        for spec, item in parse(node, col):
            if spec.id in specs:
                first = specs[spec.id]
                col.add(item, f"{section}: duplicate {what} {spec.id!r} (first in {first.file}:{first.line})")
                continue
            if len(specs) == limit:
                col.add(item, f"{section}: more than {most} in the policy set")
                break
            specs[spec.id] = spec
    return specs


def _check_settings_targets(
    settings: _Part,
    category_lever_nodes: Mapping[str, _Node],
    channels: Mapping[str, ChannelSpec],
    offers: Mapping[str, OfferSpec],
) -> None:
    """Stage 6: the channels and categories the settings name exist in the whole set."""
    node, col = settings
    categories = {o.category for o in offers.values()}
    for kind, name, target in settings_limit_targets(node):
        if kind == "channel" and name not in channels:
            col.add(target, f"settings.contact_limits: unknown channel {name!r}")
        if kind == "category" and name not in categories:
            col.add(target, f"settings.contact_limits: no offer has category {name!r}")
    for category, lever_node in category_lever_nodes.items():
        if category not in categories:
            col.add(lever_node, f"settings.levers.categories: no offer has category {category!r}")
    _check_limit_directions(settings, channels, offers)


def _check_limit_directions(
    settings: _Part, channels: Mapping[str, ChannelSpec], offers: Mapping[str, OfferSpec]
) -> None:
    """Stage 6: a settings contact limit that counts one direction (outbound by default) counts some channel's
    contacts: of the set, or of the offers of its category. One that never could is refused, not left idle."""
    node, col = settings
    for category, direction, item in settings_limit_directions(node):
        if category is None:
            covered = [c.id for c in channels.values()]
            scope = "the policy set"
        else:
            covered = list(dict.fromkeys(c for o in offers.values() if o.category == category for c in o.channels))
            scope = f"the offers of category {category}"
            if not covered:  # an unknown category: said already
                continue
        if not any(c in channels and channels[c].direction == direction for c in covered):
            col.add(
                item,
                f"settings.contact_limits: this limit counts {direction} contacts only, and no channel of {scope}"
                f" ({', '.join(covered) or 'none'}) is {direction}: it would never count one. Say direction: any"
                " (every channel) or the direction of those channels",
            )


@dataclasses.dataclass(slots=True)
class _EventCost:
    """What the rules evaluated on one event type cost, as the offers are added."""

    rules: int = 0
    """Every eligibility rule and value of the offers of the type, and every channel rule."""
    variables: int = 0
    """The costliest variables of one offer (only the chosen offer's are computed)."""
    kinds: set[str] = dataclasses.field(default_factory=set)
    """Kinds of places scanned (once per request each)."""

    def add(self, expressions: Iterable[CompiledExpression | None]) -> None:
        for expression in expressions:
            if expression is not None:
                self.rules += expression.cost
                self.kinds |= expression.place_kinds

    def total(self, places: Mapping[str, int]) -> int:
        return self.rules + self.variables + PLACE_COST * sum(places.get(kind, 0) for kind in self.kinds)


def _check_event_costs(
    offers: Mapping[str, OfferSpec],
    nodes: Mapping[str, _Part],
    channels: Mapping[str, ChannelSpec],
    places: Mapping[str, Place],
) -> None:
    """Stage 7: the rules evaluated on one event cost at most :data:`MAX_EVENT_COST` (said at the offer that
    goes over, once per event type)."""
    per_kind = Counter(place.kind for place in places.values())
    costs: dict[str, _EventCost] = {}
    for spec in offers.values():
        if spec.paused:  # not compiled for serving
            continue
        for event_type in spec.events:
            cost = costs.get(event_type)
            if cost is None:
                cost = costs[event_type] = _EventCost()
                cost.add(channel.available_when for channel in channels.values())
            before = cost.total(per_kind)
            cost.add((spec.eligible_when, spec.value_expression))
            cost.variables = max(cost.variables, sum(v.cost for v in spec.variables.values()))
            for variable in spec.variables.values():
                cost.kinds |= variable.place_kinds
            total = cost.total(per_kind)
            if before <= MAX_EVENT_COST < total:
                item, col = nodes[spec.id]
                col.add(
                    item,
                    f"offers ({spec.id}): with this offer, the rules evaluated on each {event_type} event cost"
                    f" {total:,}: at most {MAX_EVENT_COST:,} (a part of a rule costs 1, a call that scans the"
                    " journey or the places more): simplify the rules, or answer fewer event types",
                )


def _raise_issues(collectors: list[Collector], base: str, has_channels: bool) -> None:
    """Stage 8: raise every issue of every file at once, in file, line and column order."""
    issues: list[PolicyIssue] = []
    if not has_channels:
        issues.append(PolicyIssue(base or "<policy set>", 1, 1, "the policy set declares no channels"))
    for col in collectors:
        issues.extend(col.issues)
    if issues:
        issues.sort(key=lambda i: (i.file, i.line, i.column))
        raise PolicyValidationError(issues)
