"""What changed between two policy sets, field by field.

Compares the parsed sets (:class:`~nba_service.policies.model.PolicySet`),
not their YAML text: moving an offer to another file, reordering keys or
editing comments is no change; rules and variables compare by their source
text. Each difference is one :class:`Change`, written the way a marketer
reads it::

    settings.levers.categories.savings: 1.1 -> 1.3
    micro_loan.prior: 0.12 -> 0.15
    micro_loan.limits: + {max: 1, per: 7d}
    + offer spring_savings: Spring savings boost (savings; events app_open; channels push, email)

>>> import textwrap
>>> from nba_service.policies.parser import parse_policy_files
>>> def policy(prior):
...     return parse_policy_files({"p.yaml": textwrap.dedent(f'''
...         channels: [{{id: push}}]
...         offers:
...           - {{id: loan, name: Loan, category: lending, events: [atm_decline], value: 15,
...              prior: {prior}, channels: [push], content: {{default: "Hi"}}}}
...         ''')})
>>> [str(c) for c in diff_policies(policy(0.12), policy(0.15)).changes]
['loan.prior: 0.12 -> 0.15']
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nba_service.policies.compiler import CompiledExpression
from nba_service.policies.model import (
    CampaignSpec,
    ChannelSpec,
    Limit,
    LocalizedText,
    OfferSpec,
    PolicySet,
    ReasonSpec,
)

__all__ = ["Change", "PolicyDiff", "diff_policies", "show_value"]

SECTIONS = ("settings", "channels", "offers", "reasons", "campaigns")


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One difference. ``old`` is None for something added, ``new`` for something removed."""

    section: str
    """``settings``, ``channels``, ``offers`` or ``reasons``."""
    subject: str
    """``settings``, a channel id, an offer id or a reason id."""
    field: str
    """The field within the subject (``prior``, ``levers.categories.savings``); empty for a whole channel or offer."""
    old: str | None
    new: str | None

    def __str__(self) -> str:
        if not self.field:
            kind = self.section.removesuffix("s")
            if self.old is None:
                return f"+ {kind} {self.subject}: {self.new}"
            return f"- {kind} {self.subject}: {self.old}"
        where = f"{self.subject}.{self.field}"
        if self.old is None:
            return f"{where}: + {self.new}"
        if self.new is None:
            return f"{where}: - {self.old}"
        return f"{where}: {self.old} -> {self.new}"


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyDiff:
    changes: tuple[Change, ...]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def added(self, section: str) -> list[str]:
        return [c.subject for c in self.changes if c.section == section and not c.field and c.old is None]

    def removed(self, section: str) -> list[str]:
        return [c.subject for c in self.changes if c.section == section and not c.field and c.new is None]

    def changed(self, section: str) -> list[str]:
        """Subjects of the section with at least one changed field, in order."""
        return list(dict.fromkeys(c.subject for c in self.changes if c.section == section and c.field))

    def summary(self) -> str:
        if not self.changes:
            return "no differences"
        parts = []
        settings = sum(1 for c in self.changes if c.section == "settings")
        if settings:
            parts.append(f"{settings} setting{'s' if settings != 1 else ''} changed")
        for section, noun in (
            ("channels", "channel"),
            ("offers", "offer"),
            ("reasons", "reason"),
            ("campaigns", "campaign"),
        ):
            counts = [
                (len(self.changed(section)), "changed"),
                (len(self.added(section)), "added"),
                (len(self.removed(section)), "removed"),
            ]
            shown = [f"{n} {what}" for n, what in counts if n]
            if shown:
                total = sum(n for n, _ in counts)
                parts.append(f"{noun}{'s' if total != 1 else ''}: " + ", ".join(shown))
        return "; ".join(parts)

    def render(self) -> list[str]:
        """The changes grouped by section, then the summary line."""
        lines: list[str] = []
        for section in SECTIONS:
            these = [c for c in self.changes if c.section == section]
            if these:
                lines.append(f"{section}:")
                lines.extend(f"  {c}" for c in these)
        lines.append(self.summary())
        return lines


def diff_policies(old: PolicySet, new: PolicySet) -> PolicyDiff:
    """Every difference from ``old`` to ``new``: settings, then channels, then offers."""
    changes: list[Change] = []
    changes += _settings_changes(old, new)
    changes += _entity_changes("channels", old.channels, new.channels, _channel_fields, _channel_summary)
    changes += _entity_changes("offers", old.offers, new.offers, _offer_fields, _offer_summary)
    changes += _entity_changes("reasons", old.reasons, new.reasons, _reason_fields, _reason_summary)
    changes += _entity_changes("campaigns", old.campaigns, new.campaigns, _campaign_fields, _campaign_summary)
    return PolicyDiff(tuple(changes))


# --- how values are shown -------------------------------------------------------------


def show_value(value: Any) -> str:
    """A value as it would be written in the YAML: ``15`` not ``15.0``, ``true``, quoted texts.

    >>> show_value(15.0), show_value(0.12), show_value(True), show_value("Hi {first_name}"), show_value(None)
    ('15', '0.12', 'true', '"Hi {first_name}"', '(none)')
    """
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, CompiledExpression):
        return json.dumps(value.source, ensure_ascii=False)
    if isinstance(value, Limit):
        return _show_limit(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # e.g. a budget {max: 5000, per: 1d}: the fields as written, not their computed seconds
        shown = [
            f"{f.name}: {_plain(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if not f.name.endswith("_seconds")
        ]
        return "{" + ", ".join(shown) + "}"
    if isinstance(value, (tuple, list)):
        return _show_list(show_value(v) for v in value)
    return str(value)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else show_value(value)


def _show_limit(limit: Limit) -> str:
    if limit.channel:
        scope = f"channel: {limit.channel}, "
    elif limit.category:
        scope = f"category: {limit.category}, "
    else:
        scope = ""
    direction = f", direction: {limit.direction}" if limit.direction != "outbound" else ""
    return f"{{{scope}max: {limit.max}, per: {limit.per}{direction}}}"


def _show_time(seconds: float | None) -> str:
    if seconds is None:
        return "(none)"
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d" if moment.time() == datetime.time(0) else "%Y-%m-%dT%H:%M:%SZ")


def _show_duration(seconds: float | None) -> str:
    """A duration as a policy writes it: ``90d``, ``12h``, ``30m``, ``45s`` (``(none)`` for None or 0)."""
    if not seconds:
        return "(none)"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{show_value(seconds)}s"


def _texts(text: LocalizedText | None) -> Mapping[str, str]:
    """A text per language as a mapping (``default`` for a text written without languages)."""
    return {} if text is None else {language or "default": t for language, t in text.variants.items()}


def _show_quiet_hours(window: tuple[int, int] | None) -> str:
    if window is None:
        return "(none)"
    start, end = window
    return f'{{start: "{start // 60:02d}:{start % 60:02d}", end: "{end // 60:02d}:{end % 60:02d}"}}'


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, CompiledExpression) or isinstance(b, CompiledExpression):
        return getattr(a, "source", a) == getattr(b, "source", b)
    return bool(a == b)


# --- comparing ------------------------------------------------------------------------


def _field(
    section: str, subject: str, field: str, old: Any, new: Any, show: Callable[[Any], str] = show_value
) -> list[Change]:
    return [] if _same(old, new) else [Change(section, subject, field, show(old), show(new))]


def _mapping(section: str, subject: str, field: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Keys added, removed or changed, each as ``field.key``; old keys first, in their order."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        where = f"{field}.{key}"
        if key not in new:
            out.append(Change(section, subject, where, show_value(old[key]), None))
        elif key not in old:
            out.append(Change(section, subject, where, None, show_value(new[key])))
        else:
            out += _field(section, subject, where, old[key], new[key])
    return out


def _items(section: str, subject: str, field: str, old: Sequence[Any], new: Sequence[Any]) -> list[Change]:
    """Ids of a list removed (``-``) and added (``+``); a mere reordering shows both lists."""
    removed = [item for item in old if item not in new]
    added = [item for item in new if item not in old]
    if not removed and not added:
        if list(old) != list(new):
            return [Change(section, subject, field, _show_list(old), _show_list(new))]
        return []
    return [Change(section, subject, field, str(item), None) for item in removed] + [
        Change(section, subject, field, None, str(item)) for item in added
    ]


def _show_list(items: Iterable[Any]) -> str:
    return "[" + ", ".join(str(i) for i in items) + "]"


def _limit_key(limit: Limit) -> tuple[Any, ...]:
    return (limit.channel, limit.category, limit.direction, limit.max, limit.per_seconds)


def _limits(section: str, subject: str, field: str, old: Sequence[Limit], new: Sequence[Limit]) -> list[Change]:
    """Limits compare by scope, max and window length (``24h`` is ``1d``); a new max for the
    same scope and window shows as one change."""
    old_keys = [_limit_key(x) for x in old]
    new_keys = [_limit_key(x) for x in new]
    removed = [x for x in old if _limit_key(x) not in new_keys]
    added = [x for x in new if _limit_key(x) not in old_keys]
    out = []
    for limit in list(removed):
        same_scope = [
            x
            for x in added
            if (x.channel, x.category, x.direction, x.per_seconds)
            == (limit.channel, limit.category, limit.direction, limit.per_seconds)
        ]
        if len(same_scope) == 1:
            removed.remove(limit)
            added.remove(same_scope[0])
            out.append(Change(section, subject, field, _show_limit(limit), _show_limit(same_scope[0])))
    out += [Change(section, subject, field, _show_limit(x), None) for x in removed]
    out += [Change(section, subject, field, None, _show_limit(x)) for x in added]
    return out


def _settings_changes(old: PolicySet, new: PolicySet) -> list[Change]:
    a, b = old.settings, new.settings
    out = _field("settings", "settings", "no_action_threshold", a.no_action_threshold, b.no_action_threshold)
    out += _field(
        "settings", "settings", "preferred_channel_boost", a.preferred_channel_boost, b.preferred_channel_boost
    )
    out += _field("settings", "settings", "levers.global", a.global_lever, b.global_lever)
    out += _mapping("settings", "settings", "levers.categories", a.category_levers, b.category_levers)
    out += _limits("settings", "settings", "contact_limits", a.contact_limits, b.contact_limits)
    out += _items("settings", "settings", "holidays.countries", a.holiday_countries, b.holiday_countries)
    out += _mapping("settings", "settings", "holidays.subdivisions", a.holiday_subdivisions, b.holiday_subdivisions)
    out += _field(
        "settings", "settings", "accepted_window", a.accepted_window_seconds, b.accepted_window_seconds, _show_duration
    )
    out += _other_fields("settings", "settings", a, b, _SETTINGS_FIELDS)
    return out


def _entity_changes(
    section: str,
    old: Sequence[Any],
    new: Sequence[Any],
    fields: Callable[[str, Any, Any], list[Change]],
    summary: Callable[[Any], str],
) -> list[Change]:
    before = {x.id: x for x in old}
    after = {x.id: x for x in new}
    out = []
    for ident, spec in after.items():
        if ident not in before:
            out.append(Change(section, ident, "", None, summary(spec)))
    for ident, spec in before.items():
        if ident not in after:
            out.append(Change(section, ident, "", summary(spec), None))
    for ident, spec in before.items():
        if ident in after:
            out += fields(section, spec, after[ident])
    return out


def _channel_summary(c: ChannelSpec) -> str:
    kind = "reach" if c.needs_reachable else "session"
    available = f", available when {c.available_when.source}" if c.available_when else ""
    return f"{c.name} ({kind} channel{available})"


def _other_fields(section: str, subject: str, a: Any, b: Any, known: set[str]) -> list[Change]:
    """Fields this module does not list by name (added to the schema later), compared as they are."""
    out: list[Change] = []
    for f in dataclasses.fields(a):
        if f.name not in known and f.name not in _NOT_COMPARED:
            out += _field(section, subject, f.name, getattr(a, f.name), getattr(b, f.name, None))
    return out


_NOT_COMPARED = {"id", "file", "line"}
_CHANNEL_FIELDS = {
    "name",
    "needs_reachable",
    "default_consent",
    "available_when",
    "quiet_hours",
    "cost",
    "direction",
    "on_quiet_hours",
    "defer_weight",
}
_OFFER_FIELDS = {
    "paused",
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
    "variable_bounds",
    "content",
    "channel_content",  # compiled from content: its changes are content's
    "limits",
    "valid_from",
    "valid_until",
    "accepted_window_seconds",
    "agent_script",
}
_SETTINGS_FIELDS = {
    "no_action_threshold",
    "preferred_channel_boost",
    "global_lever",
    "category_levers",
    "contact_limits",
    "holiday_countries",
    "holiday_subdivisions",
    "accepted_window_seconds",
}


def _channel_fields(section: str, a: ChannelSpec, b: ChannelSpec) -> list[Change]:
    out = _field(section, a.id, "name", a.name, b.name)
    out += _field(section, a.id, "needs_reachable", a.needs_reachable, b.needs_reachable)
    out += _field(section, a.id, "default_consent", a.default_consent, b.default_consent)
    out += _field(section, a.id, "available_when", a.available_when, b.available_when)
    out += _field(section, a.id, "quiet_hours", a.quiet_hours, b.quiet_hours, _show_quiet_hours)
    out += _field(section, a.id, "cost", a.cost, b.cost)
    out += _field(section, a.id, "direction", a.direction, b.direction, str)
    out += _field(section, a.id, "on_quiet_hours", a.on_quiet_hours, b.on_quiet_hours, str)
    out += _field(section, a.id, "defer_weight", a.defer_weight, b.defer_weight)
    out += _other_fields(section, a.id, a, b, _CHANNEL_FIELDS)
    return out


def _offer_summary(o: OfferSpec) -> str:
    paused = ", paused" if o.paused else ""
    return (
        f"{o.name} ({o.category}; events {', '.join(o.events)}; channels {', '.join(o.channels)}; "
        f"value {show_value(o.value)}, prior {show_value(o.prior)}{paused})"
    )


def _offer_fields(section: str, a: OfferSpec, b: OfferSpec) -> list[Change]:
    s = a.id
    out = _field(section, s, "paused", a.paused, b.paused)
    out += _field(section, s, "name", a.name, b.name)
    out += _field(section, s, "category", a.category, b.category)
    out += _items(section, s, "events", a.events, b.events)
    out += _field(section, s, "eligible_when", a.eligible_when, b.eligible_when)
    for name in ("value", "weight", "lever", "prior"):
        out += _field(section, s, name, getattr(a, name), getattr(b, name))
    out += _items(section, s, "channels", a.channels, b.channels)
    out += _mapping(section, s, "variables", a.variables, b.variables)
    out += _mapping(section, s, "variables.max_len", a.variable_bounds, b.variable_bounds)
    out += _mapping(section, s, "content", a.content, b.content)
    out += _limits(section, s, "limits", a.limits, b.limits)
    out += _field(section, s, "valid_from", a.valid_from, b.valid_from, _show_time)
    out += _field(section, s, "valid_until", a.valid_until, b.valid_until, _show_time)
    out += _field(section, s, "accepted_window", a.accepted_window_seconds, b.accepted_window_seconds, _show_duration)
    out += _mapping(section, s, "agent_script", _texts(a.agent_script), _texts(b.agent_script))
    out += _other_fields(section, s, a, b, _OFFER_FIELDS)
    return out


_REASON_FIELDS = {"event", "within_seconds", "within", "score", "text", "when", "half_life_seconds", "variables"}


def _reason_summary(r: ReasonSpec) -> str:
    return f"{r.event} within {r.within}, score {show_value(r.score)}"


def _reason_fields(section: str, a: ReasonSpec, b: ReasonSpec) -> list[Change]:
    s = a.id
    out = _field(section, s, "event", a.event, b.event)
    out += _field(section, s, "when", a.when, b.when)
    out += _field(section, s, "within", a.within_seconds, b.within_seconds, _show_duration)
    out += _field(section, s, "score", a.score, b.score)
    out += _field(section, s, "half_life", a.half_life_seconds, b.half_life_seconds, _show_duration)
    out += _mapping(section, s, "text", _texts(a.text), _texts(b.text))
    out += _mapping(section, s, "variables", a.variables, b.variables)
    out += _other_fields(section, s, a, b, _REASON_FIELDS)
    return out


def _campaign_summary(c: CampaignSpec) -> str:
    segment = c.segment.source if c.segment is not None else "every customer"
    return f"{segment}; offers {', '.join(c.offers)}; schedule {c.schedule}"


def _campaign_fields(section: str, a: CampaignSpec, b: CampaignSpec) -> list[Change]:
    """Every field of two versions of a campaign (the segment by its source)."""
    out: list[Change] = []
    for f in dataclasses.fields(a):
        if f.name in _NOT_COMPARED or f.name in {"repeat_after_seconds"}:
            continue
        old, new = getattr(a, f.name), getattr(b, f.name)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += _mapping(section, a.id, f.name, old, new)
        else:
            out += _field(section, a.id, f.name, old, new)
    return out
