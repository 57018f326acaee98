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

**Why evaluating a rule is bounded.** A rule cannot loop (no comprehension,
lambda or call of anything but the rule functions), so it evaluates each of
its parts at most once; what remains is to bound the cost of each part:

- *Its size.* An expression is at most :data:`MAX_EXPRESSION_CHARS`
  characters as written, and at most :data:`MAX_EXPRESSION_PARTS` parts
  (names, values, operations, calls) nested at most :data:`MAX_EXPRESSION_DEPTH`
  deep, with :data:`MAX_CONSTANT_CHARS` characters of text and digits in its
  constants, once its named conditions are inlined (a condition used twice
  counts twice).
- *Its values.* Nothing can build a value much larger than its operands:
  repeating text or a list (``'x' * 200000000``, ``[1] * 10**9``) and
  ``%``-formatting (``'%0999999999d' % 1``) are refused here; ``**``,
  f-strings, indexing and methods are not in the whitelist; a ``*`` or ``%``
  whose operands are not both known to be numbers is compiled to a guarded
  operator (``_op_mul``/``_op_mod``) that refuses anything but numbers at run
  time (an attribute is text: ``attr('x') * 1000000`` raises a TypeError,
  and a failing rule only filters its offer). So text is never longer than
  the constants and attributes it concatenates, a list never longer than
  the expression, and a whole number never has more digits than the
  constants it is computed from (each of at most :data:`MAX_INTEGER_DIGITS`):
  the rule functions return floats or small whole numbers
  (``count_events``), and ``round`` takes at most
  :data:`~nba_service.policies.rule_functions.MAX_ROUND_DIGITS` digits
  (``round(1, -10**9)`` would compute ``10**10**9``).
- *Its functions.* ``count_events`` and ``days_since`` scan the journey the
  decision reads: at most 50 events (``StateStore.context_events``, itself
  at most ``journey_max_events``); ``nearest_km``/``nearest_name`` scan the
  places of one kind once per request (the result is kept in the request's
  scope); ``days_until`` and ``num`` read one attribute (at most 1 KiB);
  ``cart_open`` looks one id up in the set of the customer's open carts
  (gathered once per request, with the open journeys the request reads);
  ``min``/``max`` take at most 8 arguments; the others are O(1).

Each compiled expression carries its :attr:`CompiledExpression.cost`: its
parts plus what its calls and operators cost (:data:`CALL_COSTS`,
:data:`OPERATOR_COST`, :data:`PLACE_COST`). The
parser adds up the cost of every rule that can run for one event type and
refuses a set over its budget (:data:`nba_service.policies.parser.MAX_EVENT_COST`),
so one request evaluates a bounded amount of rule code, whatever the set (rules
at the budget, of the costliest kinds, take 1.5 to 2 ms per request on a 2-core
server: a unit is 25 to 40 ns); and
:class:`CompileBudget` bounds the parts a whole set may compile, so
validating a set is bounded too.

>>> rule = compile_expression("event.amount > event.balance and profile.segment in ['mass']",
...                           event_types=("atm_decline",))
>>> sorted(rule.names)
['event_amount', 'event_balance', 'profile_segment']
>>> try:
...     compile_expression("'x' * 200000000 != ''")
... except ExpressionError as exc:
...     print(exc.message)
'*' on text or a list repeats it: not allowed in a rule (it builds values of any size)
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from types import CodeType
from typing import Any

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.rule_functions import FUNCTIONS, MAX_ROUND_DIGITS, parse_duration
from nba_service.policies.scope import PROFILE_FIELDS, SCOPE_NAMES

__all__ = [
    "CALL_COSTS",
    "MAX_CONSTANT_CHARS",
    "MAX_EXPRESSION_CHARS",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_PARTS",
    "MAX_INTEGER_DIGITS",
    "MAX_SET_PARTS",
    "OPERATOR_COST",
    "PLACE_COST",
    "CompileBudget",
    "CompiledExpression",
    "Definitions",
    "ExpressionError",
    "compile_batch",
    "compile_expression",
    "parse_condition",
]

MAX_EXPRESSION_CHARS = 4_000
"""Characters of one expression as written."""
MAX_EXPRESSION_PARTS = 1_000
"""Parts (names, values, operations, calls) of one expression, its named conditions inlined."""
MAX_EXPRESSION_DEPTH = 100
"""How deep parts of one expression may nest, its named conditions inlined."""
MAX_CONSTANT_CHARS = 10_000
"""Characters of text and digits in the constants of one expression, its named conditions inlined."""
MAX_INTEGER_DIGITS = 15
"""Digits of a whole number written in a rule (a float, ``1e20``, is as large as it likes)."""
MAX_SET_PARTS = 100_000
"""Parts a whole policy set may compile (each use of a named condition counted): bounds validation."""
CALL_COSTS = {"count_events": 100, "days_since": 50, "days_until": 40, "round": 10, "num": 5, "cart_open": 5}
"""What a call of these costs beyond its parts, in the units of :attr:`CompiledExpression.cost` (a part
costs 10 to 50 ns): ``count_events`` scans the (at most 50) journey events a decision reads, ``days_since``
up to the first match, ``days_until`` converts today to the customer's time zone (about 2 µs), ``cart_open``
turns its argument to a cart id and looks it up in a set."""
OPERATOR_COST = 10
"""What ``*``, ``/``, ``//`` and ``%`` cost beyond their part: on whole numbers of thousands of digits (a
product of many constants) they take a few hundred ns."""
PLACE_COST = 20
"""What each place of a kind costs a request whose rules call ``nearest_km``/``nearest_name`` on that kind
(about 0.5 µs; once per request and kind)."""


class ExpressionError(ValueError):
    """An expression that cannot be compiled; ``line``/``column`` are 1-based in the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class _TooLarge(ExpressionError):
    """An expression over a size limit: reported where the author's expression is, not inside a condition."""


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
_REFUSED_NAMES = {ast.JoinedStr: "an f-string", ast.Pow: "'**'", ast.Subscript: "indexing"}
_DURATION_ARG_FUNCTIONS = {"count_events": 1}
_COSTLY_OPERATORS = (ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_GUARDED_OPERATORS = {ast.Mult: "_op_mul", ast.Mod: "_op_mod"}
"""Operators that build big values from text or lists: compiled to a numbers-only helper unless both
operands are known to be numbers (the helpers are in :func:`nba_service.policies.scope.evaluation_globals`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledExpression:
    """One checked rule: its source, its code object and the scope names it reads."""

    source: str
    code: CodeType
    tree: ast.expr
    """The rewritten expression, for batching several into one code object."""
    names: frozenset[str]
    """Flat variable names the expression reads from the scope."""
    cost: int = 0
    """What evaluating it costs at most, in units of about one part: its parts (named conditions inlined)
    plus :data:`CALL_COSTS` of its calls and :data:`OPERATOR_COST` of its ``*``, ``/``, ``//`` and ``%``;
    ``nearest_*`` calls are in :attr:`place_kinds`."""
    place_kinds: frozenset[str] = frozenset()
    """The kinds of places its ``nearest_km``/``nearest_name`` calls scan (once per request and kind)."""


@dataclasses.dataclass(slots=True)
class CompileBudget:
    """The parts a whole policy set may still compile, shared by every expression of the set."""

    left: int = MAX_SET_PARTS

    @property
    def spent(self) -> bool:
        return self.left < 0


@dataclasses.dataclass(frozen=True, slots=True)
class Definitions:
    """What a policy set declares for its rules: named conditions and the kinds of its places."""

    conditions: Mapping[str, ast.expr] = dataclasses.field(default_factory=dict)
    """Parsed (not yet checked) bodies of the named conditions, inlined where they are used."""
    place_kinds: frozenset[str] = frozenset()
    budget: CompileBudget = dataclasses.field(default_factory=CompileBudget)
    """What is left of the set's :data:`MAX_SET_PARTS`."""


def _parse(source: str) -> ast.Expression:
    """``source`` parsed, refused when it is too long (or nests too deeply for the parser)."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"the expression is {len(source):,} characters long: at most {MAX_EXPRESSION_CHARS:,}"
            " (split it into named conditions)"
        )
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(_too_deep()) from None
    return tree


def _too_deep() -> str:
    return f"the expression nests more than {MAX_EXPRESSION_DEPTH} levels deep"


def _check_depth(tree: ast.expr) -> int:
    """Refuse a tree deeper than :data:`MAX_EXPRESSION_DEPTH` (walked without recursion); its node count."""
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_EXPRESSION_DEPTH:
            raise _TooLarge(_too_deep(), getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return count


def parse_condition(source: str) -> ast.expr:
    """Parse a named condition; it is checked where it is used (its event fields depend on the offer).

    Its depth is checked now: it is copied (recursively) where it is used.
    """
    body = _parse(source).body
    body._nba_size = _check_depth(body)  # type: ignore[attr-defined]
    return body


class _Rewriter(ast.NodeTransformer):
    def __init__(
        self, event_fields: frozenset[str], extra_names: frozenset[str], definitions: Definitions | None = None
    ) -> None:
        self.event_fields = event_fields
        self.extra_names = extra_names
        self.definitions = definitions or Definitions()
        self.names: set[str] = set()
        self.place_kinds: set[str] = set()
        self.parts = 0
        self.copied = 0
        """Nodes of named conditions copied to be inlined: work done even when the expression fails."""
        self.constant_chars = 0
        self.call_costs = 0
        self._depth = 0
        self._expanding: list[str] = []

    def _fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1)

    def visit(self, node: ast.AST) -> Any:
        if not isinstance(node, ast.expr):
            return super().visit(node)
        self.parts += 1
        if self.parts > MAX_EXPRESSION_PARTS:
            raise _TooLarge(
                f"the expression has more than {MAX_EXPRESSION_PARTS:,} parts (names, values, operations,"
                " calls; a named condition counts each time it is used)",
                node.lineno,
                node.col_offset + 1,
            )
        self._depth += 1
        if self._depth > MAX_EXPRESSION_DEPTH:
            raise _TooLarge(_too_deep(), node.lineno, node.col_offset + 1)
        try:
            return super().visit(node)
        finally:
            self._depth -= 1

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.Is, ast.IsNot)):
            raise self._fail(node, "'is' is not allowed in a rule: compare with == None or != None")
        if not isinstance(node, _ALLOWED_NODES):
            shown = _REFUSED_NAMES.get(type(node), type(node).__name__.lower())
            raise self._fail(node, f"{shown} is not allowed in a rule")
        return super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if not isinstance(value, (int, float, str, bool, type(None))):
            raise self._fail(node, f"constant {value!r} is not allowed in a rule")
        if isinstance(value, str):
            self.constant_chars += len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value >= 10**MAX_INTEGER_DIGITS:
                raise self._fail(
                    node,
                    f"whole numbers have at most {MAX_INTEGER_DIGITS} digits in a rule (write a larger one"
                    " as a float, e.g. 1e20)",
                )
            self.constant_chars += len(str(value))
        if self.constant_chars > MAX_CONSTANT_CHARS:
            raise _TooLarge(
                f"the expression's text and numbers hold more than {MAX_CONSTANT_CHARS:,} characters"
                " (a named condition counts each time it is used)",
                node.lineno,
                node.col_offset + 1,
            )
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
            self.copied += getattr(condition, "_nba_size", 0)
            try:
                inlined = self.visit(copy.deepcopy(condition))
            except _TooLarge as exc:  # said of the expression as the author wrote it
                raise _TooLarge(exc.message, node.lineno, node.col_offset + 1) from None
            except ExpressionError as exc:
                raise self._fail(node, f"in condition {node.id!r}: {exc.message}") from None
            finally:
                self._expanding.pop()
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
            self.place_kinds.add(kind.value)
        position = _DURATION_ARG_FUNCTIONS.get(name)
        if position is not None:
            arg = node.args[position]
            if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
                raise self._fail(arg, f"{name}() needs a duration string such as '24h'")
            try:
                parse_duration(arg.value)
            except ValueError as exc:
                raise self._fail(arg, str(exc)) from None
        if name == "round" and len(node.args) == 2:
            digits = _constant_number(node.args[1])
            if digits is not None and not (
                isinstance(digits, int) and not isinstance(digits, bool) and abs(digits) <= MAX_ROUND_DIGITS
            ):
                raise self._fail(
                    node.args[1],
                    f"round() takes a whole number of digits from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS},"
                    f" got {digits!r}",
                )
        self.call_costs += CALL_COSTS.get(name, 0)
        args = [self.visit(a) for a in node.args]
        if hidden:
            args.insert(0, ast.copy_location(ast.Name(id=hidden, ctx=ast.Load()), node))
        func = ast.copy_location(ast.Name(id="_f_" + name, ctx=ast.Load()), node)
        return ast.copy_location(ast.Call(func=func, args=args, keywords=[]), node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, _COSTLY_OPERATORS):
            self.call_costs += OPERATOR_COST
        helper = _GUARDED_OPERATORS.get(type(node.op))
        if helper is None:
            return node
        left, right = node.left, node.right
        if isinstance(node.op, ast.Mult):
            for side in (left, right):
                if _kind(side) == "maybe-text":
                    raise self._fail(
                        node,
                        f"{_source_name(side)} is text (or None): '*' would repeat it; multiply"
                        f" num({_source_name(side)}, DEFAULT) instead",
                    )
                if _is_sequence(side):
                    raise self._fail(
                        node, "'*' on text or a list repeats it: not allowed in a rule (it builds values of any size)"
                    )
        elif _kind(left) == "maybe-text":
            raise self._fail(
                node,
                f"{_source_name(left)} is text (or None): '%' would format it; use num({_source_name(left)}, DEFAULT)",
            )
        elif _is_sequence(left):
            raise self._fail(node, "'%' on text formats it: not allowed in a rule (it builds values of any size)")
        if _kind(left) == "number" and _kind(right) == "number":
            return node  # numbers at run time (see _kind): the plain operator
        func = ast.copy_location(ast.Name(id=helper, ctx=ast.Load()), node)
        return ast.copy_location(ast.Call(func=func, args=[left, right], keywords=[]), node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if not self._expanding:  # a named condition's comparisons are checked where it is defined
            _check_comparison(node)
        return node


def _constant_number(node: ast.expr) -> object:
    """The value of a (possibly negated) constant, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return node.value if isinstance(node, ast.Constant) else None


def _is_sequence(node: ast.expr) -> bool:
    """Text or a list/tuple, as far as the compiler can tell."""
    return isinstance(node, (ast.List, ast.Tuple)) or _kind(node) == "text"


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
    scope will hold (an offer's ``variables``). The parts compiled are taken from ``definitions.budget``.
    """
    tree = _parse(source)
    rewriter = _Rewriter(_common_event_fields(event_types), frozenset(extra_names), definitions)
    try:
        body = rewriter.visit(tree).body
    finally:  # what was compiled counts, even when the expression fails
        if definitions is not None:
            definitions.budget.left -= rewriter.parts + rewriter.copied
    if definitions is not None and definitions.budget.spent:
        raise _TooLarge(
            f"the policy set's rules hold more than {MAX_SET_PARTS:,} parts in all (a named condition"
            " counts each time it is used): this rule and the ones after it are not compiled"
        )
    cost = rewriter.parts + rewriter.call_costs
    return _build(source, body, frozenset(rewriter.names), filename, cost, frozenset(rewriter.place_kinds))


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
        "days_until_holiday",
        "days_until_payday",
    }
)
"""Names that hold a number on every request (the event's numeric fields come typed from the API)."""
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
        "_op_mul",
        "_op_mod",
    }
)
"""Functions that return a number or raise."""
_TEXT_FUNCTIONS = frozenset({"_f_nearest_name"})
_MAYBE_TEXT_FUNCTIONS = frozenset({"_f_attr", "_f_event_attr", "_f_request_attr"})
_VALUE_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _kind(node: ast.expr) -> str:
    """A coarse type: number, text, maybe-text (an attribute: text or None) or unknown.

    "number" is a promise the guarded operators rely on: such an expression is a number (or raises)
    on every request.
    """
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
    if isinstance(node, ast.BinOp):
        return "number" if _kind(node.left) == "number" and _kind(node.right) == "number" else "unknown"
    return "unknown"


def _check_comparison(node: ast.Compare) -> None:
    """Refuse comparisons that can only fail or raise: a number against text, or against an attribute."""
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


_HIDDEN_ARGUMENT = re.compile(r"_f_(\w+)\((?:_ctx|_geo|_event_attributes|_open_carts)(?:, )?")
_FLAT_FIELD = re.compile(r"\b(event|profile)_(\w+)\b(?!\()")  # not event_attr(...)


def _source_name(node: ast.expr) -> str:
    """A rewritten (sub)expression as the policy author wrote it (a guarded operator as a call)."""
    text = _HIDDEN_ARGUMENT.sub(r"\1(", ast.unparse(_Unguard().visit(copy.deepcopy(node))))
    return _FLAT_FIELD.sub(r"\1.\2", text.replace("_f_", ""))


class _Unguard(ast.NodeTransformer):
    """A guarded operator back to the operator the author wrote."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and len(node.args) == 2:
            for op, helper in _GUARDED_OPERATORS.items():
                if node.func.id == helper:
                    return ast.BinOp(left=node.args[0], op=op(), right=node.args[1])
        return node


def compile_batch(expressions: Iterable[CompiledExpression], filename: str = "<rules>") -> CodeType:
    """One code object evaluating several expressions into a tuple: one ``eval`` per request."""
    batch = ast.Tuple(elts=[e.tree for e in expressions], ctx=ast.Load(), lineno=1, col_offset=0)
    return compile(ast.Expression(body=batch), filename, "eval")


def _build(
    source: str, body: ast.expr, names: frozenset[str], filename: str, cost: int, place_kinds: frozenset[str]
) -> CompiledExpression:
    # Every node has a position: parsed ones their own, rewritten ones the node they replace.
    code = compile(ast.Expression(body=body), filename, "eval")
    return CompiledExpression(source, code, body, names, cost, place_kinds)


def _common_event_fields(event_types: Iterable[str] | None) -> frozenset[str]:
    if event_types is None:  # any event type: a field of any of them
        return frozenset(f for fields in EVENT_FIELDS.values() for f in fields)
    fields: set[str] | None = None
    for event_type in event_types:
        these = set(EVENT_FIELDS.get(event_type, ()))
        fields = these if fields is None else fields & these
    return frozenset(fields or ())
