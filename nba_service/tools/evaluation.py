"""Offline evaluation of the learned policy on a logged, randomised experiment.

A log where each row's action was chosen at random with a known probability
(an A/B/n test, a uniformly exploring bandit) is replayed through the real
decision engine and the real learner, online, with the replay method (Li et
al., WSDM 2011): for every row the engine decides from that row's features
only; when it picks the logged action the row counts, its reward is the
policy's reward and the learner learns it; otherwise the row is skipped (what
that customer would have done is unknown). The learned policy's mean over the
counted rows is an unbiased estimate of its online reward when the logging was
uniform; with logged propensities IPS and self-normalised IPS are reported too.

Every action becomes an offer (value 1, one channel ``replay`` that needs no
consent) answering a ``custom`` event whose attributes are the row's feature
columns and nothing else: the engine turns them into model features like any
request's (numbers on a log scale, anything else one-hot). Outcome columns
are never read as features.

Next to it: uniform random, each fixed action (its rows of the log, weighted
by the propensities), the best fixed action in hindsight and, when given, a
targeting rule a marketer could write before the experiment (first matching
condition on the feature columns wins), replayed the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import make_explorer
from nba_service.learning.models import ModelBank
from nba_service.policies.schema import PolicySet, parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.tools.off_policy import Estimate, ips, mean_estimate, snips

__all__ = [
    "DATASETS",
    "Evaluation",
    "LogFormatError",
    "LoggedData",
    "ReplayConfig",
    "TargetingRule",
    "dataset_path",
    "evaluate",
    "parse_rules",
    "plot_learning_curve",
    "read_log",
    "replay_policy",
]

CHANNEL = "replay"
_NOW = datetime.datetime(2026, 1, 7, 12, 0, tzinfo=datetime.UTC).timestamp()
"""Every replayed decision happens at the same moment: time of day is not a feature of the log."""

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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_log(path: str | Path, *, action_col: str, reward_col: str, feature_cols: Sequence[str],
             propensity_col: str | None = None, propensity: float | None = None) -> LoggedData:
    """Read a CSV (or ``.csv.gz``) log: only the named columns are read.

    Without ``propensity_col`` or ``propensity``, each action's logging
    propensity is its share of the log.
    """
    path = Path(path)
    feature_cols = tuple(c.strip() for c in feature_cols if c.strip())
    if not feature_cols:
        raise LogFormatError("--feature-cols is required: name the columns the policy may use")
    if len(set(feature_cols)) != len(feature_cols):
        raise LogFormatError("--feature-cols names a column twice")
    for special, what in ((action_col, "action"), (reward_col, "reward"), (propensity_col, "propensity")):
        if special and special in feature_cols:
            raise LogFormatError(f"the {what} column {special!r} cannot be a feature")
    if propensity_col and propensity is not None:
        raise LogFormatError("give either a propensity column or a constant propensity, not both")
    if propensity is not None and not 0.0 < propensity <= 1.0:
        raise LogFormatError(f"the propensity must be in (0, 1], got {propensity}")
    try:
        stream = _open_text(path)
    except OSError as exc:
        raise LogFormatError(f"cannot read {path}: {exc}") from exc
    with stream:
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except StopIteration:
            raise LogFormatError(f"{path} is empty") from None
        except (csv.Error, OSError, UnicodeDecodeError) as exc:
            raise LogFormatError(f"cannot read {path}: {exc}") from exc
        position = {name: i for i, name in enumerate(header)}
        wanted = [action_col, reward_col, *feature_cols] + ([propensity_col] if propensity_col else [])
        missing = [c for c in wanted if c not in position]
        if missing:
            raise LogFormatError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
        a_pos, r_pos = position[action_col], position[reward_col]
        p_pos = position[propensity_col] if propensity_col else None
        f_pos = [(name, position[name]) for name in feature_cols]
        actions: list[str] = []
        rewards: list[float] = []
        propensities: list[float] = []
        attributes: list[dict[str, str]] = []
        try:
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise LogFormatError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                actions.append(row[a_pos])
                rewards.append(_number(row[r_pos], path, line, reward_col))
                if p_pos is not None:
                    p = _number(row[p_pos], path, line, propensity_col or "")
                    if not 0.0 < p <= 1.0:
                        raise LogFormatError(f"{path}:{line}: propensity {p} is not in (0, 1]")
                    propensities.append(p)
                attributes.append({name: row[i] for name, i in f_pos if row[i] != ""})
        except (csv.Error, OSError, UnicodeDecodeError, EOFError) as exc:
            raise LogFormatError(f"cannot read {path}: {exc}") from exc
    if not actions:
        raise LogFormatError(f"{path} has no rows")
    names = tuple(dict.fromkeys(actions))
    index = {name: i for i, name in enumerate(names)}
    action = np.array([index[a] for a in actions], dtype=np.intp)
    if p_pos is not None:
        logged = np.array(propensities)
    elif propensity is not None:
        logged = np.full(len(actions), propensity)
    else:  # each action's share of the log
        share = np.bincount(action, minlength=len(names)) / len(action)
        logged = share[action]
    return LoggedData(actions=names, action=action, reward=np.array(rewards), propensity=logged,
                      attributes=tuple(attributes), feature_cols=feature_cols, reward_col=reward_col)


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LogFormatError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value


# --- a targeting rule to compare with ---------------------------------------------------

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
    rules = []
    for number, text in enumerate(texts, start=1):
        where = f"--rule {number} ({text!r})"
        condition, sep, action = text.rpartition(":")
        condition, action = condition.strip(), action.strip()
        if not sep or not condition or not action:
            raise LogFormatError(f"{where}: write COLUMN=VALUE[,COLUMN=VALUE...]:ACTION, or *:ACTION for the rest")
        if action not in data.actions:
            raise LogFormatError(f"{where}: no action {action!r} in the log (actions: {', '.join(data.actions)})")
        conditions: list[tuple[str, str]] = []
        if condition != "*":
            for part in condition.split(","):
                column, eq, value = part.partition("=")
                column, value = column.strip(), value.strip()
                if not eq or not column:
                    raise LogFormatError(f"{where}: {part.strip()!r} is not COLUMN=VALUE")
                if column not in data.feature_cols:
                    raise LogFormatError(f"{where}: {column!r} is not one of the feature columns "
                                         f"({', '.join(data.feature_cols)}); a rule reads only those")
                conditions.append((column, value))
        rules.append(TargetingRule(tuple(conditions), action, text.strip()))
    if rules and rules[-1].conditions:
        raise LogFormatError("the last --rule must be *:ACTION: what everyone the other lines miss gets")
    if any(not r.conditions for r in rules[:-1]):
        raise LogFormatError("only the last --rule may be *:ACTION: the lines after it would never match")
    return tuple(rules)


def _rule_actions(rules: Sequence[TargetingRule], data: LoggedData) -> np.ndarray:
    """Per row, the index of the action the rule gives it."""
    index = {a: i for i, a in enumerate(data.actions)}
    return np.array([index[next(r.action for r in rules if r.matches(row))] for row in data.attributes],
                    dtype=np.intp)


def _rule_estimate(data: LoggedData, rules: Sequence[TargetingRule]) -> Estimate:
    matched = _rule_actions(rules, data) == data.action
    if not matched.any():
        raise LogFormatError("the rule never gives a row the action the log took: nothing to evaluate it on")
    return _replay_estimate(data, matched)


def _replay_estimate(data: LoggedData, matched: np.ndarray) -> Estimate:
    """A fixed policy's reward from the rows where it took the logged action (weighted if propensities vary)."""
    if np.ptp(data.propensity[matched]) == 0.0:
        return mean_estimate(data.reward[matched])
    return dataclasses.replace(snips(data.reward, data.propensity, matched.astype(float)), rows=int(matched.sum()))


# --- the replay policy -----------------------------------------------------------------

def offer_ids(actions: Sequence[str]) -> list[str]:
    """Policy-safe offer ids for action names, unique, in the same order.

    >>> offer_ids(["Mens E-Mail", "No E-Mail", "14", "mens-e-mail"])
    ['mens_e_mail', 'no_e_mail', 'a_14', 'mens_e_mail_2']
    """
    ids: list[str] = []
    for name in actions:
        base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "action"
        if not base[0].isalpha():
            base = "a_" + base
        candidate, k = base, 2
        while candidate in ids:
            candidate, k = f"{base}_{k}", k + 1
        ids.append(candidate)
    return ids


def replay_policy(actions: Sequence[str], prior: float) -> PolicySet:
    """A policy set with one offer per action, each answering the ``custom`` event on one channel."""
    policy = {
        "settings": {"no_action_threshold": 0.0},
        "channels": [{"id": CHANNEL, "name": "Replayed log", "needs_reachable": False, "default_consent": True}],
        "offers": [
            {"id": offer_id, "name": name, "category": "replay", "events": ["custom"], "value": 1.0,
             "prior": prior, "channels": [CHANNEL], "content": {"default": "replayed action"}}
            for offer_id, name in zip(offer_ids(actions), actions, strict=False)
        ],
    }
    return parse_policy_files({"replay.yaml": yaml.safe_dump(policy, sort_keys=False)})


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayConfig:
    """The learned policy under evaluation: exploration strategy and learner settings."""

    strategy: str = "epsilon"
    epsilon: float = 0.05
    temperature: float = 0.1
    learning_rate: float = 0.001
    l2: float = 0.0
    prior: float = 0.1
    """Every offer's cold-start acceptance guess, the same for all: nothing in the log is known before it starts."""
    seed: int = 0

    def describe(self) -> str:
        knob = f"epsilon {self.epsilon:g}" if self.strategy == "epsilon" else f"temperature {self.temperature:g}"
        return (f"{self.strategy} ({knob}), learning rate {self.learning_rate:g}, l2 {self.l2:g}, "
                f"prior {self.prior:g}, seed {self.seed}")


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """What :func:`evaluate` measured."""

    actions: tuple[str, ...]
    reward_col: str
    rows: int
    config: ReplayConfig
    learned: Estimate
    """Replay: the mean reward over the rows where the engine picked the logged action."""
    learned_ips: Estimate
    learned_snips: Estimate
    random: Estimate
    fixed: Mapping[str, Estimate]
    best_action: str
    curve: np.ndarray
    """Cumulative mean reward of the learned policy after each counted row."""
    picks: Mapping[str, int]
    """How often the engine picked each action over the whole log."""
    late_picks: Mapping[str, int]
    """The same over the last tenth of the log: what the policy converged to."""
    rule: Estimate | None = None
    """The targeting rule's reward, when one was given."""
    rule_text: str = ""

    @property
    def best_fixed(self) -> Estimate:
        return self.fixed[self.best_action]

    def to_json(self) -> dict[str, Any]:
        learned = self.learned.as_dict()
        learned.update(ips=self.learned_ips.as_dict(), snips=self.learned_snips.as_dict(),
                       picks=dict(self.picks), late_picks=dict(self.late_picks))
        policies: dict[str, Any] = {
            "learned": learned,
            "random": self.random.as_dict(),
            "best_fixed": {**self.best_fixed.as_dict(), "action": self.best_action},
        }
        for action, estimate in self.fixed.items():
            policies[f"fixed:{action}"] = estimate.as_dict()
        if self.rule is not None:
            policies["rule"] = {**self.rule.as_dict(), "rule": self.rule_text}
        return {"reward": self.reward_col, "rows": self.rows, "actions": list(self.actions),
                "config": dataclasses.asdict(self.config), "policies": policies}

    def table(self) -> str:
        """The figures as an aligned text table."""
        lines = [("learned (replay)", self.learned), ("learned (IPS)", self.learned_ips),
                 ("random", self.random)]
        lines += [(f"fixed:{a}", e) for a, e in sorted(self.fixed.items(), key=lambda item: -item[1].value)]
        lines.append((f"best_fixed ({self.best_action})", self.best_fixed))
        if self.rule is not None:
            lines.append(("rule", self.rule))
        width = max(len(name) for name, _ in lines)
        out = [f"{'policy':<{width}}  {'mean':>8}  {'95% CI':^19}  {'rows':>7}"]
        for name, e in lines:
            out.append(f"{name:<{width}}  {e.value:>8.4f}  [{e.ci_low:.4f}, {e.ci_high:.4f}]  {e.rows:>7,}")
        return "\n".join(out)


def evaluate(data: LoggedData, config: ReplayConfig = ReplayConfig(), progress: bool = False,
             rules: Sequence[TargetingRule] = ()) -> Evaluation:
    """Replay ``data`` through the real engine and learner; compare with random, fixed actions and the rules."""
    n, k = len(data), len(data.actions)
    policy = replay_policy(data.actions, config.prior)
    snapshot = PolicySnapshot.compile(policy, "replay")
    bank = ModelBank(learning_rate=config.learning_rate, l2=config.l2)
    bank.bind(snapshot)
    engine = DecisionEngine(bank, make_explorer(config.strategy, epsilon=config.epsilon,
                                                temperature=config.temperature, seed=config.seed))
    action_of_offer = {offer.id: i for i, offer in enumerate(policy.offers)}
    ctx = CustomerContext(CustomerProfile.unknown("replay"), now=_NOW)
    fields = {"name": "replay"}
    picked = np.full(n, -1, dtype=np.intp)
    logged_action, rewards, attributes = data.action, data.reward, data.attributes
    rows = range(n)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="replay", unit="row", mininterval=0.5, leave=False)
    for i in rows:
        decision = engine.decide(snapshot, ctx, Event("custom", fields, attributes[i]), top_k=0)
        if decision.offer_id is None:  # cannot happen with this policy; never counted
            continue
        pick = picked[i] = action_of_offer[decision.offer_id]
        if pick == logged_action[i]:  # the row counts, and only counted rows are learned
            bank.learn(decision.offer_id, decision.channel, decision.features, float(rewards[i]), config.prior)

    matched = picked == logged_action
    if not matched.any():
        raise LogFormatError("the learned policy never picked a logged action: nothing to evaluate")
    counted = rewards[matched]
    curve = np.cumsum(counted) / np.arange(1, len(counted) + 1)
    fixed = {a: _replay_estimate(data, logged_action == i) for i, a in enumerate(data.actions)}
    best = max(fixed, key=lambda a: fixed[a].value)
    late = picked[n - max(1, n // 10):]
    return Evaluation(
        actions=data.actions,
        reward_col=data.reward_col,
        rows=n,
        config=config,
        learned=mean_estimate(counted),
        learned_ips=ips(rewards, data.propensity, matched.astype(float)),
        learned_snips=snips(rewards, data.propensity, matched.astype(float)),
        random=ips(rewards, data.propensity, np.full(n, 1.0 / k)),
        fixed=fixed,
        best_action=best,
        curve=curve,
        picks={a: int((picked == i).sum()) for i, a in enumerate(data.actions)},
        late_picks={a: int((late == i).sum()) for i, a in enumerate(data.actions)},
        rule=_rule_estimate(data, rules) if rules else None,
        rule_text="; ".join(r.text for r in rules),
    )


def plot_learning_curve(result: Evaluation, path: str | Path, title: str = "") -> None:
    """The learned policy's cumulative mean reward over the counted rows, with random, best fixed and the rule."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = figure.subplots()
    x = np.arange(1, len(result.curve) + 1)
    best = result.best_fixed
    ax.axhspan(best.ci_low, best.ci_high, color="tab:green", alpha=0.15, lw=0,
               label=f"best fixed 95% CI [{best.ci_low:.4f}, {best.ci_high:.4f}]")
    ax.axhline(best.value, color="tab:green", lw=1.5, label=f"best fixed: {result.best_action} ({best.value:.4f})")
    ax.axhline(result.random.value, color="tab:gray", lw=1.5, ls="--",
               label=f"uniform random ({result.random.value:.4f})")
    if result.rule is not None:
        ax.axhline(result.rule.value, color="tab:purple", lw=1.5, ls=":",
                   label=f"targeting rule ({result.rule.value:.4f})")
    ax.plot(x, result.curve, color="tab:blue", lw=1.8,
            label=f"learned, replay ({result.learned.value:.4f} over {result.learned.rows:,} rows)")
    skip = min(len(x) - 1, max(0, len(x) // 100))  # the first rows' mean is all noise
    values = np.concatenate([result.curve[skip:], [best.ci_low, best.ci_high, result.random.value],
                             [] if result.rule is None else [result.rule.value]])
    spread = values.max() - values.min() or abs(values.max()) or 1.0
    ax.set_ylim(values.min() - 0.15 * spread, values.max() + 0.15 * spread)
    ax.set_xlim(1, len(x))
    ax.set_xlabel("rows counted by the replay (engine picked the logged action)")
    ax.set_ylabel(f"cumulative mean {result.reward_col}")
    ax.set_title(title or f"Learning curve: {result.config.describe()}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figure.savefig(path)
