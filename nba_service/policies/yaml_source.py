"""YAML read with positions, and the collector that checks it and records every problem.

The policy parser (:mod:`nba_service.policies.parser`) reads each file into
``_Node`` values that remember their line and column, then walks them with a
:class:`Collector`: its checks (a mapping of known keys, a number in range,
an id, a rule expression, a list of limits...) return the value read or a
default, and record an issue pointing at the node instead of raising, so a
whole set is checked in one pass.

``_Node`` is internal to the policy parser; its name never reaches a message
(a value shown to the author goes through :func:`shown`).

>>> col = Collector("p.yaml")
>>> [root] = read_documents("prior: 1.5", col)
>>> col.number(root.value["prior"][1], "prior", 0.05, high=1)
1.5
>>> [str(issue) for issue in col.issues]
['p.yaml:1:8: prior: 1.5 must be <= 1']
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from nba_service.domain.timestamps import parse_iso, to_unix
from nba_service.policies.compiler import CompiledExpression, Definitions, ExpressionError, compile_expression
from nba_service.policies.model import Limit, PolicyIssue
from nba_service.policies.rule_functions import parse_duration

__all__ = ["IDENTIFIER", "Collector", "read_documents", "shown"]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
"""What an id (of an offer, channel, category, place, variable or condition) looks like."""
_LIMIT_KEYS = {"max", "per", "channel", "category"}


class _Node:
    """A parsed YAML value with the position it came from."""

    __slots__ = ("column", "line", "quoted", "value")

    def __init__(self, value: Any, line: int, column: int, quoted: bool = False) -> None:
        self.value = value
        self.line = line
        self.column = column
        self.quoted = quoted


def _to_nodes(node: yaml.Node) -> _Node:
    """A composed YAML node as nested ``_Node`` values (mappings: key -> (key node, value node))."""
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
    """A key appears twice in one mapping."""

    def __init__(self, key: _Node) -> None:
        self.key = key


class _BadScalar(Exception):
    """A plain value YAML cannot construct (an unquoted date that does not exist)."""

    def __init__(self, node: _Node, reason: str) -> None:
        self.node = node
        self.reason = reason


def shown(value: Any) -> str:
    """``value`` as a message shows it: a mapping or list by its kind, a scalar by its repr."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_SCALAR_LOADER = yaml.SafeLoader("")


class Collector:
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

    def mapping(
        self, node: _Node, where: str, allowed: set[str], required: Iterable[str] = ()
    ) -> dict[str, _Node] | None:
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

    def number(
        self,
        node: _Node | None,
        where: str,
        default: float,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        if node is None:
            return default
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.add(node, f"{where}: expected a number, got {shown(value)}")
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
            self.add(node, f"{where}: expected true or false, got {shown(node.value)}")
            return default
        return node.value

    def text(self, node: _Node | None, where: str, default: str = "") -> str:
        if node is None:
            return default
        if not isinstance(node.value, str) or not node.value.strip():
            self.add(
                node,
                f"{where}: expected non-empty text, got {shown(node.value)}"
                + (" (text starting with { must be quoted)" if isinstance(node.value, dict) else ""),
            )
            return default
        return node.value

    def ident(self, node: _Node | None, where: str) -> str:
        value = self.text(node, where)
        if value and not IDENTIFIER.match(value):
            self.add(
                node, f"{where}: {value!r} is not an id (lower case letters, digits and _, starting with a letter)"
            )
        return value

    def ident_list(self, node: _Node | None, where: str) -> list[tuple[str, _Node]]:
        if node is None:
            return []
        if not isinstance(node.value, list):
            self.add(node, f"{where}: expected a list")
            return []
        return [(self.ident(item, f"{where}[{i}]"), item) for i, item in enumerate(node.value)]

    def expression(
        self, node: _Node | None, where: str, event_types: Iterable[str] | None = (), extra_names: Iterable[str] = ()
    ) -> CompiledExpression | None:
        if node is None:
            return None
        source = node.value
        if not isinstance(source, str):
            self.add(node, f"{where}: expected an expression in quotes, got {shown(source)}")
            return None
        try:
            return compile_expression(
                source,
                event_types=event_types,
                extra_names=extra_names,
                filename=f"{self.file}:{node.line}",
                definitions=self.definitions,
            )
        except ExpressionError as exc:
            # Point into the expression when it sits on one line (plain or quoted scalar).
            column = node.column + (exc.column - 1) + (1 if node.quoted else 0)
            self.add(
                node,
                f"{where}: {exc.message}",
                line_offset=exc.line - 1,
                column=column if exc.line == 1 else exc.column,
            )
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
                self.add(fields["max"], f"{here}.max: expected a whole number >= 0, got {shown(maximum)}")
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
        self.add(node, f"{where}: {shown(value)} is not an ISO date or date-time")
        return None


def read_documents(text: str, col: Collector) -> Iterator[_Node]:
    """The root node of each YAML document in ``text``; what cannot be read is an issue in ``col`` instead."""
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        col.issues.append(PolicyIssue(col.file, line, column, f"YAML: {exc.problem or exc.context}"))
        return
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
        yield root
