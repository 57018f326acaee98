"""What the agent desktop shows beside the journey: why the customer is probably calling, and what to say.

:func:`likely_reasons` runs the policy set's ``reasons`` rules
(:mod:`nba_service.policies.reason_section`) over the customer's recent
journey: each rule looks at the events of its type within its window that
meet its condition, and holds when there are at least ``min_count`` of them;
its score is the rule's, halved every ``half_life`` of the newest event's age.
The reasons come ranked, most likely first, each with its text rendered in the
agent's language and its evidence (the matching events, newest first).

:func:`agent_scripts` renders the ``agent_script`` of each best action's
offer, in the agent's language, from the same values as the offer's content.

Pure: over the customer's context and the policy snapshot, no I/O; the same
inputs give the same answer.

``{ago}`` reads the time since the event as a person would: minutes under an
hour, then hours on the same calendar day, ``yesterday`` on the day before and
``N days ago`` by calendar days, the days in the customer's time zone (the
profile's, else UTC). On Wednesday at 09:00, Monday at 08:00 is ``2 days
ago`` (49 hours) and Tuesday at 20:00 is ``yesterday`` (13 hours):

>>> import datetime
>>> now = datetime.datetime(2026, 6, 10, 9, 0, tzinfo=datetime.UTC).timestamp()  # a Wednesday, 09:00
>>> [ago_text(now - hours * 3600, now, "en") for hours in (0.2, 3, 13, 49)]
['12 minutes ago', '3 hours ago', 'yesterday', '2 days ago']
>>> ago_text(now - 8 * 3600, now, "es"), ago_text(now - 8 * 3600, now, "es", "America/New_York")  # 21:00 there
('hace 8 horas', 'ayer')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from nba_service.domain import CustomerContext, Event, JourneyEntry, LikelyReason
from nba_service.domain.localtime import local_time
from nba_service.policies.compiler import CompiledExpression
from nba_service.policies.model import ReasonSpec
from nba_service.policies.scope import evaluation_globals
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["MAX_EVIDENCE", "agent_scripts", "ago_text", "calendar_days", "likely_reasons"]

MAX_EVIDENCE = 5
"""Journey events a likely reason carries as evidence (the newest; ``{count}`` counts them all)."""

_GLOBALS = evaluation_globals()
_AGO: Mapping[str, tuple[str, str, str, str, str, str, str]] = {
    # just now, 1 minute, N minutes, 1 hour, N hours (the same day), yesterday (the day before), N days
    "en": ("just now", "1 minute ago", "{n} minutes ago", "1 hour ago", "{n} hours ago", "yesterday", "{n} days ago"),
    "es": (
        "ahora mismo",
        "hace 1 minuto",
        "hace {n} minutos",
        "hace 1 hora",
        "hace {n} horas",
        "ayer",
        "hace {n} días",
    ),
}
"""How ``{ago}`` reads, per language (another language reads English)."""
_UNKNOWN_CHANNEL: Mapping[str, str] = {"en": "unknown channel", "es": "canal desconocido"}
"""How ``{channel}`` reads for an event recorded without its ``origin_channel``, per language."""


def calendar_days(then: float, now: float, timezone: str = "UTC") -> int:
    """Calendar days from ``then`` to ``now`` in ``timezone`` (an IANA zone; empty or unknown: UTC): 0 on the
    same day, 1 for the day before, however late it was."""
    return max(0, (local_time(now, timezone).date() - local_time(then, timezone).date()).days)


def ago_text(then: float, now: float, language: str, timezone: str = "UTC") -> str:
    """How long before ``now`` the moment ``then`` was, as an agent reads it in ``language`` (``en``, ``es``;
    others read English): minutes under an hour, hours on the same calendar day, then ``yesterday`` and
    ``N days ago`` by calendar days in ``timezone`` (the customer's)."""
    words = _AGO.get(language.split("-", 1)[0], _AGO["en"])
    seconds = max(0.0, now - then)
    if seconds < 60:
        return words[0]
    if seconds < 3600:
        n = int(seconds // 60)
        return words[1] if n == 1 else words[2].format(n=n)
    days = calendar_days(then, now, timezone)
    if days == 0:
        n = int(seconds // 3600)
        return words[3] if n == 1 else words[4].format(n=n)
    return words[5] if days == 1 else words[6].format(n=days)


def likely_reasons(snapshot: PolicySnapshot, ctx: CustomerContext, language: str = "") -> tuple[LikelyReason, ...]:
    """Every ``reasons`` rule that holds on the customer's journey, most likely first (ties: the newer evidence
    first), its text in ``language`` (else the set's ``default_language``)."""
    rules = snapshot.policy.reasons
    if not rules or not ctx.journey:
        return ()
    events: dict[int, tuple[Event, dict[str, Any]]] = {}  # journey position -> its event and rule scope

    def moment(position: int, entry: JourneyEntry) -> tuple[Event, dict[str, Any]]:
        found = events.get(position)
        if found is None:
            event = _event_of(entry)
            scope = snapshot.scope(ctx, event)
            scope["origin_channel"] = entry.origin_channel  # where that moment happened
            found = events[position] = (event, scope)
        return found

    out = []
    for rule in rules:
        since = ctx.now - rule.within_seconds
        matched = [
            position
            for position, entry in enumerate(ctx.journey)  # newest first
            if entry.type == rule.event
            and entry.timestamp >= since
            and (rule.when is None or _holds(rule.when, moment(position, entry)[1]))
        ]
        if len(matched) < rule.min_count:
            continue
        newest = ctx.journey[matched[0]]
        out.append(_reason(snapshot, rule, ctx, newest, moment(matched[0], newest), matched, language))
    out.sort(key=lambda r: (-r.score, -r.evidence[0].timestamp))
    return tuple(out)


def _reason(
    snapshot: PolicySnapshot,
    rule: ReasonSpec,
    ctx: CustomerContext,
    newest: JourneyEntry,
    moment: tuple[Event, dict[str, Any]],
    matched: list[int],
    language: str,
) -> LikelyReason:
    age = max(0.0, ctx.now - newest.timestamp)
    score = rule.score * (0.5 ** (age / rule.half_life_seconds) if rule.half_life_seconds > 0 else 1.0)
    text_language, template = rule.text.pick(language, snapshot.settings.default_language)
    event, scope = moment
    values = _values(ctx, event, rule.variables, scope)
    timezone = ctx.profile.timezone
    base_language = text_language.split("-", 1)[0]
    values.update(
        ago=ago_text(newest.timestamp, ctx.now, text_language, timezone),
        minutes_ago=int(age // 60),
        hours_ago=int(age // 3600),
        days_ago=calendar_days(newest.timestamp, ctx.now, timezone),
        channel=newest.origin_channel or _UNKNOWN_CHANNEL.get(base_language, _UNKNOWN_CHANNEL["en"]),
        count=len(matched),
    )
    return LikelyReason(
        id=rule.id,
        text=template.format_map(_Formatted(values)),
        score=score,
        evidence=tuple(ctx.journey[p] for p in matched[:MAX_EVIDENCE]),
    )


def agent_scripts(
    snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, offer_ids: Iterable[str], language: str = ""
) -> dict[str, tuple[str, str]]:
    """Offer id -> (its ``agent_script`` rendered for this moment, the script's language), for the offers of
    ``offer_ids`` that have one: in ``language``, else the set's ``default_language``, else the first written."""
    scope: dict[str, Any] | None = None
    out: dict[str, tuple[str, str]] = {}
    for offer_id in offer_ids:
        index = snapshot.offer_index.get(offer_id)
        offer = snapshot.offers[index] if index is not None else None
        if offer is None or offer.agent_script is None or offer_id in out:
            continue
        if scope is None:
            scope = snapshot.scope(ctx, event)
        script_language, template = offer.agent_script.pick(language, snapshot.settings.default_language)
        values = _values(ctx, event, offer.variables, scope)
        out[offer_id] = (template.format_map(_Formatted(values)), script_language)
    return out


def _event_of(entry: JourneyEntry) -> Event:
    """A journey entry as the event it recorded: its fields, and a custom event's attributes, a cart's items."""
    fields = entry.fields
    attributes = fields.pop("attributes", None)
    items = fields.pop("item_ids", None)
    return Event(
        entry.type,
        fields,
        {str(k): str(v) for k, v in attributes.items()} if isinstance(attributes, dict) else {},
        tuple(str(i) for i in items) if isinstance(items, list) else (),
    )


def _holds(rule: CompiledExpression, scope: dict[str, Any]) -> bool:
    """The rule's verdict; a rule that raises (an old journey entry without a field it reads) does not hold."""
    try:
        return bool(eval(rule.code, _GLOBALS, scope))
    except Exception:
        return False


def _values(
    ctx: CustomerContext, event: Event, variables: Mapping[str, CompiledExpression], scope: dict[str, Any]
) -> dict[str, Any]:
    """What a template reads: the profile's first name and segment, the event's fields and the variables (a
    variable that fails reads empty)."""
    values: dict[str, Any] = {"first_name": ctx.profile.first_name, "segment": ctx.profile.segment}
    values.update(event.fields)
    for name, expression in variables.items():
        try:
            value = eval(expression.code, _GLOBALS, scope)
        except Exception:
            value = ""
        values[name] = "" if value is None else value
    return values


class _Formatted(dict[str, Any]):
    """Numbers shown the way people write them: 100 not 100.0, 12.50 not 12.5; a missing field reads empty."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key) if key in self else ""
        if isinstance(value, float):
            if math.isfinite(value) and value == int(value):
                return str(int(value))
            return f"{value:.2f}"
        return "" if value is None else value
