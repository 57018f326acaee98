"""Reading a logged, randomised experiment: a CSV (or ``.csv.gz``) with one row per logged decision.

Only the named columns are read: the logged action, its reward, optionally its
logging propensity, and the feature columns the policy may use. Every other
column, outcomes included, is never read.
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
    },
}
"""Data sets shipped in :mod:`nba_service.data`, with their default columns."""


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

    def __len__(self) -> int:
        return len(self.reward)


@dataclasses.dataclass(slots=True)
class _Rows:
    """The named columns of the log's rows, as read."""

    actions: list[str] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    propensities: list[float] = dataclasses.field(default_factory=list)
    attributes: list[dict[str, str]] = dataclasses.field(default_factory=list)


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
    propensity is its share of the log.
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
    """Every data row (the header already read): the action, a finite reward, a propensity in (0, 1]."""
    position = {name: i for i, name in enumerate(header)}
    a_pos, r_pos = position[action_col], position[reward_col]
    p_pos = position[propensity_col] if propensity_col else None
    f_pos = [(name, position[name]) for name in feature_cols]
    rows = _Rows()
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise LogFormatError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        rows.actions.append(row[a_pos])
        rows.rewards.append(_number(row[r_pos], path, line, reward_col))
        if p_pos is not None:
            p = _number(row[p_pos], path, line, propensity_col or "")
            if not 0.0 < p <= 1.0:
                raise LogFormatError(f"{path}:{line}: propensity {p} is not in (0, 1]")
            rows.propensities.append(p)
        rows.attributes.append({name: row[i] for name, i in f_pos if row[i] != ""})
    return rows


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
