"""Reading a logged, randomised experiment: a CSV (or ``.csv.gz``) with one row per logged decision.

Only the named columns are read: the logged action, its reward, optionally its
logging propensity, and the feature columns the policy may use. Every other
column, outcomes included, is never read.

The reward column is read as users log it: a binary reward written ``1/0``,
``true/false``, ``yes/no`` or ``y/n`` (any case, spaces ignored), or a value
reward, a non-negative amount such as money spent. Which one is decided from
the whole column (:attr:`LoggedData.reward_kind`). A feature column may hold
numbers, categories or boolean words; a column of only boolean words (and
0/1) is read as 1/0, so it becomes a numeric feature. Blank cells are missing
values.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATASETS", "LogFormatError", "LoggedData", "dataset_path", "read_log"]

DATASETS: dict[str, dict[str, Any]] = {
    "hillstrom": {
        "file": "hillstrom.csv.gz",
        "action_col": "segment",
        "reward_col": "visit",
        "feature_cols": ("recency", "history", "mens", "womens", "zip_code", "newbie", "channel"),
        "propensity": 1.0 / 3.0,
        "propensity_col": None,
    },
    "obd-men": {
        "file": "obd_random_men.csv.gz",
        "action_col": "item_id",
        "reward_col": "click",
        "feature_cols": ("position", "user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3"),
        "propensity": None,
        "propensity_col": "propensity_score",
    },
}
"""Data sets shipped in :mod:`nba_service.data`, with their default columns.

Each gives its logging propensity either as a constant (``propensity``) or as
a column (``propensity_col``); the other one is ``None``.
"""

_BOOLEAN_WORDS: dict[str, tuple[float, str]] = {
    "true": (1.0, "true/false"),
    "false": (0.0, "true/false"),
    "yes": (1.0, "yes/no"),
    "no": (0.0, "yes/no"),
    "y": (1.0, "y/n"),
    "n": (0.0, "y/n"),
}
"""The boolean words (lower case, stripped): their 1/0 value and how the log spells them."""

_BINARY_SPELLINGS = "1/0, true/false, yes/no or y/n (any case)"
_ACCEPTED_REWARDS = (
    f"a reward is either binary, written {_BINARY_SPELLINGS}, or a value: a non-negative number such as an amount spent"
)


class LogFormatError(ValueError):
    """The log or its column description cannot be evaluated."""


def dataset_path(name: str) -> Path:
    """The path of a data set shipped with the package."""
    from importlib import resources

    if name not in DATASETS:
        raise LogFormatError(f"unknown data set {name!r} (shipped: {', '.join(DATASETS)})")
    return Path(str(resources.files("nba_service.data") / DATASETS[name]["file"]))


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedData:
    """A logged experiment: per row the action, its reward, its logging propensity and the features."""

    actions: tuple[str, ...]
    """Distinct actions, in the order they first appear in the log (the replay's offers, in that order)."""
    action: np.ndarray
    """Per row, the index of the logged action in ``actions``."""
    reward: np.ndarray
    propensity: np.ndarray
    """Per row, the probability with which the logging policy took the logged action."""
    attributes: tuple[Mapping[str, str], ...]
    """Per row, the feature columns (and only those) that have a value."""
    feature_cols: tuple[str, ...]
    reward_col: str = "reward"
    reward_kind: str = "binary"
    """``"binary"`` (every reward 0 or 1, however the log spelled it) or ``"value"`` (non-negative amounts)."""
    reward_spelling: str = "1/0"
    """How the log wrote a binary reward, e.g. ``"yes/no"``; empty for a value reward."""

    def __len__(self) -> int:
        return len(self.reward)

    def describe_reward(self) -> str:
        """The reward in a few words.

        >>> LoggedData(("A",), np.zeros(3, dtype=np.intp), np.array([1.0, 0.0, 0.0]), np.ones(3), ({}, {}, {}),
        ...            ("x",), "Converted", "binary", "yes/no").describe_reward()
        'binary: yes/no'
        >>> LoggedData(("A",), np.zeros(4, dtype=np.intp), np.array([0.0, 0.0, 0.0, 4.2]), np.ones(4),
        ...            ({}, {}, {}, {}), ("x",), "spend", "value", "").describe_reward()
        'value: mean 1.05, 0 for 75.0% of rows'
        """
        if self.reward_kind == "binary":
            return f"binary: {self.reward_spelling}"
        mean = float(np.mean(self.reward)) if len(self.reward) else 0.0
        zeros = float(np.mean(self.reward == 0.0)) if len(self.reward) else 0.0
        shown = f"{mean:,.2f}" if abs(mean) >= 0.995 else f"{mean:.3g}"
        return f"value: mean {shown}, 0 for {zeros:.1%} of rows"


@dataclasses.dataclass(slots=True)
class _Rows:
    """The named columns of the log's rows, as read."""

    actions: list[str] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    propensities: list[float] = dataclasses.field(default_factory=list)
    attributes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    spellings: dict[str, None] = dataclasses.field(default_factory=dict)
    """How the binary rewards were written (``"1/0"``, ``"yes/no"``...), in the order first seen."""
    first_word: tuple[int, str] | None = None
    """The line and text of the first reward written as a boolean word."""
    first_value: tuple[int, str] | None = None
    """The line and text of the first reward that is a number other than 0 and 1."""

    @property
    def reward_kind(self) -> str:
        return "binary" if self.first_value is None else "value"


def _read_reward(rows: _Rows, text: str, path: Path, line: int, column: str) -> float:
    """One reward cell as a number; tells ``rows`` which kind of reward it is.

    A boolean word (or 0/1) is a binary reward, another non-negative number a
    value; a column may not mix words with values.
    """
    word = text.strip().lower()
    if not word:
        raise LogFormatError(f"{path}:{line}: {column} is blank: every row needs its reward ({_ACCEPTED_REWARDS})")
    if word in _BOOLEAN_WORDS:
        value, spelling = _BOOLEAN_WORDS[word]
        if rows.first_value is not None:
            raise _mixed_rewards(path, line, column, text, rows.first_value)
        if rows.first_word is None:
            rows.first_word = (line, text)
        rows.spellings.setdefault(spelling)
        return value
    try:
        value = float(word)
    except ValueError:
        raise LogFormatError(
            f"{path}:{line}: {column} {text!r} is not a number or a binary reward; {_ACCEPTED_REWARDS}"
        ) from None
    if not math.isfinite(value):
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is not a finite number")
    if value < 0.0:
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is negative; a value reward must be 0 or more")
    if value in (0.0, 1.0):
        rows.spellings.setdefault("1/0")
    else:
        if rows.first_word is not None:
            raise _mixed_rewards(path, line, column, text, rows.first_word)
        if rows.first_value is None:
            rows.first_value = (line, text)
    return value


def _mixed_rewards(path: Path, line: int, column: str, text: str, other: tuple[int, str]) -> LogFormatError:
    return LogFormatError(
        f"{path}:{line}: {column} {text!r} mixes boolean words and amounts in one reward column "
        f"(line {other[0]} has {other[1]!r}); {_ACCEPTED_REWARDS}"
    )


def read_log(
    path: str | Path,
    *,
    action_col: str,
    reward_col: str,
    feature_cols: Sequence[str],
    propensity_col: str | None = None,
    propensity: float | None = None,
) -> LoggedData:
    """Read a CSV (or ``.csv.gz``) log: only the named columns are read.

    Without ``propensity_col`` or ``propensity``, each action's logging
    propensity is its share of the log. The reward is binary when every value
    is 0/1 or a boolean word (``true/false``, ``yes/no``, ``y/n``, any case),
    a value when every value is a non-negative number and some are not 0/1;
    anything else is a :class:`LogFormatError` naming the file and line.
    """
    path = Path(path)
    feature_cols = _check_columns(action_col, reward_col, feature_cols, propensity_col, propensity)
    rows = _read_rows(path, action_col, reward_col, feature_cols, propensity_col)
    if not rows.actions:
        raise LogFormatError(f"{path} has no rows")
    names = tuple(dict.fromkeys(rows.actions))
    index = {name: i for i, name in enumerate(names)}
    action = np.array([index[a] for a in rows.actions], dtype=np.intp)
    logged = _logged_propensities(action, len(names), rows.propensities if propensity_col else None, propensity)
    return LoggedData(
        actions=names,
        action=action,
        reward=np.array(rows.rewards),
        propensity=logged,
        attributes=tuple(rows.attributes),
        feature_cols=feature_cols,
        reward_col=reward_col,
        reward_kind=rows.reward_kind,
        reward_spelling=", ".join(rows.spellings) if rows.reward_kind == "binary" else "",
    )


def _check_columns(
    action_col: str, reward_col: str, feature_cols: Sequence[str], propensity_col: str | None, propensity: float | None
) -> tuple[str, ...]:
    """The feature columns, stripped, once the column description is known to make sense."""
    features = tuple(c.strip() for c in feature_cols if c.strip())
    if not features:
        raise LogFormatError("--feature-cols is required: name the columns the policy may use")
    if len(set(features)) != len(features):
        raise LogFormatError("--feature-cols names a column twice")
    for special, what in ((action_col, "action"), (reward_col, "reward"), (propensity_col, "propensity")):
        if special and special in features:
            raise LogFormatError(f"the {what} column {special!r} cannot be a feature")
    if propensity_col and propensity is not None:
        raise LogFormatError("give either a propensity column or a constant propensity, not both")
    if propensity is not None and not 0.0 < propensity <= 1.0:
        raise LogFormatError(f"the propensity must be in (0, 1], got {propensity}")
    return features


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_rows(
    path: Path, action_col: str, reward_col: str, feature_cols: tuple[str, ...], propensity_col: str | None
) -> _Rows:
    """The named columns of every non-blank row; any read or format error is a :class:`LogFormatError`."""
    try:
        stream = _open_text(path)
    except OSError as exc:
        raise LogFormatError(f"cannot read {path}: {exc}") from exc
    with stream:
        reader = csv.reader(stream)
        header = _read_header(reader, path)
        wanted = [action_col, reward_col, *feature_cols] + ([propensity_col] if propensity_col else [])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise LogFormatError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
        try:
            return _parse_rows(reader, header, path, action_col, reward_col, feature_cols, propensity_col)
        except (csv.Error, OSError, UnicodeDecodeError, EOFError) as exc:
            raise LogFormatError(f"cannot read {path}: {exc}") from exc


def _read_header(reader: Iterator[list[str]], path: Path) -> list[str]:
    try:
        return next(reader)
    except StopIteration:
        raise LogFormatError(f"{path} is empty") from None
    except (csv.Error, OSError, UnicodeDecodeError) as exc:
        raise LogFormatError(f"cannot read {path}: {exc}") from exc


def _parse_rows(
    reader: Iterator[list[str]],
    header: list[str],
    path: Path,
    action_col: str,
    reward_col: str,
    feature_cols: tuple[str, ...],
    propensity_col: str | None,
) -> _Rows:
    """Every data row (the header already read): the action, a reward, a propensity in (0, 1], the features.

    A feature column that holds only boolean words (and 0/1) is read as 1/0; blank cells are left out.
    """
    position = {name: i for i, name in enumerate(header)}
    a_pos, r_pos = position[action_col], position[reward_col]
    p_pos = position[propensity_col] if propensity_col else None
    f_pos = [(name, position[name]) for name in feature_cols]
    rows = _Rows()
    # the feature columns made of boolean words and 0/1 only so far, and whether they had a word yet
    boolean = dict.fromkeys(feature_cols, False)
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise LogFormatError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        rows.actions.append(row[a_pos])
        rows.rewards.append(_read_reward(rows, row[r_pos], path, line, reward_col))
        if p_pos is not None:
            p = _number(row[p_pos], path, line, propensity_col or "")
            if not 0.0 < p <= 1.0:
                raise LogFormatError(f"{path}:{line}: propensity {p} is not in (0, 1]")
            rows.propensities.append(p)
        attributes = {name: row[i] for name, i in f_pos if row[i].strip()}
        for name in [n for n in boolean if n in attributes]:
            word = attributes[name].strip().lower()
            if word in _BOOLEAN_WORDS:
                boolean[name] = True
            elif word not in ("0", "1"):
                del boolean[name]
        rows.attributes.append(attributes)
    _booleans_as_numbers(rows.attributes, [name for name, had_word in boolean.items() if had_word])
    return rows


def _booleans_as_numbers(attributes: list[dict[str, str]], columns: Sequence[str]) -> None:
    """In the boolean ``columns``, every word becomes ``"1"`` or ``"0"``: a numeric feature."""
    if not columns:
        return
    as_number = {word: "1" if value else "0" for word, (value, _) in _BOOLEAN_WORDS.items()} | {"0": "0", "1": "1"}
    for row in attributes:
        for name in columns:
            if name in row:
                row[name] = as_number[row[name].strip().lower()]


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value


def _logged_propensities(
    action: np.ndarray, n_actions: int, column: list[float] | None, constant: float | None
) -> np.ndarray:
    """Per row, the logging propensity: from its column, the constant, else each action's share of the log."""
    if column is not None:
        return np.array(column)
    if constant is not None:
        return np.full(len(action), constant)
    share = np.bincount(action, minlength=n_actions) / len(action)
    return share[action]
