"""Policy files -> a validated :class:`~nba_service.policies.model.PolicySet`.

Every problem is reported with the file, line and column it comes from, all of
them at once, so a marketer fixes a set in one pass::

    policies/bank.yaml:42:20: offers[3].eligible_when: unknown field event.amout (...)

Reading goes in stages: each file's YAML is read with positions
(:mod:`~nba_service.policies.yaml_source`) and split into its sections; the
settings, places, named conditions, channels and offers are read in that order
(:mod:`~nba_service.policies.sections`, :mod:`~nba_service.policies.offer_section`),
each able to check what the earlier ones declared; then what needs the whole
set is checked, and every issue is raised together.

Nothing here touches Redis; :mod:`nba_service.store.policy_store` stores and
versions what this module accepts.

>>> parse_policy_files({"p.yaml": "channels: [{id: push}]"}).channels[0].name
'push'
>>> parse_policy_files({"p.yaml": "offers: []"})
Traceback (most recent call last):
  ...
nba_service.policies.model.PolicyValidationError: 1 problem(s) in the policy set:
  <policy set>:1:1: the policy set declares no channels
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

from nba_service.policies.model import (
    ChannelSpec,
    GlobalSettings,
    OfferSpec,
    Place,
    PolicyIssue,
    PolicySet,
    PolicyValidationError,
)
from nba_service.policies.offer_section import parse_offers
from nba_service.policies.sections import (
    parse_channels,
    parse_conditions,
    parse_places,
    parse_settings,
    settings_limit_targets,
)
from nba_service.policies.yaml_source import Collector, _Node, read_documents

__all__ = ["load_policy_dir", "parse_policy_files", "read_policy_dir"]

_TOP_KEYS = {"settings", "channels", "offers", "places"}

_Part = tuple[_Node, Collector]
"""A section of one file, with the collector of that file."""


def read_policy_dir(path: str | os.PathLike[str]) -> dict[str, str]:
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
    sections = _read_sections(files, base)
    settings_part = sections.settings[0] if sections.settings else None
    settings, category_lever_nodes = _read_settings(sections.settings)
    places = _read_places(sections.places)
    condition_sources, definitions = parse_conditions(settings_part, places)
    for col in sections.collectors:
        col.definitions = definitions
    channels = _read_channels(sections.channels)
    offers = _read_offers(sections.offers, channels)
    if settings_part is not None:
        _check_settings_targets(settings_part, category_lever_nodes, channels, offers)
    _raise_issues(sections.collectors, base, has_channels=bool(channels))
    return PolicySet(
        settings=settings,
        channels=tuple(channels.values()),
        offers=tuple(offers.values()),
        places=tuple(places.values()),
        conditions=condition_sources,
        files=dict(files),
    )


@dataclasses.dataclass(slots=True)
class _Sections:
    """Every file's collector, and each section of every file, in file-name order."""

    collectors: list[Collector] = dataclasses.field(default_factory=list)
    settings: list[_Part] = dataclasses.field(default_factory=list)
    channels: list[_Part] = dataclasses.field(default_factory=list)
    offers: list[_Part] = dataclasses.field(default_factory=list)
    places: list[_Part] = dataclasses.field(default_factory=list)


def _read_sections(files: Mapping[str, str], base: str) -> _Sections:
    """Stage 1: read each file's YAML documents and sort their top-level sections."""
    sections = _Sections()
    for name in sorted(files):
        col = Collector(str(pathlib.Path(base) / name) if base else name)
        sections.collectors.append(col)
        for root in read_documents(files[name], col):
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


def _read_offers(parts: list[_Part], channels: Mapping[str, ChannelSpec]) -> dict[str, OfferSpec]:
    """Stage 5: the offers of every file, by id; the first of two with one id is kept."""
    offers: dict[str, OfferSpec] = {}
    for node, col in parts:
        for spec, item in parse_offers(node, col, channels):
            if spec.id in offers:
                first = offers[spec.id]
                col.add(item, f"offers: duplicate offer id {spec.id!r} (first in {first.file}:{first.line})")
                continue
            offers[spec.id] = spec
    return offers


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


def _raise_issues(collectors: list[Collector], base: str, has_channels: bool) -> None:
    """Stage 7: raise every issue of every file at once, in file, line and column order."""
    issues: list[PolicyIssue] = []
    if not has_channels:
        issues.append(PolicyIssue(base or "<policy set>", 1, 1, "the policy set declares no channels"))
    for col in collectors:
        issues.extend(col.issues)
    if issues:
        issues.sort(key=lambda i: (i.file, i.line, i.column))
        raise PolicyValidationError(issues)
