"""The rule expression language: a whitelisted subset of Python expressions.

An expression is parsed once, checked node by node against a whitelist, has
its names rewritten to flat variables (``event.amount`` -> ``event_amount``,
``days_since('x')`` -> ``_f_days_since(_ctx, 'x')``) and is compiled to a code
object. Evaluating it is a plain ``eval`` of that code object over a scope
dict built once per request: about 0.2 µs a rule, no parsing at request time,
and no way to reach attributes, builtins or anything not listed here.

>>> rule = compile_expression("event.amount > event.balance and profile.segment in ['mass']",
...                           event_types=("atm_decline",))
>>> sorted(rule.names)
['event_amount', 'event_balance', 'profile_segment']
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import datetime
import math
import re
from collections.abc import Iterable, Mapping
from types import CodeType
from typing import Any

from nba_service.domain import EVENT_FIELDS, CustomerContext, Event
from nba_service.domain.localtime import local_minute

__all__ = [
    "FUNCTIONS",
    "PROFILE_FIELDS",
    "SCOPE_NAMES",
    "CompiledExpression",
    "Definitions",
    "ExpressionError",
    "build_scope",
    "compile_batch",
    "compile_expression",
    "evaluation_globals",
    "parse_condition",
    "parse_duration",
]

PROFILE_FIELDS = ("segment", "first_name", "preferred_channel", "timezone", "known")
SCOPE_NAMES = ("origin_channel", "local_hour", "weekday", "day_of_month", "month", "open_cart_value")

_NEVER_DAYS = 9999.0
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ExpressionError(ValueError):
    """An expression that cannot be compiled; ``line``/``column`` are 1-based in the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``24h`` or ``7d``.

    >>> parse_duration("7d")
    604800.0
    """
    text = str(text).strip()
    if len(text) < 2 or text[-1] not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    try:
        amount = float(text[:-1])
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d") from None
    if amount <= 0 or not math.isfinite(amount):
        raise ValueError(f"{text!r} must be a positive duration")
    return amount * _DURATION_UNITS[text[-1]]


# --- functions callable from expressions ---------------------------------------------

def _attr(ctx: CustomerContext, key: str) -> str | None:
    return ctx.profile.attributes.get(key)


def _event_attr(attributes: Mapping[str, str], key: str) -> str | None:
    return attributes.get(key)


def _request_attr(ctx: CustomerContext, key: str) -> str | None:
    return ctx.request_attributes.get(key)


def _reachable(ctx: CustomerContext, channel: str) -> bool:
    return channel in ctx.profile.reachable_channels


def _consent(ctx: CustomerContext, channel: str) -> bool:
    return bool(ctx.profile.consents.get(channel, False))


def _count_events(ctx: CustomerContext, event_type: str, window: str) -> int:
    since = ctx.now - _cached_duration(window)
    return sum(1 for e in ctx.journey if e.type == event_type and e.timestamp >= since)


def _days_since(ctx: CustomerContext, event_type: str) -> float:
    for entry in ctx.journey:  # newest first
        if entry.type == event_type:
            return max(0.0, (ctx.now - entry.timestamp) / 86400.0)
    return _NEVER_DAYS


def _num(value: Any, default: float = 0.0) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return float(default)
    return result if math.isfinite(result) else float(default)


def _round_up(value: float, step: float) -> float:
    if step <= 0:
        raise ValueError("round_up step must be positive")
    return math.ceil(value / step) * step


_DURATIONS: dict[str, float] = {}


def _cached_duration(text: str) -> float:
    seconds = _DURATIONS.get(text)
    if seconds is None:
        seconds = _DURATIONS[text] = parse_duration(text)
    return seconds


def _days_until(ctx: CustomerContext, date: Any) -> float:
    """Days from the customer's local today to the next anniversary of ``date`` (YYYY-MM-DD or MM-DD)."""
    if not isinstance(date, str):
        return _NEVER_DAYS
    parts = date.strip().split("-")
    try:
        month, day = int(parts[-2]), int(parts[-1])
        today = local_minute(ctx.now, ctx.profile.timezone).date()
        target = _anniversary(today.year, month, day)
    except (ValueError, IndexError):
        return _NEVER_DAYS
    if target < today:
        target = _anniversary(today.year + 1, month, day)
    return float((target - today).days)


def _anniversary(year: int, month: int, day: int) -> datetime.date:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        if (month, day) == (2, 29):
            return datetime.date(year, 3, 1)  # a 29 February birthday in a common year
        raise


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def _nearest(geo: Any, kind: str) -> tuple[float, str]:
    places, latitude, longitude = geo
    best, name = _NEVER_KM, ""
    if latitude is None or longitude is None or (latitude == 0.0 and longitude == 0.0):
        return best, name  # no position in this event
    for place in places.get(kind, ()):
        distance = _haversine_km(latitude, longitude, place.latitude, place.longitude)
        if distance < best:
            best, name = distance, place.name
    return best, name


def _nearest_km(geo: Any, kind: str) -> float:
    return _nearest(geo, kind)[0]


def _nearest_name(geo: Any, kind: str) -> str:
    return _nearest(geo, kind)[1]


_NEVER_KM = 99999.0

#: name -> (implementation, hidden first argument ("_ctx": the CustomerContext,
#: "_event_attributes": the custom event's attributes, "_geo": the policy's places and
#: the event's position, "": none), arguments (min, max))
FUNCTIONS: dict[str, tuple[Any, str, tuple[int, int]]] = {
    "attr": (_attr, "_ctx", (1, 1)),
    "event_attr": (_event_attr, "_event_attributes", (1, 1)),
    "request_attr": (_request_attr, "_ctx", (1, 1)),
    "reachable": (_reachable, "_ctx", (1, 1)),
    "consent": (_consent, "_ctx", (1, 1)),
    "count_events": (_count_events, "_ctx", (2, 2)),
    "days_since": (_days_since, "_ctx", (1, 1)),
    "days_until": (_days_until, "_ctx", (1, 1)),
    "nearest_km": (_nearest_km, "_geo", (1, 1)),
    "nearest_name": (_nearest_name, "_geo", (1, 1)),
    "num": (_num, "", (1, 2)),
    "round_up": (_round_up, "", (2, 2)),
    "min": (min, "", (2, 8)),
    "max": (max, "", (2, 8)),
    "abs": (abs, "", (1, 1)),
    "round": (round, "", (1, 2)),
}


def evaluation_globals() -> dict[str, Any]:
    """The shared, read-only globals every compiled expression runs with."""
    scope: dict[str, Any] = {"__builtins__": {}}
    for name, (func, _, _) in FUNCTIONS.items():
        scope["_f_" + name] = func
    return scope


# --- compilation ----------------------------------------------------------------------

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.IfExp, ast.Constant, ast.List, ast.Tuple, ast.Name, ast.Load, ast.Call, ast.Attribute,
)
_DURATION_ARG_FUNCTIONS = {"count_events": 1}


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledExpression:
    source: str
    code: CodeType
    tree: ast.expr
    """The rewritten expression, for batching several into one code object."""
    names: frozenset[str]
    """Flat variable names the expression reads from the scope."""


@dataclasses.dataclass(frozen=True, slots=True)
class Definitions:
    """What a policy set declares for its rules: named conditions and the kinds of its places."""

    conditions: Mapping[str, ast.expr] = dataclasses.field(default_factory=dict)
    """Parsed (not yet checked) bodies of the named conditions, inlined where they are used."""
    place_kinds: frozenset[str] = frozenset()


def parse_condition(source: str) -> ast.expr:
    """Parse a named condition; it is checked where it is used (its event fields depend on the offer)."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("the expression is empty")
    try:
        return ast.parse(source.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1) from None


class _Rewriter(ast.NodeTransformer):
    def __init__(self, event_fields: frozenset[str], extra_names: frozenset[str],
                 definitions: Definitions | None = None) -> None:
        self.event_fields = event_fields
        self.extra_names = extra_names
        self.definitions = definitions or Definitions()
        self.names: set[str] = set()
        self._expanding: list[str] = []

    def _fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.Is, ast.IsNot)):
            raise self._fail(node, "'is' is not allowed in a rule: compare with == None or != None")
        if not isinstance(node, _ALLOWED_NODES):
            raise self._fail(node, f"{type(node).__name__.lower()} is not allowed in a rule")
        return super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            raise self._fail(node, f"constant {node.value!r} is not allowed in a rule")
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if not isinstance(node.value, ast.Name) or node.value.id not in ("event", "profile"):
            raise self._fail(node, "only event.<field> and profile.<field> may use a dot")
        owner, field = node.value.id, node.attr
        if owner == "event":
            if field != "type" and field not in self.event_fields:
                known = ", ".join(sorted(self.event_fields | {"type"}))
                raise self._fail(node, f"unknown field event.{field} (known here: {known})")
        elif field not in PROFILE_FIELDS:
            raise self._fail(node, f"unknown field profile.{field} (known: {', '.join(PROFILE_FIELDS)};"
                                   f" use attr('{field}') for a free attribute)")
        name = f"{owner}_{field}"
        self.names.add(name)
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in SCOPE_NAMES or node.id in self.extra_names:
            self.names.add(node.id)
            return node
        condition = self.definitions.conditions.get(node.id)
        if condition is not None:
            if node.id in self._expanding:
                raise self._fail(node, f"condition {node.id!r} refers to itself "
                                       f"({' -> '.join([*self._expanding, node.id])})")
            self._expanding.append(node.id)
            try:
                inlined = self.visit(copy.deepcopy(condition))
            except ExpressionError as exc:
                raise self._fail(node, f"in condition {node.id!r}: {exc.message}") from None
            finally:
                self._expanding.pop()
            for inner in ast.walk(inlined):  # type-checked where the condition is defined
                inner._nba_condition = node.id  # type: ignore[attr-defined]
            return ast.copy_location(inlined, node)
        if node.id in FUNCTIONS:
            raise self._fail(node, f"{node.id} is a function: call it, e.g. {node.id}(...)")
        if node.id in ("event", "profile"):
            raise self._fail(node, f"use {node.id}.<field>, not {node.id} alone")
        allowed = ", ".join(sorted({*SCOPE_NAMES, *self.extra_names, "event.<field>", "profile.<field>"}))
        raise self._fail(node, f"unknown name {node.id!r} (known: {allowed})")

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            shown = ast.unparse(node.func)
            raise self._fail(node, f"unknown function {shown!r} (known: {', '.join(sorted(FUNCTIONS))})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self._fail(node, f"{node.func.id}() takes positional arguments only")
        name = node.func.id
        _, hidden, (low, high) = FUNCTIONS[name]
        if not low <= len(node.args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            raise self._fail(node, f"{name}() takes {wanted} argument(s), got {len(node.args)}")
        if name in ("nearest_km", "nearest_name"):
            kind = node.args[0]
            if not isinstance(kind, ast.Constant) or kind.value not in self.definitions.place_kinds:
                declared = ", ".join(sorted(self.definitions.place_kinds)) or "none"
                shown = kind.value if isinstance(kind, ast.Constant) else ast.unparse(kind)
                raise self._fail(kind, f"{name}() needs a declared place kind in quotes, got {shown!r} "
                                       f"(declared: {declared})")
        position = _DURATION_ARG_FUNCTIONS.get(name)
        if position is not None:
            arg = node.args[position]
            if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
                raise self._fail(arg, f"{name}() needs a duration string such as '24h'")
            try:
                parse_duration(arg.value)
            except ValueError as exc:
                raise self._fail(arg, str(exc)) from None
        args = [self.visit(a) for a in node.args]
        if hidden:
            args.insert(0, ast.Name(id=hidden, ctx=ast.Load()))
        func = ast.Name(id="_f_" + name, ctx=ast.Load())
        return ast.copy_location(ast.Call(func=func, args=args, keywords=[]), node)


def compile_expression(
    source: str,
    *,
    event_types: Iterable[str] | None = (),
    extra_names: Iterable[str] = (),
    filename: str = "<rule>",
    definitions: Definitions | None = None,
) -> CompiledExpression:
    """Parse, check and compile one expression.

    ``event_types`` are the event types the expression may run on: ``event.<field>``
    must exist on every one of them (None: on any one of all event types). ``extra_names`` are further plain names the
    scope will hold (an offer's ``variables``).
    """
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1) from None
    rewriter = _Rewriter(_common_event_fields(event_types), frozenset(extra_names), definitions)
    body = rewriter.visit(tree).body
    _check_types(body)
    return _build(source, body, frozenset(rewriter.names), filename)


# --- compile-time type check ----------------------------------------------------------

_NUMBER_NAMES = frozenset({
    "event_amount", "event_balance", "event_shortfall", "event_latitude", "event_longitude", "event_accuracy_m",
    "event_cart_value", "event_item_count", "local_hour", "weekday", "day_of_month", "month", "open_cart_value",
})
_TEXT_NAMES = frozenset({
    "event_type", "event_currency", "event_atm_id", "event_place_id", "event_cart_id", "event_screen", "event_url",
    "event_page_type", "event_agent_id", "event_reason", "event_name", "origin_channel", "profile_segment",
    "profile_first_name", "profile_preferred_channel", "profile_timezone",
})
_NUMBER_FUNCTIONS = frozenset({"_f_num", "_f_count_events", "_f_days_since", "_f_days_until", "_f_nearest_km",
                               "_f_round_up", "_f_abs", "_f_round"})
_TEXT_FUNCTIONS = frozenset({"_f_nearest_name"})
_MAYBE_TEXT_FUNCTIONS = frozenset({"_f_attr", "_f_event_attr", "_f_request_attr"})
_VALUE_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _kind(node: ast.expr) -> str:
    """A coarse type: number, text, maybe-text (an attribute: text or None) or unknown."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or node.value is None:
            return "unknown"
        return "number" if isinstance(node.value, (int, float)) else "text" if isinstance(node.value, str) else "unknown"
    if isinstance(node, ast.Name):
        return "number" if node.id in _NUMBER_NAMES else "text" if node.id in _TEXT_NAMES else "unknown"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name in _NUMBER_FUNCTIONS:
            return "number"
        return "text" if name in _TEXT_FUNCTIONS else "maybe-text" if name in _MAYBE_TEXT_FUNCTIONS else "unknown"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return "number" if _kind(node.operand) == "number" else "unknown"
    if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Add):
        return "number" if _kind(node.left) == "number" and _kind(node.right) == "number" else "unknown"
    return "unknown"


def _check_types(tree: ast.expr) -> None:
    """Refuse comparisons that can only fail or raise: a number against text, or against an attribute."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or hasattr(node, "_nba_condition"):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, _VALUE_COMPARISONS):
                continue
            kinds = {_kind(left), _kind(right)}
            if kinds == {"number", "text"}:
                raise ExpressionError(f"compares a number with text ({_source_name(left)} and {_source_name(right)}): "
                                      "it is never true", node.lineno, node.col_offset + 1)
            if kinds == {"number", "maybe-text"}:
                attribute = left if _kind(left) == "maybe-text" else right
                raise ExpressionError(f"{_source_name(attribute)} is text (or None), not a number: compare "
                                      f"num({_source_name(attribute)}, DEFAULT) instead", node.lineno,
                                      node.col_offset + 1)


_HIDDEN_ARGUMENT = re.compile(r"_f_(\w+)\((?:_ctx|_geo|_event_attributes)(?:, )?")
_FLAT_FIELD = re.compile(r"\b(event|profile)_(\w+)")


def _source_name(node: ast.expr) -> str:
    """A rewritten (sub)expression as the policy author wrote it."""
    text = _HIDDEN_ARGUMENT.sub(r"\1(", ast.unparse(node))
    return _FLAT_FIELD.sub(r"\1.\2", text.replace("_f_", ""))


def compile_batch(expressions: Iterable[CompiledExpression], filename: str = "<rules>") -> CodeType:
    """One code object evaluating several expressions into a tuple: one ``eval`` per request."""
    tree = ast.Expression(body=ast.Tuple(elts=[e.tree for e in expressions], ctx=ast.Load()))
    ast.fix_missing_locations(tree)
    return compile(tree, filename, "eval")


def _build(source: str, body: ast.expr, names: frozenset[str], filename: str) -> CompiledExpression:
    tree = ast.Expression(body=body)
    ast.fix_missing_locations(tree)
    return CompiledExpression(source=source, code=compile(tree, filename, "eval"), tree=body, names=names)


def _common_event_fields(event_types: Iterable[str] | None) -> frozenset[str]:
    if event_types is None:  # any event type: a field of any of them
        return frozenset(f for fields in EVENT_FIELDS.values() for f in fields)
    fields: set[str] | None = None
    for event_type in event_types:
        these = set(EVENT_FIELDS.get(event_type, ()))
        fields = these if fields is None else fields & these
    return frozenset(fields or ())


# --- evaluation scope -----------------------------------------------------------------

def build_scope(ctx: CustomerContext, event: Event, places: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The per-request variables every expression of the request reads.

    ``places`` are the policy's places by kind (for ``nearest_km``/``nearest_name``).
    """
    profile = ctx.profile
    local = local_minute(ctx.now, profile.timezone)
    open_cart = 0.0
    for journey in ctx.open_journeys:
        if journey.kind == "cart":
            open_cart = _num(journey.fields.get("cart_value"), 0.0)
            break
    fields = event.fields
    scope: dict[str, Any] = {
        "_ctx": ctx,
        "_event_attributes": event.attributes,
        "_geo": (places or {}, fields.get("latitude"), fields.get("longitude")),
        "event_type": event.type,
        "origin_channel": ctx.origin_channel,
        "local_hour": local.hour,
        "weekday": local.weekday(),
        "day_of_month": local.day,
        "month": local.month,
        "open_cart_value": open_cart,
        "profile_segment": profile.segment,
        "profile_first_name": profile.first_name,
        "profile_preferred_channel": profile.preferred_channel,
        "profile_timezone": profile.timezone,
        "profile_known": profile.known,
    }
    for key, value in event.fields.items():
        scope["event_" + key] = value
    return scope
