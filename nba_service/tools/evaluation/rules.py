"""The targeting-rule mini-language of ``nba evaluate --rule``: what a marketer could write before the experiment.

One line per rule, ``COLUMN=VALUE[,COLUMN=VALUE...]:ACTION``: when every
condition on the feature columns holds, the row gets ``ACTION``. The first
matching line wins and the last one, ``*:ACTION``, catches everyone else.
A rule reads only the feature columns of the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from nba_service.tools.evaluation.logs import LogFormatError, LoggedData

__all__ = ["TargetingRule", "parse_rules", "rule_actions"]


@dataclasses.dataclass(frozen=True, slots=True)
class TargetingRule:
    """One line of a targeting rule: when every ``column=value`` condition holds, ``action``."""

    conditions: tuple[tuple[str, str], ...]
    """(feature column, value) pairs, all required; none for the line that catches everyone else."""
    action: str
    text: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(column, "") == value for column, value in self.conditions)  # "" = no value


def parse_rules(texts: Sequence[str], data: LoggedData) -> tuple[TargetingRule, ...]:
    """``COLUMN=VALUE[,COLUMN=VALUE...]:ACTION`` lines, first match wins, the last one ``*:ACTION``.

    >>> data = LoggedData(("A", "B"), np.array([0, 1]), np.zeros(2), np.ones(2), ({}, {}), ("x",))
    >>> [(r.conditions, r.action) for r in parse_rules(["x=1:B", "*:A"], data)]
    [((('x', '1'),), 'B'), ((), 'A')]
    """
    rules = [_parse_rule(number, text, data) for number, text in enumerate(texts, start=1)]
    if rules and rules[-1].conditions:
        raise LogFormatError("the last --rule must be *:ACTION: what everyone the other lines miss gets")
    if any(not r.conditions for r in rules[:-1]):
        raise LogFormatError("only the last --rule may be *:ACTION: the lines after it would never match")
    return tuple(rules)


def _parse_rule(number: int, text: str, data: LoggedData) -> TargetingRule:
    """The ``number``-th ``--rule`` line."""
    where = f"--rule {number} ({text!r})"
    condition, sep, action = text.rpartition(":")
    condition, action = condition.strip(), action.strip()
    if not sep or not condition or not action:
        raise LogFormatError(f"{where}: write COLUMN=VALUE[,COLUMN=VALUE...]:ACTION, or *:ACTION for the rest")
    if action not in data.actions:
        raise LogFormatError(f"{where}: no action {action!r} in the log (actions: {', '.join(data.actions)})")
    conditions = () if condition == "*" else _parse_conditions(where, condition, data)
    return TargetingRule(conditions, action, text.strip())


def _parse_conditions(where: str, condition: str, data: LoggedData) -> tuple[tuple[str, str], ...]:
    """``COLUMN=VALUE[,COLUMN=VALUE...]`` on the feature columns."""
    conditions: list[tuple[str, str]] = []
    for part in condition.split(","):
        column, eq, value = part.partition("=")
        column, value = column.strip(), value.strip()
        if not eq or not column:
            raise LogFormatError(f"{where}: {part.strip()!r} is not COLUMN=VALUE")
        if column not in data.feature_cols:
            raise LogFormatError(
                f"{where}: {column!r} is not one of the feature columns "
                f"({', '.join(data.feature_cols)}); a rule reads only those"
            )
        conditions.append((column, value))
    return tuple(conditions)


def rule_actions(rules: Sequence[TargetingRule], data: LoggedData) -> np.ndarray:
    """Per row, the index of the action the rule gives it."""
    index = {a: i for i, a in enumerate(data.actions)}
    return np.array([index[next(r.action for r in rules if r.matches(row))] for row in data.attributes], dtype=np.intp)
