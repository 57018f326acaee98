"""The rule compiler: a whitelisted subset of Python expressions, to code objects.

An expression is parsed once, checked node by node against a whitelist, has
its names rewritten to flat variables (``event.amount`` -> ``event_amount``,
``days_since('x')`` -> ``_f_days_since(_ctx, 'x')``), has its comparisons
type-checked and is compiled to a code object. Evaluating it is a plain
``eval`` of that code object over a scope dict built once per request
(:mod:`nba_service.policies.scope`): about 0.2 µs a rule, no parsing at
request time, and no way to reach attributes, builtins or anything not
listed here. The functions a rule may call are in
:mod:`nba_service.policies.rule_functions`.

>>> rule = compile_expression("event.amount > event.balance and profile.segment in ['mass']",
...                           event_types=("atm_decline",))
>>> sorted(rule.names)
['event_amount', 'event_balance', 'profile_segment']
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from types import CodeType

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.rule_functions import FUNCTIONS, parse_duration
from nba_service.policies.scope import PROFILE_FIELDS, SCOPE_NAMES

__all__ = [
    "CompiledExpression",
    "Definitions",
    "ExpressionError",
    "compile_batch",
    "compile_expression",
    "parse_condition",
]


class ExpressionError(ValueError):
    """An expression that cannot be compiled; ``line``/``column`` are 1-based in the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.IfExp,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Name,
    ast.Load,
    ast.Call,
    ast.Attribute,
)
_DURATION_ARG_FUNCTIONS = {"count_events": 1}


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledExpression:
    """One checked rule: its source, its code object and the scope names it reads."""

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
    def __init__(
        self, event_fields: frozenset[str], extra_names: frozenset[str], definitions: Definitions | None = None
    ) -> None:
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
            raise self._fail(
                node,
                f"unknown field profile.{field} (known: {', '.join(PROFILE_FIELDS)};"
                f" use attr('{field}') for a free attribute)",
            )
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
                raise self._fail(
                    node, f"condition {node.id!r} refers to itself ({' -> '.join([*self._expanding, node.id])})"
                )
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
                given = kind.value if isinstance(kind, ast.Constant) else ast.unparse(kind)
                raise self._fail(
                    kind, f"{name}() needs a declared place kind in quotes, got {given!r} (declared: {declared})"
                )
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

_NUMBER_NAMES = frozenset(
    {
        "event_amount",
        "event_balance",
        "event_shortfall",
        "event_latitude",
        "event_longitude",
        "event_accuracy_m",
        "event_cart_value",
        "event_item_count",
        "local_hour",
        "weekday",
        "day_of_month",
        "month",
        "open_cart_value",
    }
)
_TEXT_NAMES = frozenset(
    {
        "event_type",
        "event_currency",
        "event_atm_id",
        "event_place_id",
        "event_cart_id",
        "event_screen",
        "event_url",
        "event_page_type",
        "event_agent_id",
        "event_reason",
        "event_name",
        "origin_channel",
        "profile_segment",
        "profile_first_name",
        "profile_preferred_channel",
        "profile_timezone",
    }
)
_NUMBER_FUNCTIONS = frozenset(
    {
        "_f_num",
        "_f_count_events",
        "_f_days_since",
        "_f_days_until",
        "_f_nearest_km",
        "_f_round_up",
        "_f_abs",
        "_f_round",
    }
)
_TEXT_FUNCTIONS = frozenset({"_f_nearest_name"})
_MAYBE_TEXT_FUNCTIONS = frozenset({"_f_attr", "_f_event_attr", "_f_request_attr"})
_VALUE_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _kind(node: ast.expr) -> str:
    """A coarse type: number, text, maybe-text (an attribute: text or None) or unknown."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or node.value is None:
            return "unknown"
        if isinstance(node.value, (int, float)):
            return "number"
        return "text" if isinstance(node.value, str) else "unknown"
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
                raise ExpressionError(
                    f"compares a number with text ({_source_name(left)} and {_source_name(right)}): it is never true",
                    node.lineno,
                    node.col_offset + 1,
                )
            if kinds == {"number", "maybe-text"}:
                attribute = left if _kind(left) == "maybe-text" else right
                raise ExpressionError(
                    f"{_source_name(attribute)} is text (or None), not a number: compare "
                    f"num({_source_name(attribute)}, DEFAULT) instead",
                    node.lineno,
                    node.col_offset + 1,
                )


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
