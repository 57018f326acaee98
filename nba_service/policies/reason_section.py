"""Reader of the ``reasons`` section of a policy file, and of texts written per language.

A reason rule says which moments of the customer's recent journey make a
*likely reason* for a contact, as the agent desktop shows it when the customer
calls (``GetCustomerContext``'s ``likely_reasons``, ranked by score)::

    reasons:
      - id: atm_declined
        event: atm_decline                 # the journey events it looks at
        when: "event.shortfall > 0"        # optional: a rule over the event (the rule language)
        within: 24h                        # only events at most this old
        score: 100                         # how likely, for the newest such event ...
        half_life: 2h                      # ... halved every 2 hours of its age (optional: no decay)
        min_count: 1                       # optional: events needed
        text:                              # a template, or one per language
          en: "ATM withdrawal declined {ago}, short by {shortfall} {currency}"
          es: "Retirada denegada en un cajero {ago}; faltaban {shortfall} {currency}"

Templates use the fields of the event type, ``first_name`` and ``segment``,
the rule's own ``variables`` (expressions, as an offer's), and
:data:`REASON_TEMPLATE_FIELDS`: ``{ago}`` (``12 minutes ago``, ``yesterday``,
in the text's language; days counted by the customer's calendar),
``{minutes_ago}``, ``{hours_ago}``, ``{days_ago}`` (calendar days),
``{channel}`` (where the event happened; ``unknown channel`` when it was
recorded without one) and ``{count}`` (the matching events), as
:mod:`nba_service.engine.agent_view` renders them. A ``when`` that asks
whether the event's own cart is still open writes ``cart_open(event.cart_id)``.
:func:`parse_localized_text` reads such a text (a template, or a mapping of
language to template) for the reasons and for offers' ``agent_script``.

Every problem is recorded in the file's :class:`Collector` with its line and
column; the parser checks ids across the set.

>>> from nba_service.policies.yaml_source import read_documents
>>> col = Collector("reasons.yaml")
>>> [root] = read_documents('''
... - {id: declined, event: atm_decline, within: 24h, score: 100, text: "Declined {ago}, short by {shortfal}"}''', col)
>>> parse_reasons(root, col)  # a rule with a problem is left out
[]
>>> [str(issue) for issue in col.issues]  # doctest: +ELLIPSIS
['reasons.yaml:2:69: reasons[0] (declined).text: unknown template field {shortfal} (known: ago, amount, ...)']
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.compiler import CompiledExpression
from nba_service.policies.model import LocalizedText, ReasonSpec
from nba_service.policies.rule_functions import parse_duration
from nba_service.policies.yaml_source import IDENTIFIER, Collector, _Node, shown

__all__ = [
    "MAX_REASONS",
    "MAX_REASON_WINDOW_SECONDS",
    "PROFILE_TEMPLATE_FIELDS",
    "REASON_TEMPLATE_FIELDS",
    "check_template",
    "parse_localized_text",
    "parse_reasons",
]

MAX_REASONS = 200
"""Reason rules in a policy set (each is evaluated over the journey on every ``GetCustomerContext``)."""
MAX_REASON_WINDOW_SECONDS = 90 * 86400.0
"""The longest ``within``: the journey keeps events 90 days (``store.state.JOURNEY_TTL_SECONDS``)."""
MAX_MIN_COUNT = 50
"""The most events a rule may need: a decision reads the 50 most recent (``StateStore.context_events``)."""
REASON_TEMPLATE_FIELDS = ("ago", "minutes_ago", "hours_ago", "days_ago", "channel", "count")
"""What a reason's text may use besides the event's fields, the profile's and its variables."""
PROFILE_TEMPLATE_FIELDS = ("first_name", "segment")
"""The profile fields a template may use."""
_REASON_KEYS = {"id", "event", "when", "within", "score", "half_life", "min_count", "text", "variables"}
_REQUIRED = ("id", "event", "within", "score", "text")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")


def parse_reasons(node: _Node, col: Collector) -> list[tuple[ReasonSpec, _Node]]:
    """The reason rules of one ``reasons`` section, each with its node."""
    if not isinstance(node.value, list):
        col.add(node, "reasons: expected a list of reason rules")
        return []
    out = []
    for i, item in enumerate(node.value):
        spec = _parse_reason(i, item, col)
        if spec is not None:
            out.append((spec, item))
    return out


def _parse_reason(i: int, item: _Node, col: Collector) -> ReasonSpec | None:
    fields = col.mapping(item, f"reasons[{i}]", _REASON_KEYS, required=_REQUIRED)
    if fields is None or any(key not in fields for key in _REQUIRED):
        return None
    reason_id = col.ident(fields["id"], f"reasons[{i}].id")
    where = f"reasons[{i}] ({reason_id})"
    event = col.ident(fields["event"], f"{where}.event")
    if event and event not in EVENT_FIELDS:
        col.add(fields["event"], f"{where}.event: unknown event type {event!r} (known: {', '.join(EVENT_FIELDS)})")
        return None
    events = [event] if event else []
    within_seconds = _duration(fields["within"], f"{where}.within", col, MAX_REASON_WINDOW_SECONDS)
    half_life = fields.get("half_life")
    half_life_seconds = _duration(half_life, f"{where}.half_life", col) if half_life is not None else 0.0
    variables = _variables(fields.get("variables"), where, col, events)
    allowed = set(EVENT_FIELDS.get(event, ())) | set(PROFILE_TEMPLATE_FIELDS) | set(variables)
    allowed |= set(REASON_TEMPLATE_FIELDS)
    text = parse_localized_text(fields["text"], f"{where}.text", col, allowed)
    score = col.number(fields["score"], f"{where}.score", 1.0, low=0, low_open=True)
    when = col.expression(fields.get("when"), f"{where}.when", events)
    min_count = _min_count(fields.get("min_count"), f"{where}.min_count", col)
    if text is None or not event or within_seconds is None or half_life_seconds is None:
        return None
    return ReasonSpec(
        id=reason_id,
        event=event,
        within_seconds=within_seconds,
        within=str(fields["within"].value),
        score=score,
        text=text,
        when=when,
        half_life_seconds=half_life_seconds,
        min_count=min_count,
        variables=variables,
        file=col.file,
        line=item.line,
    )


def _duration(node: _Node, where: str, col: Collector, longest: float | None = None) -> float | None:
    try:
        seconds = parse_duration(node.value)
    except ValueError as exc:
        col.add(node, f"{where}: {exc}")
        return None
    if longest is not None and seconds > longest:
        col.add(node, f"{where}: at most {longest / 86400:g}d (the journey keeps events {longest / 86400:g} days)")
        return None
    return seconds


def _min_count(node: _Node | None, where: str, col: Collector) -> int:
    if node is None:
        return 1
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MIN_COUNT:
        col.add(node, f"{where}: expected a whole number from 1 to {MAX_MIN_COUNT}, got {shown(value)}")
        return 1
    return value


def _variables(node: _Node | None, where: str, col: Collector, events: list[str]) -> dict[str, CompiledExpression]:
    """``variables``: name -> expression, usable in the text (as an offer's)."""
    variables: dict[str, CompiledExpression] = {}
    if node is None:
        return variables
    if not isinstance(node.value, dict):
        col.add(node, f"{where}.variables: expected a mapping of name to expression")
        return variables
    for name, (key_node, value_node) in node.value.items():
        if not IDENTIFIER.match(name) or name in REASON_TEMPLATE_FIELDS:
            col.add(key_node, f"{where}.variables: {name!r} is not a valid name (or is one of the built-in fields)")
            continue
        compiled = col.expression(value_node, f"{where}.variables.{name}", events)
        if compiled is not None:
            variables[name] = compiled
    return variables


def parse_localized_text(node: _Node, where: str, col: Collector, allowed: Iterable[str]) -> LocalizedText | None:
    """A template (in the set's default language), or a mapping of language (``en``, ``es``, ``pt-BR``) to
    template; each template's ``{field}`` names checked against ``allowed``. None when nothing is usable."""
    allowed = set(allowed)
    if isinstance(node.value, dict):
        if not node.value:
            col.add(node, f"{where}: expected a text, or a mapping of language to text")
            return None
        variants: dict[str, str] = {}
        for language, (key_node, value_node) in node.value.items():
            code = str(language).strip().lower().replace("_", "-")
            if not _LANGUAGE.match(code):
                col.add(key_node, f"{where}: {str(language)!r} is not a language tag such as en, es or pt-BR")
                continue
            if code in variants:
                col.add(key_node, f"{where}: language {code!r} is given twice")
                continue
            text = col.text(value_node, f"{where}.{language}")
            if text and check_template(text, value_node, f"{where}.{language}", col, allowed):
                variants[code] = text
        return LocalizedText(variants) if variants and len(variants) == len(node.value) else None
    text = col.text(node, where)
    if text and check_template(text, node, where, col, allowed):
        return LocalizedText({"": text})
    return None


def check_template(text: str, node: _Node, where: str, col: Collector, allowed: Iterable[str]) -> bool:
    """Record each problem of the ``{field}`` template ``text``; False when it has any."""
    try:
        names = [
            (name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text) if name is not None
        ]
    except ValueError as exc:
        col.add(node, f"{where}: bad template: {exc}")
        return False
    known = set(allowed)
    ok = True
    for name, spec, conversion in names:
        if spec or conversion:
            col.add(
                node,
                f"{where}: {{{name}...}} has a format; write {{{name}}}: "
                "numbers are formatted for people automatically (100, 12.50)",
            )
            ok = False
        elif name not in known:
            col.add(node, f"{where}: unknown template field {{{name}}} (known: {', '.join(sorted(known))})")
            ok = False
    return ok
