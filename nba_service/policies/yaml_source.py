"""YAML read with positions, and the collector that checks it and records every problem.

The policy parser (:mod:`nba_service.policies.parser`) reads each file into
``_Node`` values that remember their line and column, then walks them with a
:class:`Collector`: its checks (a mapping of known keys, a number in range,
an id, a rule expression, a list of limits...) return the value read or a
default, and record an issue pointing at the node instead of raising, so a
whole set is checked in one pass.

``_Node`` is internal to the policy parser; its name never reaches a message
(a value shown to the author goes through :func:`shown`).

Reading a file is bounded: at most :data:`MAX_FILE_BYTES`, mappings and
lists nested at most :data:`MAX_DEPTH` deep, at most :data:`MAX_ALIASES`
aliases, and at most :data:`MAX_NODES` values in the whole set once aliases
are expanded (a "billion laughs" file is refused after 120,000 values, not
expanded to a billion); a value that contains an alias of itself is refused.
Each limit is an issue at the file and line it is reached, like any other
problem. (An alias shares the value it names: it is not copied, only counted.)

>>> col = Collector("p.yaml")
>>> [root] = read_documents("prior: 1.5", col)
>>> col.number(root.value["prior"][1], "prior", 0.05, high=1)
1.5
>>> [str(issue) for issue in col.issues]
['p.yaml:1:8: prior: 1.5 must be <= 1']
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from nba_service.domain.timestamps import parse_iso, to_unix
from nba_service.policies.compiler import CompiledExpression, Definitions, ExpressionError, compile_expression
from nba_service.policies.model import LIMIT_DIRECTIONS, Limit, PolicyIssue
from nba_service.policies.rule_functions import parse_duration

__all__ = [
    "IDENTIFIER",
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MIB",
    "Collector",
    "ValueCount",
    "read_documents",
    "shown",
]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
"""What an id (of an offer, channel, category, place, variable or condition) looks like."""
_LIMIT_KEYS = {"max", "per", "channel", "category", "direction"}

MIB = 1024 * 1024
MAX_FILE_BYTES = 2 * MIB
"""Bytes (UTF-8) of one policy file."""
MAX_DEPTH = 64
"""How deep mappings and lists may nest (an offer's list of limits is at depth 4)."""
MAX_ALIASES = 1_000
"""Aliases (``*name``) of a mapping or a list in one file."""
MAX_NODES = 120_000
"""Values (each key, each item, each scalar) in a whole policy set, every alias expanded."""


class ValueCount:
    """The values read so far in a policy set (shared by the :func:`read_documents` of its files)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = 0


class _Node:
    """A parsed YAML value with the position it came from."""

    __slots__ = ("column", "line", "quoted", "value")

    def __init__(self, value: Any, line: int, column: int, quoted: bool = False) -> None:
        self.value = value
        self.line = line
        self.column = column
        self.quoted = quoted


class _Builder:
    """Composed YAML nodes as nested ``_Node`` values (mappings: key -> (key node, value node)), within the limits.

    An alias is the very node it names in the composed graph: an alias of a mapping or a list becomes the same
    ``_Node``, counted again (its values and one alias) but not copied; an alias of a scalar is one more value.
    """

    def __init__(self, count: ValueCount) -> None:
        self.count = count
        self.built: dict[int, tuple[_Node, int]] = {}
        """id of a composed mapping or list -> its ``_Node`` and its size (values, aliases expanded)."""
        self.building: set[int] = set()
        self.aliases = 0

    def build(self, node: yaml.Node, depth: int = 1) -> tuple[_Node, int]:
        if isinstance(node, yaml.ScalarNode):
            self._count(node, 1)
            return _scalar(node), 1
        key = id(node)
        seen = self.built.get(key)
        if seen is not None:
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _OverLimit(node, f"more than {MAX_ALIASES:,} aliases (*name) of a mapping or list in one file")
            self._count(node, seen[1])
            return seen
        if key in self.building:
            raise _OverLimit(node, "this value contains an alias (*name) of itself")
        if depth > MAX_DEPTH:
            raise _OverLimit(node, f"mappings and lists nested more than {MAX_DEPTH} levels deep")
        self._count(node, 1)
        self.building.add(key)
        size = 1
        if isinstance(node, yaml.MappingNode):
            mapping: dict[str, tuple[_Node, _Node]] = {}
            for key_node, value_node in node.value:
                item, key_size = self.build(key_node, depth + 1)
                if str(item.value) in mapping:
                    raise _DuplicateKey(item)
                value, value_size = self.build(value_node, depth + 1)
                mapping[str(item.value)] = (item, value)
                size += key_size + value_size
            built = _Node(mapping, node.start_mark.line + 1, node.start_mark.column + 1)
        else:
            items = []
            for item_node in node.value:
                item, item_size = self.build(item_node, depth + 1)
                items.append(item)
                size += item_size
            built = _Node(items, node.start_mark.line + 1, node.start_mark.column + 1)
        self.building.discard(key)
        self.built[key] = (built, size)
        return built, size

    def _count(self, node: yaml.Node, size: int) -> None:
        self.count.values += size
        if self.count.values > MAX_NODES:
            raise _OverLimit(node, f"more than {MAX_NODES:,} values in the policy set, aliases (*name) expanded")


_STR = "tag:yaml.org,2002:str"
_AS_TEXT = frozenset({_STR, "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})
"""Tags read as text: ``<<`` (a merge key) and ``=`` are then unknown keys, not a traceback."""
_SCALAR_TAGS = frozenset({"bool", "int", "float", "null", "timestamp", "binary"})


def _scalar(node: yaml.ScalarNode) -> _Node:
    """A scalar's value: text, or what YAML makes of a plain number, bool, null or date; no other tag."""
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    tag = node.tag
    if tag in _AS_TEXT:
        return _Node(node.value, line, column, node.style in ("'", '"'))
    if not tag.startswith("tag:yaml.org,2002:") or tag[18:] not in _SCALAR_TAGS:
        raise _BadScalar(_Node(node.value, line, column), f"the tag {tag} is not allowed here")
    try:  # the constructor itself: construct_object would keep every node it ever saw
        value = yaml.SafeLoader.yaml_constructors[tag](_SCALAR_LOADER, node)
    except (ValueError, KeyError, yaml.YAMLError) as exc:  # an unquoted date that does not exist: 2026-02-30
        raise _BadScalar(
            _Node(node.value, line, column), f"not a {tag[18:]}" if isinstance(exc, KeyError) else str(exc)
        ) from None
    return _Node(value, line, column, node.style in ("'", '"'))


class _OverLimit(Exception):
    """A file over one of the limits (or with a recursive alias), at the node where it was found."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1
        self.message = message


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


class _TagCache:
    """Resolves the tag of each distinct plain scalar once per file (it depends on the text only)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)  # type: ignore[misc]
            return tag
        return super().resolve(kind, value, implicit)  # type: ignore[misc]


class _DepthLimitedLoader(_TagCache, yaml.SafeLoader):
    """The pure-Python loader (where LibYAML is missing), refusing values nested too deep before it recurses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # the builder says so at the node (deeper: the composer would recurse)
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_LOADER: Any = (
    type("_CachedCSafeLoader", (_TagCache, yaml.CSafeLoader), {})
    if hasattr(yaml, "CSafeLoader")
    else _DepthLimitedLoader
)
"""LibYAML's loader when PyYAML has it: about 6 times faster (it refuses values nested over 1,000 deep itself)."""


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
        if node is None or self.definitions.budget.spent:  # over the set's budget: said once, where it was spent
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
            direction = self.choice(fields.get("direction"), f"{here}.direction", LIMIT_DIRECTIONS, "outbound")
            if channel and "direction" in fields:
                self.add(
                    fields["direction"],
                    f"{here}.direction: a limit on one channel counts that channel's contacts, whatever its"
                    " direction: remove direction, or the channel",
                )
            limit = Limit(maximum, seconds, str(fields["per"].value), channel, category, direction)
            out.append((dataclasses.replace(limit, direction_given="direction" in fields), item))
        return out

    def choice(self, node: _Node | None, where: str, options: tuple[str, ...], default: str) -> str:
        """One of ``options`` (``default`` when absent; an issue, and ``default``, when it is none of them)."""
        if node is None:
            return default
        if not isinstance(node.value, str) or node.value not in options:
            listed = f"{', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 else options[0]
            self.add(node, f"{where}: expected {listed}, got {shown(node.value)}")
            return default
        return node.value

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


def read_documents(text: str, col: Collector, count: ValueCount | None = None) -> Iterator[_Node]:
    """The root node of each YAML document in ``text``; what cannot be read is an issue in ``col`` instead.

    ``count`` counts the values of a whole set (the files read with it); by default, of this text alone.
    """
    if count is not None and count.values > MAX_NODES:  # the set is over already: said once, in an earlier file
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        col.issues.append(
            PolicyIssue(col.file, 1, 1, f"the file is {size / MIB:.1f} MiB: at most {MAX_FILE_BYTES // MIB} MiB a file")
        )
        return
    try:
        documents = list(yaml.compose_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "unreadable"
        if "maximum nesting depth" in problem:  # LibYAML's own limit (1,000)
            problem = f"nested more than {MAX_DEPTH} levels deep"
        col.issues.append(PolicyIssue(col.file, line, column, f"YAML: {problem}"))
        return
    except yaml.reader.ReaderError as exc:  # a control character: the reader has no line, only a position
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        col.issues.append(PolicyIssue(col.file, line, column, f"YAML: character #x{exc.character:04x} is not allowed"))
        return
    builder = _Builder(count or ValueCount())  # aliases are counted per file: one builder for all its documents
    for document in documents:
        if document is None:
            continue
        try:
            root = builder.build(document)[0]
        except _DuplicateKey as exc:
            col.add(exc.key, f"duplicate key {exc.key.value!r}: each key may appear once in a mapping")
            continue
        except _BadScalar as exc:
            col.add(exc.node, f"{exc.node.value!r} is not a valid value: {exc.reason}")
            continue
        except _OverLimit as exc:
            col.issues.append(PolicyIssue(col.file, exc.line, exc.column, exc.message))
            return
        yield root
